"""The data plane's credential brokering, with doubles behind its ports (policy engine, broker).

Which binding applies, what the policy input shows, the ``credential`` obligation, refusals
that never reach the upstream, the material handed to the upstream pool, and the broker's
cache (real :class:`CredentialBroker` against an in-process control-plane double over
``httpx.MockTransport``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import anyio
import httpx
import pytest

from gateway.config import Config
from gateway.dataplane.credentials import (
    BindingRef,
    CredentialBroker,
    CredentialRef,
    background_material,
    choose,
    credential_input,
)
from gateway.dataplane.projection import compile_projection
from gateway.errors import CredentialUnavailable
from gateway.mcp.credential import UpstreamCredential, with_query
from gateway.policy.decision import Decision
from gateway.policy.input import Subject
from tests.dataplane.test_governance import CTX, Audit, Engine, Upstreams, _governor

pytestmark = pytest.mark.anyio

CRED_A = CredentialRef("c-a", "headers", "v1")
CRED_B = CredentialRef("c-b", "bearer", "v1")
CRED_X = CredentialRef("c-x", "oauth_token_exchange", "v1")


def _b(bid: str, kind: str, value: str | None, cred: CredentialRef = CRED_A) -> BindingRef:
    return BindingRef(bid, kind, value, cred)


ALICE = Subject("alice", "https://idp.test", ("dev", "ops"), client_id="agent-1")


@pytest.mark.parametrize(
    ("bindings", "expected"),
    [
        ([_b("1", "everyone", None), _b("2", "role", "dev"), _b("3", "user", "alice")], "3"),
        ([_b("1", "everyone", None), _b("2", "role", "dev"), _b("4", "client", "agent-1")], "4"),
        ([_b("1", "everyone", None), _b("2", "role", "ops"), _b("5", "role", "dev")], "5"),  # smallest value
        ([_b("1", "everyone", None), _b("6", "user", "bob")], "1"),
        ([_b("6", "user", "bob"), _b("7", "role", "qa")], None),
    ],
)
def test_the_most_specific_matching_binding_applies_in_any_order(
    bindings: list[BindingRef], expected: str | None
) -> None:
    for order in (bindings, list(reversed(bindings))):
        chosen = choose(order, ALICE)
        assert (chosen.id if chosen else None) == expected


def test_the_policy_input_gets_metadata_only() -> None:
    assert credential_input(_b("3", "user", "alice")) == {
        "binding": "3",
        "subject_kind": "user",
        "id": "c-a",
        "kind": "headers",
    }
    assert credential_input(None) is None


def test_with_query_adds_and_replaces_parameters() -> None:
    assert with_query("http://h/mcp?x=1&k=old", {"k": "new", "y": "2"}) == "http://h/mcp?x=1&k=new&y=2"
    assert with_query("http://h/mcp", {}) == "http://h/mcp"


def test_material_never_shows_in_its_repr() -> None:
    material = UpstreamCredential(
        "c-a@v1", {"x-api-key": "canary-repr-1"}, {"k": "canary-repr-2"}, {"T": "canary-repr-3"}
    )
    text = f"{material!r} {material} {[material]}"
    assert "canary" not in text and "x-api-key" in text


def _table(bindings: list[dict[str, Any]], requires: bool = False) -> dict[str, Any]:
    tool = {"name": "echo", "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}}}}
    server = {"name": "demo", "transport": "streamable_http", "url": "http://u/mcp", "tools": [tool]}
    server["credentials"] = bindings
    server["requires_credential"] = requires
    return {"version": 5, "policy_version": 2, "revision": "p5-pv2", "servers": [server]}


def _binding(bid: str, kind: str, value: str | None, cred: str = "c-a", ckind: str = "headers") -> dict[str, Any]:
    return {
        "id": bid,
        "subject": {"kind": kind, "value": value},
        "credential": {"id": cred, "kind": ckind, "version": "v1"},
    }


class Broker:
    """Resolves to material naming the binding; records what it was asked."""

    def __init__(self, fail: bool = False) -> None:
        self.asked: list[tuple[str, str, str]] = []
        self.fail = fail

    async def resolve(self, server: str, binding: BindingRef, subject: Subject) -> UpstreamCredential:
        self.asked.append((server, binding.id, subject.sub))
        if self.fail:
            raise CredentialUnavailable("control plane unreachable")
        return UpstreamCredential(f"{binding.credential.id}@v1", {"x-api-key": f"secret-of-{binding.id}"})


class Pool(Upstreams):
    def __init__(self) -> None:
        super().__init__()
        self.credentials: list[UpstreamCredential | None] = []

    def get(self, name: str, transport: str, url: str, caller: Any = None, credential: Any = None) -> Pool:
        self.credentials.append(credential)
        return self


class Obliging(Engine):
    """Allows, with the given obligations; records the input documents."""

    def __init__(self, obligations: dict[str, Any]) -> None:
        super().__init__("p5-pv2")
        self.obligations = obligations
        self.inputs: list[dict[str, Any]] = []

    async def decide(self, input_doc: dict[str, Any]) -> Decision:
        self.inputs.append(input_doc)
        return Decision(True, ("r",), self.obligations, "d1", self._next())


def _pep(tmp_path: Any, engine: Engine, broker: Broker) -> tuple[Any, Pool, Audit]:
    pool = Pool()
    gov, _, audit = _governor(tmp_path, engine, pool)
    gov._broker = broker
    return gov, pool, audit


async def _call(gov: Any, table: dict[str, Any], ctx: Any = CTX) -> dict[str, Any]:
    reply: dict[str, Any] = await gov.call_tool(
        compile_projection(table), ctx, 1, {"name": "demo__echo", "arguments": {"text": "x"}}
    )
    return reply


async def test_a_call_goes_upstream_with_the_chosen_bindings_material(tmp_path: Any) -> None:
    engine, broker = Obliging({}), Broker()
    gov, pool, audit = _pep(tmp_path, engine, broker)
    table = _table([_binding("b-all", "everyone", None), _binding("b-alice", "user", "alice", "c-b", "bearer")])
    reply = await _call(gov, table)
    assert "result" in reply
    assert engine.inputs[0]["credential"] == {
        "binding": "b-alice",
        "subject_kind": "user",
        "id": "c-b",
        "kind": "bearer",
    }
    assert broker.asked == [("demo", "b-alice", "alice")]
    assert pool.credentials[-1] is not None and pool.credentials[-1].headers == {"x-api-key": "secret-of-b-alice"}
    assert audit.events[-1]["status"] == "ok"


async def test_a_server_without_credentials_gets_no_material_and_no_input_member(tmp_path: Any) -> None:
    engine, broker = Obliging({}), Broker()
    gov, pool, _ = _pep(tmp_path, engine, broker)
    assert "result" in await _call(gov, _table([]))
    assert "credential" not in engine.inputs[0] and broker.asked == [] and pool.credentials == [None]


@pytest.mark.parametrize("requires", [True, False])
async def test_a_caller_no_binding_matches_is_refused_before_the_upstream(tmp_path: Any, requires: bool) -> None:
    engine, broker = Obliging({}), Broker()
    gov, pool, audit = _pep(tmp_path, engine, broker)
    reply = await _call(gov, _table([_binding("b-bob", "user", "bob")], requires=requires))
    assert reply["error"]["code"] == -32003 and reply["error"]["data"]["category"] == "credential_required"
    assert engine.inputs[0]["credential"] is None  # the policy saw that none applies
    assert broker.asked == [] and pool.calls == []
    assert (audit.events[-1]["status"], audit.events[-1]["error_category"]) == ("denied", "credential_required")


async def test_a_server_that_requires_a_credential_and_has_no_binding_is_refused(tmp_path: Any) -> None:
    gov, pool, _ = _pep(tmp_path, Obliging({}), Broker())
    reply = await _call(gov, _table([], requires=True))
    assert reply["error"]["data"]["category"] == "credential_required" and pool.calls == []


async def test_the_policy_may_choose_another_credential_of_the_server(tmp_path: Any) -> None:
    broker = Broker()
    gov, _, _ = _pep(tmp_path, Obliging({"credential": "c-b"}), broker)
    table = _table([_binding("b-all", "everyone", None), _binding("b-ops", "role", "ops", "c-b", "bearer")])
    assert "result" in await _call(gov, table)  # CTX's subject has no ops role: chosen only by the obligation
    assert broker.asked == [("demo", "b-ops", "alice")]


@pytest.mark.parametrize("requires", [True, False])
async def test_an_obligation_naming_no_credential_of_the_server_is_refused(tmp_path: Any, requires: bool) -> None:
    gov, pool, audit = _pep(tmp_path, Obliging({"credential": "c-elsewhere"}), Broker())
    bindings = [_binding("b-all", "everyone", None)] if requires else []
    reply = await _call(gov, _table(bindings, requires=requires))
    assert reply["error"]["data"]["category"] == "credential_obligation" and pool.calls == []
    assert audit.events[-1]["error_category"] == "credential_obligation"


async def test_an_unresolvable_credential_fails_closed(tmp_path: Any) -> None:
    gov, pool, audit = _pep(tmp_path, Obliging({}), Broker(fail=True))
    reply = await _call(gov, _table([_binding("b-all", "everyone", None)]))
    assert reply["error"]["data"]["category"] == "credential_unavailable" and pool.calls == []
    assert (audit.events[-1]["status"], audit.events[-1]["error_category"]) == ("error", "credential_unavailable")


async def test_background_requests_use_the_everyone_binding_only() -> None:
    broker = Broker()
    assert await background_material(broker, "s", [], required=False, transport="streamable_http") is None
    everyone = _b("b-all", "everyone", None)
    material = await background_material(
        broker, "s", [_b("b-u", "user", "u"), everyone], required=True, transport="streamable_http"
    )
    assert material is not None and broker.asked == [("s", "b-all", "gateway")]
    for bindings in ([_b("b-u", "user", "u")], [_b("b-x", "everyone", None, CRED_X)]):  # none, or one needing a caller
        with pytest.raises(CredentialUnavailable):
            await background_material(broker, "s", bindings, required=True, transport="streamable_http")


# ----------------------------------------------------------------- the broker's cache


def _config() -> Config:
    return Config.from_env(
        {
            "GATEWAY_PLANE": "data",
            "GATEWAY_CONTROL_URL": "http://cp.test",
            "GATEWAY_INTERNAL_TOKEN": "internal",
            "GATEWAY_DATAPLANE_ID": "dp-t",
            "GATEWAY_JWT_ISSUER": "https://idp.test",
            "GATEWAY_JWT_AUDIENCE": "https://gw.test/mcp",
            "GATEWAY_JWKS_URL": "file:///tmp/jwks.json",
            "OPA_BIN": "/bin/true",
            "GATEWAY_OPA_MANAGE": "false",
        }
    )


class ControlPlane:
    """The broker endpoint: answers material, counts requests, optionally slowly or failing."""

    def __init__(self, expires_in: float = 300, status: int = 200) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.expires_in, self.status = expires_in, status
        self.gate = anyio.Event()
        self.gate.set()

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        import json

        assert request.url.path == "/v1/dataplane/credentials/resolve"
        assert request.headers["authorization"] == "Bearer internal"
        self.bodies.append(json.loads(request.content))
        await self.gate.wait()
        if self.status != 200:
            return httpx.Response(self.status, json={"error": "not_found", "message": "x"})
        return httpx.Response(200, json={"headers": {"authorization": "Bearer t"}, "expires_in": self.expires_in})


def _broker(cp: ControlPlane) -> CredentialBroker:
    return CredentialBroker(_config(), httpx.AsyncClient(transport=httpx.MockTransport(cp)))


async def test_the_broker_caches_per_credential_version_and_resolves_once_for_concurrent_calls() -> None:
    cp = ControlPlane()
    broker = _broker(cp)
    binding = _b("b1", "everyone", None)
    cp.gate = anyio.Event()
    results: list[UpstreamCredential] = []

    async def one() -> None:
        results.append(await broker.resolve("s", binding, ALICE))

    async with anyio.create_task_group() as tg:
        for _ in range(20):
            tg.start_soon(one)
        while not cp.bodies:
            await anyio.sleep(0.001)
        cp.gate.set()
    assert len(cp.bodies) == 1 and len({id(r) for r in results}) == 1
    assert cp.bodies[0]["binding_id"] == "b1" and "subject_token" not in cp.bodies[0]
    await broker.resolve("s", binding, dataclasses.replace(ALICE, sub="bob"))  # same material for everyone
    assert len(cp.bodies) == 1
    rotated = _b("b1", "everyone", None, dataclasses.replace(CRED_A, version="v2"))
    await broker.resolve("s", rotated, ALICE)
    assert len(cp.bodies) == 2  # a new version is resolved anew
    broker.retain([rotated.credential])
    assert len(broker) == 1  # the old version's material is dropped


async def test_material_that_expires_is_resolved_again() -> None:
    cp = ControlPlane(expires_in=0)
    broker = _broker(cp)
    for _ in range(3):
        await broker.resolve("s", _b("b1", "everyone", None), ALICE)
    assert len(cp.bodies) == 3


async def test_per_user_material_is_resolved_with_the_callers_token_and_kept_apart() -> None:
    cp = ControlPlane()
    broker = _broker(cp)
    binding = _b("bx", "role", "dev", CRED_X)
    alice = dataclasses.replace(ALICE, token="token-of-alice")
    bob = dataclasses.replace(ALICE, sub="bob", token="token-of-bob")
    first = await broker.resolve("s", binding, alice)
    second = await broker.resolve("s", binding, bob)
    await broker.resolve("s", binding, alice)
    assert [b["subject_token"] for b in cp.bodies] == ["token-of-alice", "token-of-bob"]
    assert first.key != second.key  # never one session for two users
    other_client = await broker.resolve("s", binding, dataclasses.replace(alice, token="token-of-alices-other-app"))
    assert other_client.key != first.key  # nor for two tokens (clients) of one user
    with pytest.raises(CredentialUnavailable):
        await broker.resolve("s", binding, ALICE)  # no token to exchange


async def test_a_refusal_of_the_control_plane_fails_closed_without_caching() -> None:
    cp = ControlPlane(status=404)
    broker = _broker(cp)
    for _ in range(2):
        with pytest.raises(CredentialUnavailable) as exc_info:
            await broker.resolve("s", _b("b1", "everyone", None), ALICE)
        assert "not_found" in str(exc_info.value)
    assert len(cp.bodies) == 2 and len(broker) == 0


async def test_a_failed_resolution_is_shared_and_a_cancelled_one_is_taken_over() -> None:
    cp = ControlPlane(status=502)
    broker = _broker(cp)
    binding = _b("b1", "everyone", None)
    cp.gate = anyio.Event()
    outcomes: list[str] = []

    async def one() -> None:
        try:
            await broker.resolve("s", binding, ALICE)
            outcomes.append("ok")
        except CredentialUnavailable:
            outcomes.append("unavailable")

    async with anyio.create_task_group() as tg:
        for _ in range(10):
            tg.start_soon(one)
        while not cp.bodies:
            await anyio.sleep(0.001)
        cp.gate.set()
    assert outcomes == ["unavailable"] * 10 and len(cp.bodies) == 1  # one failure, everyone's

    cp = ControlPlane()
    broker = _broker(cp)
    cp.gate = anyio.Event()
    got: list[UpstreamCredential] = []
    owner = anyio.CancelScope()

    async def first() -> None:
        with owner:
            await broker.resolve("s", binding, ALICE)

    async def second() -> None:
        got.append(await broker.resolve("s", binding, ALICE))

    async with anyio.create_task_group() as tg:
        tg.start_soon(first)
        while not cp.bodies:
            await anyio.sleep(0.001)
        tg.start_soon(second)
        flight = next(iter(broker._pending.values()))
        while flight.done.statistics().tasks_waiting == 0:  # the second caller waits on the first's
            await anyio.sleep(0.001)
        owner.cancel()  # the first caller leaves: the second resolves on its own
        cp.gate.set()
    assert len(got) == 1 and len(cp.bodies) == 2


async def test_material_a_transport_would_not_send_fails_closed(tmp_path: Any) -> None:
    class EnvOnly(Broker):
        async def resolve(self, server: str, binding: BindingRef, subject: Subject) -> UpstreamCredential:
            return UpstreamCredential("c-e@v1", env={"TOKEN": "x"})  # a stdio_env bound to an HTTP server

    gov, pool, audit = _pep(tmp_path, Obliging({}), EnvOnly())
    reply = await _call(gov, _table([_binding("b-all", "everyone", None, "c-e", "stdio_env")]))
    assert reply["error"]["data"]["category"] == "credential_unavailable" and pool.calls == []
    with pytest.raises(CredentialUnavailable):
        await background_material(EnvOnly(), "s", [_b("b", "everyone", None)], required=True, transport="legacy_sse")


async def test_callers_waiting_on_a_not_connected_answer_all_get_the_link() -> None:
    from gateway.errors import CredentialNotConnected

    link = "http://cp.test/v1/oauth/connect/abc"

    class NotConnected(ControlPlane):
        async def __call__(self, request: httpx.Request) -> httpx.Response:
            await super().__call__(request)
            body = {"error": "credential_not_connected", "message": "connect", "connect_url": link}
            return httpx.Response(409, json=body)

    cp = NotConnected()
    broker = _broker(cp)
    binding = _b("bu", "everyone", None, CredentialRef("c-u", "oauth_authorization_code", "v1"))
    cp.gate = anyio.Event()
    links: list[str] = []

    async def one() -> None:
        try:
            await broker.resolve("s", binding, ALICE)
        except CredentialNotConnected as exc:
            links.append(exc.connect_url)

    async with anyio.create_task_group() as tg:
        for _ in range(5):
            tg.start_soon(one)
        while not cp.bodies:
            await anyio.sleep(0.001)
        cp.gate.set()
    assert links == [link] * 5 and len(cp.bodies) == 1
