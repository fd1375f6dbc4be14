"""End to end: handshake-era answers are resumable SSE streams (MCP 2025-11-25, SEP-1699).

A real ``gateway serve`` with polling on (``GATEWAY_SSE_POLL_INTERVAL`` 0.6 s, ``retry``
0.1 s, resume window 3 s) in front of ``tests/support/relay_upstream.py`` over streamable
HTTP. Raw HTTP checks the wire (priming event, event ids, ``Last-Event-ID`` replay, the
poll close, the resume window); the ``mcp`` SDK client shows a real client polls through it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import orjson
import pytest

from gateway.devtools.stack import LocalStack, free_port, sample_policy_modules
from tests.e2e.helpers import client, stop_processes
from tests.support import pg
from tests.support.ports import port_open

pytestmark = [pytest.mark.integration, pytest.mark.db, pytest.mark.anyio, pytest.mark.timeout(120)]

RELAY = Path(__file__).resolve().parents[1] / "support" / "relay_upstream.py"
POLL = 0.6
WINDOW = 3.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, pg_admin_url: str, opa_bin: Path) -> Iterator[LocalStack]:
    """The gateway (polling on) with the relay upstream registered as ``relay``."""
    run_dir = tmp_path_factory.mktemp("stack")
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    with (
        pg.throwaway_database(pg_admin_url) as database_url,
        LocalStack.create(run_dir, database_url=database_url, opa_bin=str(opa_bin)) as s,
        open(run_dir / "relay.log", "ab") as out,
    ):
        argv = [sys.executable, str(RELAY), "--transport", "streamable-http", "--port", str(port)]
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env)
        try:
            s.extra_env.update(
                {
                    "GATEWAY_SSE_POLL_INTERVAL": str(POLL),
                    "GATEWAY_SSE_RETRY": "0.1",
                    "GATEWAY_SSE_RESUME_WINDOW": str(WINDOW),
                }
            )
            s.start_gateway()
            deadline = time.monotonic() + 20
            while not port_open("127.0.0.1", port):
                assert time.monotonic() < deadline and proc.poll() is None, "relay upstream did not start"
                time.sleep(0.05)
            url = f"http://127.0.0.1:{port}/mcp"
            s.admin("POST", "/v1/servers", {"name": "relay", "transport": "streamable_http", "url": url})
            s.admin("POST", "/v1/servers/relay/approve", {"comment": "reviewed"})
            s.upload_and_approve_policy(sample_policy_modules())
            s.wait_projection_active()
            s.relay_port = port  # type: ignore[attr-defined]
            yield s
        finally:
            stop_processes([proc])


def _state(stack: LocalStack) -> dict[str, int]:
    return httpx.get(f"http://127.0.0.1:{stack.relay_port}/_state").json()  # type: ignore[attr-defined,no-any-return]


class Session:
    """A raw handshake-era session on ``/mcp`` (``initialize`` done)."""

    def __init__(self, stack: LocalStack, http: httpx.AsyncClient, version: str) -> None:
        self.stack, self.http, self.version = stack, http, version
        self.id = ""
        self._ids = iter(range(1, 1000))

    async def open(self, sub: str) -> Session:
        token = self.stack.idp.mint(sub, ["viewer"], self.stack.audience)
        self.http.headers["authorization"] = f"Bearer {token}"
        params = {"protocolVersion": self.version, "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}
        resp = await self.http.post(
            "/mcp", json={"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": params}, headers=self._accept()
        )
        assert resp.status_code == 200, resp.text
        self.id = resp.headers["mcp-session-id"]
        return self

    def _accept(self) -> dict[str, str]:
        return {"accept": "application/json, text/event-stream", "mcp-protocol-version": self.version}

    def headers(self, **extra: str) -> dict[str, str]:
        return {**self._accept(), "mcp-session-id": self.id, **extra}

    def call(self, tool: str, arguments: dict[str, Any], progress: bool = False) -> dict[str, Any]:
        params: dict[str, Any] = {"name": tool, "arguments": arguments}
        if progress:
            params["_meta"] = {"progressToken": "p1"}
        return {"jsonrpc": "2.0", "id": next(self._ids), "method": "tools/call", "params": params}


async def _events(resp: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    """SSE events of a response as ``{"id", "retry", "data"}`` (data parsed, or "" when empty)."""
    event: dict[str, Any] = {}
    async for line in resp.aiter_lines():
        if not line:
            if event:
                yield event
            event = {}
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "data":
            event["data"] = orjson.loads(value) if value else ""
        elif field in ("id", "retry", "event"):
            event[field] = value


async def test_a_stream_starts_with_a_priming_event_and_numbers_every_event(stack: LocalStack) -> None:
    async with httpx.AsyncClient(base_url=stack.data_url, timeout=30) as http:
        session = await Session(stack, http, "2025-11-25").open("prime")
        request = session.call("relay__count", {"steps": 3, "pause": 0.01}, progress=True)
        async with http.stream("POST", "/mcp", json=request, headers=session.headers()) as resp:
            assert resp.headers["content-type"] == "text/event-stream"
            events = [e async for e in _events(resp)]
    priming, *messages = events
    assert priming["data"] == "" and priming["retry"] == "100", priming
    stream, _, first = priming["id"].partition("-")
    assert first == "0"
    assert [e["id"] for e in messages] == [f"{stream}-{n}" for n in range(1, len(messages) + 1)]
    assert [e["data"]["params"]["progress"] for e in messages[:-1]] == [1, 2, 3]
    assert messages[-1]["data"]["id"] == request["id"]
    assert messages[-1]["data"]["result"]["content"][0]["text"] == "counted 3"


async def test_a_client_that_loses_its_stream_resumes_it_and_misses_nothing(stack: LocalStack) -> None:
    before = _state(stack)
    async with httpx.AsyncClient(base_url=stack.data_url, timeout=30) as http:
        session = await Session(stack, http, "2025-11-25").open("resumer")
        # Long enough to outlast a poll: the later events come on the resumed stream.
        request = session.call("relay__count", {"steps": 8, "pause": 0.1}, progress=True)
        seen: list[dict[str, Any]] = []
        async with http.stream("POST", "/mcp", json=request, headers=session.headers()) as resp:
            events = _events(resp)
            async for event in events:
                seen.append(event)
                if event["data"]:  # the first progress event: the client stops reading...
                    break
            # ...while the gateway goes on sending into the connection, until the call is done
            # upstream; then the connection is lost with those events unread.
            with anyio.fail_after(10):
                while _state(stack)["counted"] == before["counted"]:
                    await anyio.sleep(0.02)
        assert [e["data"]["params"]["progress"] for e in seen[1:]] == [1]
        headers = session.headers(**{"last-event-id": seen[-1]["id"]})
        while True:  # each poll closes the connection; resume from the last id seen each time
            async with http.stream("GET", "/mcp", headers=headers) as resp:
                assert resp.status_code == 200
                async for event in _events(resp):
                    seen.append(event)
            if "result" in seen[-1]["data"]:
                break
            headers["last-event-id"] = seen[-1]["id"]
    ids = [e["id"] for e in seen]
    assert len(ids) == len(set(ids)), ids
    progress = [e["data"]["params"]["progress"] for e in seen if e["data"] and "method" in e["data"]]
    assert progress == [1, 2, 3, 4, 5, 6, 7, 8]
    assert seen[-1]["data"]["result"]["content"][0]["text"] == "counted 8"
    assert _state(stack)["cancelled"] == before["cancelled"]


async def test_a_long_call_is_polled_then_answered(stack: LocalStack) -> None:
    async with httpx.AsyncClient(base_url=stack.data_url, timeout=30) as http:
        session = await Session(stack, http, "2025-11-25").open("poller")
        request = session.call("relay__wait", {"seconds": 1.5})
        started = time.monotonic()
        async with http.stream("POST", "/mcp", json=request, headers=session.headers()) as resp:
            assert resp.headers["content-type"] == "text/event-stream"
            first = [e async for e in _events(resp)]
        closed_after = time.monotonic() - started
        # The poll interval passed with no answer: a priming event only, then the close.
        assert [e["data"] for e in first] == [""], first
        assert POLL <= closed_after < 1.5, closed_after
        headers = session.headers(**{"last-event-id": first[0]["id"]})
        polls, answer = 0, None
        while answer is None:
            polls += 1
            async with http.stream("GET", "/mcp", headers=headers) as resp:
                assert resp.headers["content-type"] == "text/event-stream"
                async for event in _events(resp):
                    answer = event["data"]
    assert answer["result"]["content"][0]["text"] == "waited"
    assert polls >= 1


async def test_the_sdk_client_polls_a_long_call_to_its_result(stack: LocalStack) -> None:
    before = _state(stack)
    token = stack.idp.mint("sdk-poller", ["viewer"], stack.audience)
    async with client(stack, token, mode="legacy") as c:
        result = await c.call_tool("relay__wait", {"seconds": 2 * POLL + 0.5})
    assert not result.is_error and result.content[0].text == "waited"  # type: ignore[union-attr]
    after = _state(stack)
    assert (after["started"] - before["started"], after["cancelled"] - before["cancelled"]) == (1, 0)


async def test_a_stream_nobody_resumes_is_cancelled_upstream_after_the_window(stack: LocalStack) -> None:
    before = _state(stack)
    async with httpx.AsyncClient(base_url=stack.data_url, timeout=30) as http:
        session = await Session(stack, http, "2025-11-25").open("leaver")
        request = session.call("relay__wait", {"seconds": 60})
        async with http.stream("POST", "/mcp", json=request, headers=session.headers()) as resp:
            priming = [e async for e in _events(resp)][0]
        left = time.monotonic()
        with anyio.fail_after(WINDOW + 5):
            while _state(stack)["cancelled"] == before["cancelled"]:
                await anyio.sleep(0.05)
        assert time.monotonic() - left >= WINDOW - 0.5  # not before the window
        resp = await http.get("/mcp", headers=session.headers(**{"last-event-id": priming["id"]}))
    assert resp.status_code == 400
    assert resp.json()["error"]["data"] == {"category": "unknown_event_id"}
    with anyio.fail_after(15):
        while True:
            items = stack.admin("GET", "/v1/audit/decisions?subject=leaver&action=tools/call")["items"]
            if items:
                break
            await anyio.sleep(0.1)
    assert (items[0]["status"], items[0]["error_category"]) == ("error", "cancelled")


async def test_an_older_client_gets_ids_but_no_priming_and_is_not_polled(stack: LocalStack) -> None:
    async with httpx.AsyncClient(base_url=stack.data_url, timeout=30) as http:
        session = await Session(stack, http, "2025-06-18").open("older")
        request = session.call("relay__wait", {"seconds": POLL + 0.4})
        resp = await http.post("/mcp", json=request, headers=session.headers())
        assert resp.headers["content-type"] == "application/json"  # nothing relayed, never polled
        assert resp.json()["result"]["content"][0]["text"] == "waited"
        request = session.call("relay__count", {"steps": 2, "pause": 0.01}, progress=True)
        async with http.stream("POST", "/mcp", json=request, headers=session.headers()) as resp:
            events = [e async for e in _events(resp)]
    assert all(e["data"] for e in events), events  # no priming event
    assert [e["id"].split("-")[1] for e in events] == ["1", "2", "3"]


async def test_a_resume_needs_the_session_and_a_known_event_id(stack: LocalStack) -> None:
    async with httpx.AsyncClient(base_url=stack.data_url, timeout=30) as http:
        session = await Session(stack, http, "2025-11-25").open("owner")
        request = session.call("relay__wait", {"seconds": 2})
        async with http.stream("POST", "/mcp", json=request, headers=session.headers()) as resp:
            priming = [e async for e in _events(resp)][0]
        number = priming["id"].split("-")[0]
        for bad in ("999-0", "garbage", f"{number}-x", f"{number}-".encode() + b"\xb2"):  # b"\xb2": a latin-1 digit "²"
            raw = {k.encode(): v.encode() for k, v in session.headers().items()}
            raw[b"last-event-id"] = bad if isinstance(bad, bytes) else bad.encode()
            resp = await http.get("/mcp", headers=raw)
            assert (resp.status_code, resp.json()["error"]["data"]["category"]) == (400, "unknown_event_id"), bad
        other = stack.idp.mint("someone-else", ["viewer"], stack.audience)
        resp = await http.get(
            "/mcp", headers={**session.headers(**{"last-event-id": priming["id"]}), "authorization": f"Bearer {other}"}
        )
        assert resp.status_code == 404  # another subject's session is unknown to it


async def test_a_resume_past_the_last_event_ends_at_once_and_keeps_the_response(stack: LocalStack) -> None:
    async with httpx.AsyncClient(base_url=stack.data_url, timeout=30) as http:
        session = await Session(stack, http, "2025-11-25").open("overshoot")
        request = session.call("relay__count", {"steps": 2, "pause": 0.01}, progress=True)
        async with http.stream("POST", "/mcp", json=request, headers=session.headers()) as resp:
            events = [e async for e in _events(resp)]
        number = events[0]["id"].split("-")[0]
        with anyio.fail_after(5):  # an id beyond the stream's last is "I have it all": end at once
            async with http.stream(
                "GET", "/mcp", headers=session.headers(**{"last-event-id": f"{number}-999999"})
            ) as resp:
                assert resp.status_code == 200
                assert [e async for e in _events(resp)] == []
        async with http.stream("GET", "/mcp", headers=session.headers(**{"last-event-id": f"{number}-0"})) as resp:
            again = [e async for e in _events(resp)]
    assert again and again[-1]["data"]["result"]["content"][0]["text"] == "counted 2"  # still resumable
