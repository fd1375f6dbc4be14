"""End to end: server-to-client traffic relayed through a real ``gateway serve``.

``tests/support/relay_upstream.py`` (a real ``MCPServer``) is registered three times: over
streamable HTTP (``relay``; the gateway speaks 2026-07-28 to it, so its questions come as
``input_required`` results), legacy HTTP+SSE (``relaysse``) and stdio (``relaystdio``; both
handshake era, so its questions come as requests mid-call). Real ``mcp`` SDK clients, in
both eras, call its tools through ``/mcp`` and get the progress, the log messages and the
questions (sampling, elicitation, roots) that the upstream sends while it works, each
question decided by the sample policy (sampling: admins and operators only) and audited.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import mcp_types as types
import pytest
from mcp import Client
from mcp.client.sse import sse_client
from mcp.shared.exceptions import MCPError

from gateway.devtools.stack import LocalStack, free_port
from tests.e2e.helpers import client, stop_processes
from tests.support.ports import port_open

pytestmark = [
    pytest.mark.integration,
    pytest.mark.db,
    pytest.mark.anyio,
    pytest.mark.timeout(300),
    # logging, sampling and roots are deprecated in 2026-07-28 (SEP-2577), still in use
    pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning"),
]

RELAY = Path(__file__).resolve().parents[1] / "support" / "relay_upstream.py"
SERVERS = ["relay", "relaysse", "relaystdio"]
MODES = ["legacy", "2026-07-28"]
ASKING = [(server, mode) for server in SERVERS for mode in MODES]
"""Every upstream transport asks clients of both eras: a handshake-era client gets requests on
the call's stream (a 2026-07-28 upstream's input_required is settled for it), a 2026-07-28
client gets input_required (a handshake-era upstream's request is held for its retry)."""


@pytest.fixture(scope="module")
def relays(stack: LocalStack) -> Iterator[dict[str, int]]:
    """The relay upstream over streamable HTTP and legacy SSE (ports), and over stdio; all approved."""
    ports = {"streamable-http": free_port(), "sse": free_port()}
    procs = []
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    try:
        for transport, port in ports.items():
            with open(stack.run_dir / f"relay-{transport}.log", "ab") as out:
                argv = [sys.executable, str(RELAY), "--transport", transport, "--port", str(port)]
                procs.append(subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env))
        deadline = time.monotonic() + 20
        while not all(port_open("127.0.0.1", p) for p in ports.values()):
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs), "relay upstreams did not start"
            time.sleep(0.05)
        http_url = f"http://127.0.0.1:{ports['streamable-http']}/mcp"
        stack.admin("POST", "/v1/servers", {"name": "relay", "transport": "streamable_http", "url": http_url})
        stack.admin("POST", "/v1/servers/relay/approve", {"comment": "reviewed"})
        sse_url = f"http://127.0.0.1:{ports['sse']}/sse"
        stack.admin("POST", "/v1/servers", {"name": "relaysse", "transport": "legacy_sse", "url": sse_url})
        stack.admin("POST", "/v1/servers/relaysse/approve", {"comment": "reviewed"})
        stdio = {"command": sys.executable, "args": [str(RELAY), "--transport", "stdio"]}
        stack.admin("POST", "/v1/servers", {"name": "relaystdio", "transport": "stdio", **stdio})
        stack.admin("POST", "/v1/servers/relaystdio/approve", {"trust_stdio": True, "comment": "reviewed"})
        stack.wait_projection_active()
        yield ports
    finally:
        stop_processes(procs)


def _client(stack: LocalStack, token: str, mode: str = "legacy", **callbacks: Any) -> Client:
    return client(stack, token, mode=mode, **callbacks)


def _text(result: types.CallToolResult) -> str:
    block = result.content[0]
    assert isinstance(block, types.TextContent), result
    return block.text


def _events(stack: LocalStack, query: str, count: int = 1) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 15
    while True:
        items: list[dict[str, Any]] = stack.admin("GET", f"/v1/audit/decisions?{query}")["items"]
        if len(items) >= count:
            return items
        assert time.monotonic() < deadline, f"no audit event for {query}: {items}"
        time.sleep(0.1)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("server", SERVERS)
async def test_progress_and_log_messages_reach_the_caller_in_order(
    stack: LocalStack, relays: dict[str, int], server: str, mode: str
) -> None:
    token = stack.idp.mint(f"pat-{server}-{mode}", ["viewer"], stack.audience)
    progress: list[tuple[float, float | None, str | None]] = []
    logs: list[Any] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append((value, total, message))

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        logs.append(params.data)

    async with _client(stack, token, mode, logging_callback=on_log, log_level="info") as c:
        if mode == "legacy":  # handshake era: the session's level, which the gateway keeps
            await c.set_logging_level("info")
        result = await c.call_tool(f"{server}__count", {"steps": 3}, progress_callback=on_progress)
    assert _text(result) == "counted 3"
    # The SDK client routes progress by its own progressToken: arriving at all proves the
    # token came back unchanged, whatever the gateway used upstream.
    assert progress == [(1, 3, "step 1"), (2, 3, "step 2"), (3, 3, "step 3")]
    assert logs == ["step 1", "step 2", "step 3"]


def _sampler(seen: list[str]) -> Any:
    async def sample(context: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        message = params.messages[0].content
        seen.append(message.text if isinstance(message, types.TextContent) else "?")
        return types.CreateMessageResult(
            role="assistant", content=types.TextContent(type="text", text="a short summary"), model="test-model"
        )

    return sample


@pytest.mark.parametrize(("server", "mode"), ASKING)
async def test_sampling_is_relayed_to_an_operator_and_audited(
    stack: LocalStack, relays: dict[str, int], server: str, mode: str
) -> None:
    sub = f"olga-{server}-{mode}"
    token = stack.idp.mint(sub, ["operator"], stack.audience)
    seen: list[str] = []
    async with _client(stack, token, mode, sampling_callback=_sampler(seen)) as c:
        result = await c.call_tool(f"{server}__summarize", {"text": "a long story"})
    assert not result.is_error and _text(result) == "a short summary"
    assert seen == ["Summarize: a long story"]
    event = _events(stack, f"subject={sub}&action=sampling/createMessage")[0]
    assert (event["server"], event["tool"], event["allowed"], event["status"]) == (server, "summarize", True, "ok")
    assert event["reasons"] == ["granted_by_role_operator"]


@pytest.mark.parametrize("server", SERVERS)
async def test_policy_keeps_an_upstream_from_sampling_through_a_viewers_model(
    stack: LocalStack, relays: dict[str, int], server: str
) -> None:
    sub = f"vic-{server}"
    token = stack.idp.mint(sub, ["viewer"], stack.audience)
    seen: list[str] = []
    async with _client(stack, token, sampling_callback=_sampler(seen)) as c:
        try:
            result = await c.call_tool(f"{server}__summarize", {"text": "secret plans"})
            refused = result.is_error
        except Exception:  # noqa: BLE001 - an MCPError is a refusal too
            refused = True
    assert refused and seen == []  # the client's model was never asked
    event = _events(stack, f"subject={sub}&action=sampling/createMessage")[0]
    assert (event["server"], event["allowed"], event["status"]) == (server, False, "denied")
    assert event["reasons"] == ["sampling_not_allowed_for_role"]


@pytest.mark.parametrize(("server", "mode"), ASKING)
async def test_elicitation_and_roots_are_relayed(
    stack: LocalStack, relays: dict[str, int], server: str, mode: str
) -> None:
    token = stack.idp.mint(f"eve-{server}-{mode}", ["viewer"], stack.audience)
    questions: list[str] = []

    async def elicit(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        questions.append(params.message)
        return types.ElicitResult(action="accept", content={"ok": True})

    async def list_roots(context: Any) -> types.ListRootsResult:
        return types.ListRootsResult(roots=[types.Root(uri="file:///work/project", name="project")])

    async with _client(stack, token, mode, elicitation_callback=elicit, list_roots_callback=list_roots) as c:
        confirmed = await c.call_tool(f"{server}__confirm", {"question": "Proceed?"})
        roots = await c.call_tool(f"{server}__roots", {})
    assert _text(confirmed) == "accept True" and questions == ["Proceed?"]
    assert _text(roots) == "file:///work/project"


async def test_a_client_without_the_capability_is_never_asked(stack: LocalStack, relays: dict[str, int]) -> None:
    sub = "nocap"
    token = stack.idp.mint(sub, ["operator"], stack.audience)
    async with _client(stack, token) as c:  # no sampling callback: sampling is not declared
        try:
            refused = (await c.call_tool("relaysse__summarize", {"text": "x"})).is_error
        except Exception:  # noqa: BLE001
            refused = True
    assert refused
    assert stack.admin("GET", f"/v1/audit/decisions?subject={sub}&action=sampling/createMessage")["items"] == []


async def test_each_caller_gets_its_own_upstream_session(stack: LocalStack, relays: dict[str, int]) -> None:
    opened = f"upstream http://127.0.0.1:{relays['sse']}/sse: legacy SSE session"

    def sessions_opened() -> int:
        return (stack.run_dir / "gateway.log").read_text().count(opened)

    async def call_as(sub: str) -> int:
        before = sessions_opened()
        async with _client(stack, stack.idp.mint(sub, ["viewer"], stack.audience)) as c:
            assert not (await c.call_tool("relaysse__session", {})).is_error
        return sessions_opened() - before

    # A new caller gets a session of its own; the same caller (same declared
    # capabilities) is served on its session again, from a new client session too.
    assert [await call_as("s-alice"), await call_as("s-bob"), await call_as("s-alice")] == [1, 1, 0]


@pytest.mark.parametrize("server", ["relay", "relaysse"])
async def test_a_cancelled_call_is_cancelled_upstream_and_audited(
    stack: LocalStack, relays: dict[str, int], server: str
) -> None:
    port = relays["streamable-http" if server == "relay" else "sse"]

    def state() -> dict[str, int]:
        return httpx.get(f"http://127.0.0.1:{port}/_state").json()  # type: ignore[no-any-return]

    before = state()
    sub = f"carl-{server}"
    async with _client(stack, stack.idp.mint(sub, ["viewer"], stack.audience)) as c:
        async with anyio.create_task_group() as tg:
            tg.start_soon(c.call_tool, f"{server}__wait", {"seconds": 30})
            with anyio.fail_after(10):
                while state()["started"] == before["started"]:
                    await anyio.sleep(0.05)
            tg.cancel_scope.cancel()
    with anyio.fail_after(10):
        while state()["cancelled"] == before["cancelled"]:
            await anyio.sleep(0.05)
    assert state()["finished"] == before["finished"]
    event = _events(stack, f"subject={sub}&action=tools/call")[0]
    assert (event["tool"], event["status"], event["error_category"]) == ("wait", "error", "cancelled")


META = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientCapabilities": {},
    "io.modelcontextprotocol/clientInfo": {"name": "listener", "version": "1"},
}


async def _sse_messages(resp: httpx.Response) -> Any:
    async for line in resp.aiter_lines():
        if line.startswith("data: "):
            yield json.loads(line[6:])


async def test_a_2026_client_listens_for_its_resource_updates_and_list_changes(
    stack: LocalStack, relays: dict[str, int]
) -> None:
    token = stack.idp.mint("lou", ["viewer"], stack.audience)
    watched, secret = "mcp-gw://relay/relay://watched", "mcp-gw://relay/relay://internal/secret"
    body = {
        "jsonrpc": "2.0",
        "id": "listen-1",
        "method": "subscriptions/listen",
        "params": {
            "_meta": META,
            "notifications": {"toolsListChanged": True, "resourceSubscriptions": [watched, secret]},
        },
    }
    headers = {
        "authorization": f"Bearer {token}",
        "accept": "application/json, text/event-stream",
        "mcp-protocol-version": "2026-07-28",
        "mcp-method": "subscriptions/listen",
    }
    async with (
        httpx.AsyncClient(timeout=30) as http,
        http.stream("POST", f"{stack.data_url}/mcp", json=body, headers=headers) as resp,
        _client(stack, token, "2026-07-28") as c,
    ):
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
        messages = _sse_messages(resp)
        with anyio.fail_after(15):
            ack = await anext(messages)
        # The viewer may not subscribe to an internal resource (sample policy): not honored.
        assert ack["method"] == "notifications/subscriptions/acknowledged"
        assert ack["params"]["notifications"] == {"toolsListChanged": True, "resourceSubscriptions": [watched]}
        assert ack["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"] == "listen-1"
        await c.call_tool("relay__touch", {"uri": "relay://internal/secret"})
        await c.call_tool("relay__touch", {"uri": "relay://watched"})
        with anyio.fail_after(10):
            updated = await anext(messages)
        assert updated["method"] == "notifications/resources/updated" and updated["params"]["uri"] == watched
        assert updated["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"] == "listen-1"

        async def announce() -> None:  # until the gateway's watch of relay's list changes is up
            while True:
                await c.call_tool("relay__change_tools", {})
                await anyio.sleep(0.5)

        async with anyio.create_task_group() as tg:
            tg.start_soon(announce)
            with anyio.fail_after(15):
                changed = await anext(messages)
            tg.cancel_scope.cancel()
        assert changed["method"] == "notifications/tools/list_changed"
        assert changed["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"] == "listen-1"
    refused = _events(stack, "subject=lou&action=resources/subscribe&allowed=false")[0]
    assert refused["tool"] == "relay://internal/secret" and refused["reasons"] == [
        "internal_resource_requires_operator"
    ]


async def test_a_handshake_client_subscribes_and_hears_updates_on_its_get_stream(
    stack: LocalStack, relays: dict[str, int]
) -> None:
    token = stack.idp.mint("sue", ["viewer"], stack.audience)
    updates: list[str] = []
    got = anyio.Event()

    async def on_message(message: Any) -> None:
        if isinstance(message, types.ResourceUpdatedNotification):
            updates.append(str(message.params.uri))
            got.set()

    watched = "mcp-gw://relaysse/relay://watched"
    async with _client(stack, token, message_handler=on_message) as c:
        assert c.server_capabilities.resources.subscribe is True  # type: ignore[union-attr]
        await c.subscribe_resource(watched)
        with pytest.raises(MCPError) as denied:
            await c.subscribe_resource("mcp-gw://relaysse/relay://internal/secret")
        await c.call_tool("relaysse__touch", {"uri": "relay://watched"})
        with anyio.fail_after(10):
            await got.wait()
        await c.unsubscribe_resource(watched)
    assert updates == [watched]
    assert denied.value.error.code == -32003
    allowed = _events(stack, "subject=sue&action=resources/subscribe&allowed=true")[0]
    assert (allowed["server"], allowed["tool"]) == ("relaysse", "relay://watched")
    assert _events(stack, "subject=sue&action=resources/unsubscribe")[0]["status"] == "ok"


async def test_a_2024_11_05_client_uses_the_http_sse_transport(stack: LocalStack, relays: dict[str, int]) -> None:
    """The legacy ``/sse`` + ``/messages`` pair: discovery, a governed call with progress, a
    sampling request relayed on the event stream, a refusal, all through the SDK's ``sse_client``."""
    token = stack.idp.mint("sam", ["operator"], stack.audience)
    progress: list[float] = []
    seen: list[str] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append(value)

    transport = sse_client(f"{stack.data_url}/sse", headers={"authorization": f"Bearer {token}"})
    async with Client(transport, mode="legacy", sampling_callback=_sampler(seen)) as c:
        assert c.protocol_version == "2025-11-25"
        names = {t.name for t in (await c.list_tools()).tools}
        counted = await c.call_tool("relaysse__count", {"steps": 2}, progress_callback=on_progress)
        summary = await c.call_tool("relay__summarize", {"text": "over sse"})
        with pytest.raises(MCPError) as denied:
            await c.call_tool("demo__delete_record", {"record_id": "r1"})
    assert {"relay__count", "demo__echo"} <= names
    assert _text(counted) == "counted 2" and progress == [1, 2]
    assert _text(summary) == "a short summary" and seen == ["Summarize: over sse"]
    assert denied.value.error.code == -32003


async def test_the_http_sse_transport_refuses_strangers(stack: LocalStack, relays: dict[str, int]) -> None:
    async with httpx.AsyncClient(timeout=10) as http:
        assert (await http.get(f"{stack.data_url}/sse")).status_code == 401
        token = stack.idp.mint("tess", ["viewer"], stack.audience)
        other = stack.idp.mint("mallory", ["viewer"], stack.audience)
        async with http.stream("GET", f"{stack.data_url}/sse", headers={"authorization": f"Bearer {token}"}) as resp:
            assert resp.status_code == 200
            lines = resp.aiter_lines()
            assert await anext(lines) == "event: endpoint"
            endpoint = (await anext(lines)).removeprefix("data: ")
            assert endpoint.startswith("/messages?session_id=")
            ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
            # Another subject cannot post into the session: 404 like an unknown one.
            stolen = await http.post(
                f"{stack.data_url}{endpoint}", json=ping, headers={"authorization": f"Bearer {other}"}
            )
            unknown = await http.post(
                f"{stack.data_url}/messages?session_id=nope", json=ping, headers={"authorization": f"Bearer {token}"}
            )
            assert stolen.status_code == 404 and unknown.status_code == 404
