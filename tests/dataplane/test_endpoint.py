"""The MCP endpoint in process: the real data-plane Starlette app (routes, Host/Origin guard,
real JWT verification against the dev IdP's JWKS file, real session store, real Governor)
over httpx.ASGITransport, with the PDP, upstreams and audit as the doubles of test_governance."""

from __future__ import annotations

import logging
import types
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import orjson
import pytest
from starlette.types import Message, Receive, Scope, Send

from gateway.config import Config
from gateway.dataplane import create_dataplane_app
from gateway.dataplane.auth import CallerAuthenticator, JwtVerifier
from gateway.dataplane.features import FeatureGovernor
from gateway.dataplane.held import HeldCalls
from gateway.dataplane.resumable import Reaper
from gateway.dataplane.session_seal import session_ref
from gateway.dataplane.sessions import SessionStore
from gateway.devtools.idp import DevIdentityProvider
from gateway.mcp.messages import MAX_PARAMS_VALUES
from tests.dataplane.test_governance import Audit, Engine, Upstreams, _projection

pytestmark = pytest.mark.anyio

ISSUER = "https://idp.test.invalid"
BASE = "http://127.0.0.1:8081"
MODERN = "2026-07-28"
ENVELOPE = {
    "io.modelcontextprotocol/protocolVersion": MODERN,
    "io.modelcontextprotocol/clientCapabilities": {},
}


@pytest.fixture(scope="module")
def idp(tmp_path_factory: pytest.TempPathFactory) -> DevIdentityProvider:
    return DevIdentityProvider.create(tmp_path_factory.mktemp("idp"), ISSUER)


class _Spawner:
    """The part of :class:`gateway.dataplane.listening.Hub` the request path uses."""

    def __init__(self, tg: Any) -> None:
        self._tg = tg

    def spawn(self, fn: Any) -> None:
        self._tg.start_soon(fn)


class Gateway:
    """The data-plane app with its lifespan state filled from doubles, plus an httpx client."""

    def __init__(self, idp: DevIdentityProvider, tmp_path: Path, cp_http: httpx.AsyncClient, **data_plane: Any) -> None:
        self.config = Config.from_mapping(
            {
                "plane": "data",
                "control_plane": {"internal_token": "t", "url": "http://cp.test"},
                "data_plane": {"port": 8081, "id": "dp-test", **data_plane},
                "jwt": {"issuer": ISSUER, "audience": f"{BASE}/mcp", "jwks_url": idp.jwks_url},
                "opa": {"manage": False, "bin": "/bin/true"},
                "audit": {"spool_dir": str(tmp_path)},
            }
        )
        self.idp = idp
        self.upstreams = Upstreams()
        self.audit = Audit()
        self.sessions = SessionStore(idle_timeout=60, max_sessions=self.config.data_plane.max_sessions)
        self.state = {
            "dp_config": self.config,
            "dp_verifier": CallerAuthenticator(self.config, JwtVerifier(self.config.jwt, cp_http), self._api_keys),
            "dp_sync": types.SimpleNamespace(current=_projection()),
            "dp_governor": FeatureGovernor(self.config, Engine("p5-pv2"), self.upstreams, self.audit),  # type: ignore[arg-type]
            "dp_sessions": self.sessions,
            "dp_held": HeldCalls(),
            "dp_reaper": Reaper(60),
            "dp_sidecar": None,
        }
        self.app = create_dataplane_app(self.config)

    def _api_keys(self) -> Any:
        return self.state["dp_sync"].current.api_keys  # type: ignore[attr-defined]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # What the root app's lifespan provides; detached work (held calls) runs in a task
        # group of this request, which the tests' calls never outlive.
        async with anyio.create_task_group() as tg:
            scope["state"] = {**self.state, "dp_hub": _Spawner(tg)}
            await self.app(scope, receive, send)

    def token(self, sub: str = "alice", roles: tuple[str, ...] = ("admin",)) -> str:
        return self.idp.mint(sub, list(roles), f"{BASE}/mcp")

    def client(self) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=self, raise_app_exceptions=False)
        return httpx.AsyncClient(transport=transport, base_url=BASE)


@pytest.fixture
async def cp_http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as http:
        yield http


@pytest.fixture
def gateway(idp: DevIdentityProvider, tmp_path: Path, cp_http: httpx.AsyncClient) -> Gateway:
    return Gateway(idp, tmp_path, cp_http)


@pytest.fixture
async def http(gateway: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    async with gateway.client() as client:
        yield client


def _auth(gateway: Gateway, sub: str = "alice") -> dict[str, str]:
    return {"authorization": f"Bearer {gateway.token(sub)}"}


async def _initialize(http: httpx.AsyncClient, gateway: Gateway, sub: str = "alice") -> str:
    body = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {"protocolVersion": "2025-11-25"}}
    resp = await http.post("/mcp", json=body, headers=_auth(gateway, sub))
    assert resp.status_code == 200, resp.text
    return resp.headers["mcp-session-id"]


async def _legacy(
    http: httpx.AsyncClient, gateway: Gateway, session: str, method: str, params: Any = None, *, content: bytes = b""
) -> httpx.Response:
    headers = {**_auth(gateway), "mcp-session-id": session, "mcp-protocol-version": "2025-11-25"}
    if content:
        return await http.post("/mcp", content=content, headers={**headers, "content-type": "application/json"})
    body: dict[str, Any] = {"jsonrpc": "2.0", "id": 1, "method": method}
    if params is not None:
        body["params"] = params
    return await http.post("/mcp", json=body, headers=headers)


def _modern_headers(gateway: Gateway, method: str, name: str | None = None) -> dict[str, str]:
    headers = {**_auth(gateway), "mcp-protocol-version": MODERN, "mcp-method": method}
    if name is not None:
        headers["mcp-name"] = name
    return headers


def _deep_call(levels: int, msg_id: int = 1) -> bytes:
    """A tools/call whose arguments nest ``levels`` deep, as text (orjson cannot encode that deep)."""
    deep = b'{"a":' * (levels - 1) + b"{}" + b"}" * (levels - 1)
    meta = orjson.dumps(ENVELOPE)
    return (
        b'{"jsonrpc":"2.0","id":%d,"method":"tools/call","params":{"name":"demo__echo","_meta":%s,"arguments":%s}}'
        % (msg_id, meta, deep)
    )


# ------------------------------------------------------------------ Host and Origin


async def test_an_origin_on_another_loopback_port_is_refused_with_403(
    gateway: Gateway, http: httpx.AsyncClient
) -> None:
    for origin in ("http://127.0.0.1:9999", "http://localhost:1", "http://evil.example", "null"):
        resp = await http.post("/mcp", json={}, headers={**_auth(gateway), "origin": origin})
        assert resp.status_code == 403, origin
        assert resp.json()["error"]["data"] == {"category": "origin_not_allowed"}


async def test_the_data_plane_s_own_origins_are_allowed(gateway: Gateway, http: httpx.AsyncClient) -> None:
    for origin in ("http://127.0.0.1:8081", "http://LOCALHOST:8081", "http://[::1]:8081"):
        resp = await http.get("/mcp", headers={**_auth(gateway), "origin": origin})
        assert resp.status_code == 405, origin


@pytest.mark.parametrize("path", ["/mcp", "/mcp/demo", "/healthz", "/.well-known/oauth-protected-resource/mcp"])
async def test_a_host_that_is_not_the_data_plane_s_is_refused_with_421_on_every_route(
    gateway: Gateway, http: httpx.AsyncClient, path: str
) -> None:
    for host in ("evil.example", "127.0.0.1:9999", "localhost", "attacker.test:8081"):
        resp = await http.get(path, headers={**_auth(gateway), "host": host})
        assert resp.status_code == 421, (path, host)
        assert resp.json()["error"]["data"] == {"category": "host_not_allowed"}
    assert (await http.get(path, headers={**_auth(gateway), "host": "localhost:8081"})).status_code != 421


async def test_configured_hosts_and_origins_replace_the_defaults(
    idp: DevIdentityProvider, tmp_path: Path, cp_http: httpx.AsyncClient
) -> None:
    gw = Gateway(idp, tmp_path, cp_http, allowed_hosts="gw.example", allowed_origins="https://app.example")
    async with gw.client() as http:
        assert (await http.get("/healthz")).status_code == 421
        assert (await http.get("/healthz", headers={"host": "gw.example"})).status_code == 200
        headers = {"host": "gw.example", "origin": "https://app.example"}
        assert (await http.get("/healthz", headers=headers)).status_code == 200
        headers["origin"] = "http://127.0.0.1:8081"
        assert (await http.get("/healthz", headers=headers)).status_code == 403


# ------------------------------------------------------------------ methods and sessions


async def test_get_is_405(gateway: Gateway, http: httpx.AsyncClient) -> None:
    resp = await http.get("/mcp", headers=_auth(gateway))
    assert resp.status_code == 405 and resp.headers["allow"] == "POST, DELETE"


async def test_delete_ends_the_caller_s_own_session(gateway: Gateway, http: httpx.AsyncClient) -> None:
    session = await _initialize(http, gateway)
    resp = await http.delete("/mcp", headers={**_auth(gateway), "mcp-session-id": session})
    assert resp.status_code == 204
    assert (await _legacy(http, gateway, session, "ping")).status_code == 404


async def test_delete_of_an_unknown_session_is_404(gateway: Gateway, http: httpx.AsyncClient) -> None:
    resp = await http.delete("/mcp", headers={**_auth(gateway), "mcp-session-id": "nope"})
    assert resp.status_code == 404
    assert (await http.delete("/mcp", headers=_auth(gateway))).status_code == 404


async def test_delete_of_another_subject_s_session_is_404_and_keeps_it(
    gateway: Gateway, http: httpx.AsyncClient
) -> None:
    session = await _initialize(http, gateway, "bob")
    resp = await http.delete("/mcp", headers={**_auth(gateway, "alice"), "mcp-session-id": session})
    assert resp.status_code == 404
    assert gateway.sessions.get(session, (ISSUER, "bob")) is not None


async def test_ping_is_decided_audited_and_answered_by_the_gateway(gateway: Gateway, http: httpx.AsyncClient) -> None:
    session = await _initialize(http, gateway)
    resp = await _legacy(http, gateway, session, "ping")
    assert resp.status_code == 200 and resp.json() == {"jsonrpc": "2.0", "id": 1, "result": {}}
    event = gateway.audit.events[-1]
    assert (event["action"], event["allowed"], event["status"], event["server"]) == ("ping", True, "ok", None)
    assert gateway.upstreams.calls == []  # the gateway is the peer the client pings


async def test_an_unknown_method_is_32601_in_the_handshake_era(gateway: Gateway, http: httpx.AsyncClient) -> None:
    session = await _initialize(http, gateway)
    resp = await _legacy(http, gateway, session, "resources/list")
    assert resp.status_code == 200 and resp.json()["error"]["code"] == -32601


async def test_an_unknown_method_is_404_and_32601_in_the_modern_era(gateway: Gateway, http: httpx.AsyncClient) -> None:
    body = {"jsonrpc": "2.0", "id": 3, "method": "resources/list", "params": {"_meta": ENVELOPE}}
    resp = await http.post("/mcp", json=body, headers=_modern_headers(gateway, "resources/list"))
    assert resp.status_code == 404 and resp.json()["error"]["code"] == -32601 and resp.json()["id"] == 3


@pytest.mark.parametrize(
    ("header", "first"),
    [("mcp-method", "tools/list"), ("mcp-name", "demo__delete_record"), ("mcp-protocol-version", MODERN)],
)
async def test_a_routing_header_sent_twice_is_400_and_32020_and_never_governed(
    gateway: Gateway, http: httpx.AsyncClient, header: str, first: str
) -> None:
    # Found by tests/fuzz/test_jsonrpc_fuzz.py: the ladder compared the last copy with the body,
    # so a first copy naming another method or tool (what an intermediary reads) was served.
    body = {"jsonrpc": "2.0", "id": 8, "method": "tools/call", "params": {"name": "demo__echo", "_meta": ENVELOPE}}
    correct = _modern_headers(gateway, "tools/call", "demo__echo")
    headers = [(header, first), *correct.items()]
    resp = await http.post("/mcp", content=orjson.dumps(body), headers=headers)
    assert resp.status_code == 400 and resp.json()["id"] == 8
    assert resp.json()["error"] == {"code": -32020, "message": f"{header} header appears more than once"}
    assert gateway.audit.events == [] and gateway.upstreams.calls == []


async def test_initialize_beyond_the_session_limit_is_503(
    idp: DevIdentityProvider, tmp_path: Path, cp_http: httpx.AsyncClient
) -> None:
    gw = Gateway(idp, tmp_path, cp_http, max_sessions=2)
    async with gw.client() as http:
        await _initialize(http, gw, "a")
        await _initialize(http, gw, "b")
        body = {"jsonrpc": "2.0", "id": 9, "method": "initialize", "params": {"protocolVersion": "2025-11-25"}}
        resp = await http.post("/mcp", json=body, headers=_auth(gw, "c"))
    assert resp.status_code == 503 and resp.json()["id"] == 9 and "mcp-session-id" not in resp.headers


# ------------------------------------------------------------------ size and depth caps


async def test_a_declared_content_length_over_the_cap_is_413(
    idp: DevIdentityProvider, tmp_path: Path, cp_http: httpx.AsyncClient
) -> None:
    gw = Gateway(idp, tmp_path, cp_http, max_body=1024)
    async with gw.client() as http:
        resp = await http.post("/mcp", content=b" " * 1025, headers=_auth(gw))
        assert resp.status_code == 413
        ok = await http.post("/mcp", content=b" " * 1024, headers=_auth(gw))
        assert ok.status_code == 400  # within the cap: parsed (and refused as invalid JSON)


async def test_a_chunked_body_over_the_cap_is_413(
    idp: DevIdentityProvider, tmp_path: Path, cp_http: httpx.AsyncClient
) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(5):
            yield b" " * 300

    gw = Gateway(idp, tmp_path, cp_http, max_body=1024)
    async with gw.client() as http:
        resp = await http.post("/mcp", content=chunks(), headers=_auth(gw))
    assert "content-length" not in resp.request.headers
    assert resp.status_code == 413


@pytest.mark.parametrize("levels", [64, 300, 1000])
async def test_too_deep_arguments_get_32602_and_an_audited_rejection_in_the_modern_era(
    gateway: Gateway, http: httpx.AsyncClient, levels: int
) -> None:
    resp = await http.post(
        "/mcp", content=_deep_call(levels, 5), headers=_modern_headers(gateway, "tools/call", "demo__echo")
    )
    assert resp.status_code == 200
    assert resp.json()["id"] == 5 and resp.json()["error"]["code"] == -32602
    assert resp.json()["error"]["data"]["category"] == "arguments_too_deep"
    [event] = gateway.audit.events
    assert (event["status"], event["error_category"], event["allowed"]) == ("rejected", "arguments_too_deep", False)
    assert event["protocol_version"] == MODERN and gateway.upstreams.calls == []


async def test_too_deep_arguments_get_32602_and_an_audited_rejection_in_the_handshake_era(
    gateway: Gateway, http: httpx.AsyncClient
) -> None:
    session = await _initialize(http, gateway)
    resp = await _legacy(http, gateway, session, "tools/call", content=_deep_call(300))
    assert resp.status_code == 200 and resp.json()["error"]["data"]["category"] == "arguments_too_deep"
    assert [(e["status"], e["session_id"]) for e in gateway.audit.events] == [("rejected", session_ref(session))]


async def test_arguments_with_too_many_values_get_32602_and_an_audited_rejection(
    gateway: Gateway, http: httpx.AsyncClient
) -> None:
    session = await _initialize(http, gateway)
    params = {"name": "demo__echo", "arguments": {"text": [0] * MAX_PARAMS_VALUES}}
    resp = await _legacy(http, gateway, session, "tools/call", params)
    assert resp.json()["error"]["data"]["category"] == "arguments_too_large"
    assert gateway.audit.events[-1]["error_category"] == "arguments_too_large"


async def test_too_deep_params_of_an_ungoverned_method_get_32602(gateway: Gateway, http: httpx.AsyncClient) -> None:
    session = await _initialize(http, gateway)
    deep = b'{"a":' * 99 + b"{}" + b"}" * 99
    body = b'{"jsonrpc":"2.0","id":4,"method":"tools/list","params":{"x":' + deep + b"}}"
    resp = await _legacy(http, gateway, session, "tools/list", content=body)
    assert resp.status_code == 200 and resp.json()["id"] == 4 and resp.json()["error"]["code"] == -32602


async def test_an_extra_tools_call_params_key_is_refused_and_not_forwarded(
    gateway: Gateway, http: httpx.AsyncClient
) -> None:
    session = await _initialize(http, gateway)
    params = {"name": "demo__echo", "arguments": {"text": "hi"}, "smuggled": {"admin": True}}
    resp = await _legacy(http, gateway, session, "tools/call", params)
    assert resp.json()["error"]["code"] == -32602 and "'smuggled'" in resp.json()["error"]["message"]
    assert gateway.upstreams.calls == [] and gateway.audit.events[-1]["error_category"] == "unexpected_param"


# ------------------------------------------------------------------ failures never become an unaudited 500


async def test_an_unexpected_exception_is_an_audited_32603_not_a_500(gateway: Gateway, http: httpx.AsyncClient) -> None:
    gateway.upstreams.fail = RuntimeError("bug in the pipeline")
    session = await _initialize(http, gateway)
    resp = await _legacy(http, gateway, session, "tools/call", {"name": "demo__echo", "arguments": {"text": "hi"}})
    assert resp.status_code == 200
    assert resp.json()["error"] == {"code": -32603, "message": "Gateway error", "data": {"category": "internal_error"}}
    [event] = gateway.audit.events
    assert (event["allowed"], event["status"], event["error_category"]) == (True, "error", "internal_error")


async def test_an_upstream_result_too_deep_to_relay_is_an_audited_tool_failure(
    gateway: Gateway, http: httpx.AsyncClient
) -> None:
    deep: Any = {}
    for _ in range(299):
        deep = {"a": deep}
    gateway.upstreams.reply = {"jsonrpc": "2.0", "id": 1, "result": {"content": [], "structuredContent": deep}}
    session = await _initialize(http, gateway)
    resp = await _legacy(http, gateway, session, "tools/call", {"name": "demo__echo", "arguments": {"text": "hi"}})
    assert resp.status_code == 200 and resp.json()["error"]["data"]["category"] == "upstream_protocol_error"
    [event] = gateway.audit.events
    assert (event["allowed"], event["status"]) == (True, "error")


async def test_a_client_that_disconnects_mid_body_is_one_info_line(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    token = gateway.token()
    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/mcp",
        "raw_path": b"/mcp",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"127.0.0.1:8081"), (b"authorization", f"Bearer {token}".encode())],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8081),
    }
    incoming: Iterator[Message] = iter(
        [
            {"type": "http.request", "body": b'{"jsonrpc": "2.0", ', "more_body": True},
            {"type": "http.disconnect"},
        ]
    )
    sent: list[Message] = []

    async def receive() -> Message:
        return next(incoming)

    async def send(message: Message) -> None:
        sent.append(message)

    with caplog.at_level(logging.DEBUG):
        await gateway(scope, receive, send)
    lines = [r for r in caplog.records if "disconnect" in r.getMessage()]
    assert [(r.levelno, r.exc_info) for r in lines] == [(logging.INFO, None)]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert gateway.audit.events == []
