"""The upstream client over a scripted HttpClient double: era detection, session
recovery, SSE, and error mapping to safe categories (no foreign exception escapes)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import anyio
import orjson
import pytest

from gateway.errors import UpstreamProtocolError, UpstreamTimeout, UpstreamUnavailable
from gateway.httpclient import HttpTimeout, HttpTransportError, SseEvent, iter_sse
from gateway.mcp.upstream import (
    StreamableHttpUpstream,
    UpstreamAddress,
    UpstreamCaller,
    UpstreamPool,
    caller_capabilities,
)

pytestmark = pytest.mark.anyio

URL = "http://user:pw@upstream.test:9000/mcp?api_key=k"
Reply = tuple[int, dict[str, str], bytes] | Exception


class Response:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status, self.headers, self._body = status, headers, body

    async def read(self) -> bytes:
        return self._body

    def aiter_sse(self) -> AsyncIterator[SseEvent]:
        async def lines() -> AsyncIterator[bytes]:
            for line in self._body.split(b"\n"):
                yield line

        return iter_sse(lines())


class Http:
    """Answers each request with ``script(method, headers, body)``; records the requests."""

    def __init__(self, script: Callable[[str, Mapping[str, str], dict[str, Any] | None], Reply]) -> None:
        self.script = script
        self.requests: list[tuple[str, dict[str, str], dict[str, Any] | None]] = []

    @contextlib.asynccontextmanager
    async def request(
        self, method: str, url: str, *, body: bytes | None, headers: Mapping[str, str], timeout: float
    ) -> AsyncIterator[Response]:
        msg = orjson.loads(body) if body else None
        self.requests.append((method, dict(headers), msg))
        reply = self.script(method, headers, msg)
        if isinstance(reply, Exception):
            raise reply
        yield Response(*reply)

    async def aclose(self) -> None:
        pass


def _json(msg: dict[str, Any], status: int = 200, **headers: str) -> Reply:
    return status, {"content-type": "application/json", **headers}, orjson.dumps(msg)


def _result(req: dict[str, Any] | None, result: Any) -> Reply:
    return _json({"jsonrpc": "2.0", "id": req["id"] if req else None, "result": result})


def _modern(method: str, headers: Mapping[str, str], req: dict[str, Any] | None) -> Reply:
    assert req is not None
    if req["method"] == "server/discover":
        return _result(req, {"supportedVersions": ["2026-07-28"], "capabilities": {}})
    return _result(req, {"content": [{"type": "text", "text": req["params"]["arguments"]["text"]}]})


class Legacy:
    """A 2025-11-25 server: no discover, sessions, SSE responses; `expire_with` answers a stale session."""

    def __init__(self, expire_with: int = 404) -> None:
        self.session = "s1"
        self.expire_with = expire_with
        self.initialized = 0

    def __call__(self, method: str, headers: Mapping[str, str], req: dict[str, Any] | None) -> Reply:
        if req is None or "id" not in req:  # notifications/initialized
            return 202, {}, b""
        if req["method"] == "server/discover":
            return _json({"jsonrpc": "2.0", "id": None, "error": {"code": -32000, "message": "not initialized"}}, 400)
        if req["method"] == "initialize":
            self.initialized += 1
            self.session = f"s{self.initialized}"
            init = {"jsonrpc": "2.0", "id": req["id"], "result": {"protocolVersion": "2025-11-25"}}
            return 200, {"content-type": "application/json", "mcp-session-id": self.session}, orjson.dumps(init)
        if headers.get("mcp-session-id") != self.session:
            return _json(
                {"jsonrpc": "2.0", "id": None, "error": {"code": -32000, "message": "bad session"}}, self.expire_with
            )
        event = orjson.dumps({"jsonrpc": "2.0", "id": req["id"], "result": {"content": [], "isError": False}})
        progress = orjson.dumps({"jsonrpc": "2.0", "method": "notifications/progress", "params": {}})
        return (
            200,
            {"content-type": "text/event-stream"},
            b"event: message\ndata: " + progress + b"\n\ndata: " + event + b"\n\n",
        )


async def test_a_modern_upstream_gets_the_envelope_and_routing_headers() -> None:
    http = Http(_modern)
    upstream = StreamableHttpUpstream("http://u/mcp", http, timeout=5)
    reply = await upstream.request("tools/call", {"name": "echo", "arguments": {"text": "hi"}})
    assert reply["result"]["content"][0]["text"] == "hi"
    _, headers, body = http.requests[-1]
    assert headers["mcp-protocol-version"] == "2026-07-28" and headers["mcp-method"] == "tools/call"
    assert headers["mcp-name"] == "echo"
    assert body is not None and body["params"]["_meta"]["io.modelcontextprotocol/protocolVersion"] == "2026-07-28"
    assert upstream.protocol_version == "2026-07-28"


@pytest.mark.parametrize("expire_with", [404, 400])
async def test_a_legacy_session_is_reestablished_once_when_the_upstream_forgot_it(expire_with: int) -> None:
    server = Legacy(expire_with)
    http = Http(server)
    upstream = StreamableHttpUpstream("http://u/mcp", http, timeout=5)
    assert "result" in await upstream.request("tools/call", {"name": "t", "arguments": {}})
    server.session = "restarted"  # the upstream restarted and no longer knows s1
    assert "result" in await upstream.request("tools/call", {"name": "t", "arguments": {}})
    assert server.initialized == 2 and upstream.protocol_version == "2025-11-25"


async def test_a_session_refused_again_after_reinitialising_is_a_protocol_error() -> None:
    server = Legacy(400)

    def script(method: str, headers: Mapping[str, str], req: dict[str, Any] | None) -> Reply:
        if req and req.get("method") == "tools/call":
            return _json({"jsonrpc": "2.0", "id": None, "error": {"code": -32000, "message": "no"}}, 400)
        return server(method, headers, req)

    upstream = StreamableHttpUpstream(URL, Http(script), timeout=5)
    with pytest.raises(UpstreamProtocolError) as err:
        await upstream.request("tools/call", {"name": "t", "arguments": {}})
    assert "pw" not in str(err.value) and "api_key" not in str(err.value)


@pytest.mark.parametrize(
    ("failure", "expected"),
    [
        pytest.param(HttpTimeout("slow"), UpstreamTimeout, id="timeout"),
        pytest.param(HttpTransportError("ECONNREFUSED"), UpstreamUnavailable, id="refused"),
        pytest.param(RuntimeError("surprise"), UpstreamProtocolError, id="foreign-exception"),
    ],
)
async def test_transport_failures_map_to_safe_categories(failure: Exception, expected: type[Exception]) -> None:
    upstream = StreamableHttpUpstream(URL, Http(lambda *_: failure), timeout=5)
    with pytest.raises(expected) as err:
        await upstream.request("tools/call", {"name": "t", "arguments": {}})
    assert "pw" not in str(err.value) and "api_key" not in str(err.value)


@pytest.mark.parametrize(
    "reply",
    [
        pytest.param((200, {"content-type": "text/html"}, b"<html>"), id="not-json"),
        pytest.param((200, {"content-type": "application/json"}, b"[1,2]"), id="not-an-object"),
        pytest.param((200, {"content-type": "application/json"}, b"{broken"), id="invalid-json"),
        pytest.param((200, {"content-type": "text/event-stream"}, b"data: {}\n\n"), id="sse-without-response"),
        pytest.param((502, {"content-type": "application/json"}, b"{}"), id="5xx"),
    ],
)
async def test_answers_that_are_not_mcp_are_upstream_errors(reply: Reply) -> None:
    def script(method: str, headers: Mapping[str, str], req: dict[str, Any] | None) -> Reply:
        if req and req["method"] == "server/discover":
            return _modern(method, headers, req)
        return reply

    with pytest.raises((UpstreamProtocolError, UpstreamUnavailable)):
        await StreamableHttpUpstream("http://u/mcp", Http(script), timeout=5).request("tools/call", {"name": "t"})


async def test_a_discover_result_that_is_not_an_object_falls_back_to_the_handshake() -> None:
    server = Legacy()

    def script(method: str, headers: Mapping[str, str], req: dict[str, Any] | None) -> Reply:
        if req and req.get("method") == "server/discover":
            return _result(req, "not-an-object")
        return server(method, headers, req)

    upstream = StreamableHttpUpstream("http://u/mcp", Http(script), timeout=5)
    assert "result" in await upstream.request("tools/call", {"name": "t", "arguments": {}})
    assert upstream.protocol_version == "2025-11-25"


async def test_the_pool_reuses_sessions_and_closes_the_ones_a_projection_dropped() -> None:
    server = Legacy()
    http = Http(server)
    pool = UpstreamPool(http, timeout=5)
    first = pool.get("demo", "streamable_http", "http://u/mcp")
    assert pool.get("demo", "streamable_http", "http://u/mcp") is first
    await first.request("tools/call", {"name": "t", "arguments": {}})
    await pool.retain({"demo": UpstreamAddress("streamable_http", "http://moved/mcp")})
    assert http.requests[-1][0] == "DELETE"
    assert pool.get("demo", "streamable_http", "http://moved/mcp") is not first


async def test_each_caller_gets_its_own_session_with_its_capabilities_least_recently_used_closed_first() -> None:
    server = Legacy()
    http = Http(server)
    async with anyio.create_task_group() as tg:
        pool = UpstreamPool(http, timeout=5, max_caller_sessions=2, caller_idle=3600)
        await tg.start(pool.run)
        alice = UpstreamCaller("idp", "alice", caller_capabilities({"sampling": {}, "experimental": {"x": {}}}))
        bob = UpstreamCaller("idp", "bob")
        carol = UpstreamCaller("idp", "carol")
        shared = pool.get("demo", "streamable_http", "http://u/mcp")
        mine = pool.get("demo", "streamable_http", "http://u/mcp", alice)
        assert mine is not shared and pool.get("demo", "streamable_http", "http://u/mcp", alice) is mine
        assert pool.get("demo", "streamable_http", "http://u/mcp", bob) is not mine
        await mine.request("tools/call", {"name": "t", "arguments": {}})
        await shared.request("tools/call", {"name": "t", "arguments": {}})
        inits = [
            req["params"]["capabilities"] for _, _, req in http.requests if req and req.get("method") == "initialize"
        ]
        # the caller's relayed capabilities only; the gateway's own session declares them all
        assert inits == [{"sampling": {}}, {"sampling": {}, "elicitation": {}, "roots": {}}]
        pool.get("demo", "streamable_http", "http://u/mcp", carol)  # a third caller: alice's is the oldest used
        assert pool.caller_sessions == 2
        with anyio.fail_after(2):  # the eviction closes alice's session in the background
            while http.requests[-1][0] != "DELETE":
                await anyio.sleep(0.01)
        assert pool.get("demo", "streamable_http", "http://u/mcp", alice) is not mine
        tg.cancel_scope.cancel()


class Polling(Legacy):
    """A 2025-11-25 server that closes a call's stream after a priming event and a progress
    notification (SEP-1699 polling) and sends the response when the stream is resumed."""

    def __init__(self) -> None:
        super().__init__()
        self.pending: Any = None
        self.resumed_from: list[str | None] = []

    def __call__(self, method: str, headers: Mapping[str, str], req: dict[str, Any] | None) -> Reply:
        if method == "GET":
            self.resumed_from.append(headers.get("last-event-id"))
            response = orjson.dumps({"jsonrpc": "2.0", "id": self.pending, "result": {"content": []}})
            return 200, {"content-type": "text/event-stream"}, b"id: e2\ndata: " + response + b"\n\n"
        if req is not None and req.get("method") == "tools/call" and headers.get("mcp-session-id") == self.session:
            self.pending = req["id"]
            progress = orjson.dumps({"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progress": 1}})
            body = b"id: e0\nretry: 10\ndata:\n\nid: e1\ndata: " + progress + b"\n\n"
            return 200, {"content-type": "text/event-stream"}, body
        return super().__call__(method, headers, req)


async def test_a_handshake_stream_closed_before_its_response_is_resumed_with_last_event_id() -> None:
    server = Polling()
    upstream = StreamableHttpUpstream("http://u/mcp", Http(server), timeout=5)
    notes: list[dict[str, Any]] = []

    class Channel:
        async def notify(self, message: dict[str, Any]) -> None:
            notes.append(message)

        async def request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
            raise AssertionError("not asked")

    reply = await upstream.request("tools/call", {"name": "t", "arguments": {}}, Channel())
    assert reply["result"] == {"content": []} and server.resumed_from == ["e1"]
    assert [n["method"] for n in notes] == ["notifications/progress"]


async def test_credential_material_goes_with_every_request_and_keys_the_session() -> None:
    from gateway.mcp.credential import UpstreamCredential

    urls: list[str] = []
    server = Legacy()

    class Recording(Http):
        @contextlib.asynccontextmanager
        async def request(  # type: ignore[override]
            self, method: str, url: str, *, body: bytes | None, headers: Mapping[str, str], timeout: float
        ) -> AsyncIterator[Response]:
            urls.append(url)
            async with super().request(method, url, body=body, headers=headers, timeout=timeout) as resp:
                yield resp

    http = Recording(server)
    pool = UpstreamPool(http, timeout=5)
    key_a = UpstreamCredential("c-a@v1", {"x-api-key": "secret-a"}, {"api_key": "q-a"})
    key_b = UpstreamCredential("c-b@v1", {"x-api-key": "secret-b"})
    with_a = pool.get("demo", "streamable_http", "http://u/mcp", credential=key_a)
    assert pool.get("demo", "streamable_http", "http://u/mcp", credential=key_b) is not with_a  # never shared
    assert pool.get("demo", "streamable_http", "http://u/mcp") is not with_a
    await with_a.request("tools/call", {"name": "t", "arguments": {}})
    assert {h.get("x-api-key") for _, h, _ in http.requests} == {"secret-a"}  # initialize, initialized, call
    assert set(urls) == {"http://u/mcp?api_key=q-a"}
    refreshed = UpstreamCredential("c-a@v1", {"x-api-key": "secret-a2"})  # a new token, same identity
    assert pool.get("demo", "streamable_http", "http://u/mcp", credential=refreshed) is with_a
    await with_a.request("tools/call", {"name": "t", "arguments": {}})
    assert http.requests[-1][1]["x-api-key"] == "secret-a2"


async def test_a_session_whose_credential_is_gone_is_closed_and_never_reconnects() -> None:
    from gateway.mcp.credential import UpstreamCredential

    http = Http(Legacy())
    async with anyio.create_task_group() as tg:
        pool = UpstreamPool(http, timeout=5)
        await tg.start(pool.run)
        revoked = UpstreamCredential("c-a@v1", {"x-api-key": "revoked"})
        kept = UpstreamCredential("c-b@v1", {"x-api-key": "kept"})
        doomed = pool.get("demo", "streamable_http", "http://u/mcp", credential=revoked)
        alive = pool.get("demo", "streamable_http", "http://u/mcp", credential=kept)
        await doomed.request("tools/call", {"name": "t", "arguments": {}})
        await alive.request("tools/call", {"name": "t", "arguments": {}})
        pool.forget_credentials(lambda key: key.split("/")[0] == "c-b@v1")
        with anyio.fail_after(2):  # closed in the background: DELETE with the old material, once
            while not any(m == "DELETE" for m, _, _ in http.requests):
                await anyio.sleep(0.01)
        with pytest.raises(UpstreamUnavailable):  # a holder of the old object cannot reconnect
            await doomed.request("tools/call", {"name": "t", "arguments": {}})
        with anyio.fail_after(2):  # and a listener on it stops instead of retrying forever
            await doomed.listen({"toolsListChanged": True}, None)  # type: ignore[arg-type]
        sent = len(http.requests)
        assert pool.get("demo", "streamable_http", "http://u/mcp", credential=kept) is alive
        assert pool.get("demo", "streamable_http", "http://u/mcp", credential=revoked) is not doomed
        assert len(http.requests) == sent
        tg.cancel_scope.cancel()
