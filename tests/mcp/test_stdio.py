"""Supervised stdio upstreams against a real process (``tests/support/stdio_server.py``).

What is proven here: the process gets only PATH, HOME and LANG plus the record's env; it
is restarted after it dies; an over-long stdout line is a protocol error and a restart;
stderr reaches the log line by line, cut and budgeted, control characters escaped; stop
means stdin closed, SIGTERM, then SIGKILL to the whole process group; requests are
multiplexed by id; server-to-client pings are answered; the pool starts a process only
for a launch of the active projection and kills the ones a projection drops; the SDK
transport used at approval starts the process the same way.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from anyio.abc import TaskGroup
from mcp import Client

from gateway.errors import UpstreamProtocolError, UpstreamTimeout, UpstreamUnavailable
from gateway.httpclient import HttpxClient
from gateway.mcp.stdio import StdioLaunch, StdioLimits, StdioUpstream, launch_environment, stdio_transport
from gateway.mcp.upstream import UpstreamAddress, UpstreamPool

pytestmark = pytest.mark.anyio

SERVER = Path(__file__).resolve().parents[1] / "support" / "stdio_server.py"
FAST = StdioLimits(backoff_initial=0.05, backoff_max=0.2, stdin_grace=0.3, term_grace=0.3)
"""Short timings so that restarts and stops take well under a second."""


def launch(*flags: str, env: dict[str, str] | None = None, cwd: str | None = None) -> StdioLaunch:
    record = {"command": sys.executable, "args": [str(SERVER), *flags], "cwd": cwd, "env": env or {}}
    return StdioLaunch.from_record(record)


@pytest.fixture
async def tg() -> AsyncIterator[TaskGroup]:
    async with anyio.create_task_group() as group:
        yield group
        group.cancel_scope.cancel()


async def call(upstream: Any, tool: str, **arguments: Any) -> dict[str, Any]:
    reply = await upstream.request("tools/call", {"name": tool, "arguments": arguments})
    assert "result" in reply, reply
    return reply["result"]  # type: ignore[no-any-return]


async def whoami(upstream: Any) -> dict[str, Any]:
    return orjson.loads((await call(upstream, "whoami"))["content"][0]["text"])  # type: ignore[no-any-return]


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


async def wait_dead(pid: int, timeout: float) -> None:
    with anyio.fail_after(timeout):
        while alive(pid):
            await anyio.sleep(0.02)


async def test_the_process_gets_path_home_lang_and_the_record_env_only(
    tg: TaskGroup, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://gateway:secret@db/gateway")
    monkeypatch.setenv("GATEWAY_ADMIN_TOKEN", "admin-token-canary")
    monkeypatch.setenv("LANG", "C.UTF-8")  # so Python's locale coercion adds no LC_CTYPE
    upstream = StdioUpstream(
        "env", launch(env={"STDIO_MARKER": "from-the-record"}, cwd=str(tmp_path)), spawner=tg, timeout=10
    )
    try:
        info = await whoami(upstream)
    finally:
        await upstream.aclose()
    expected = {k for k in ("PATH", "HOME", "LANG") if k in os.environ} | {"STDIO_MARKER"}
    assert set(info["env_keys"]) == expected
    assert info["marker"] == "from-the-record" and info["cwd"] == str(tmp_path)
    assert launch_environment(launch(env={"PATH": "/only"}), {"PATH": "/usr/bin", "DATABASE_URL": "x"}) == {
        "PATH": "/only"
    }


async def test_a_killed_process_is_restarted_and_the_next_call_succeeds(tg: TaskGroup) -> None:
    upstream = StdioUpstream("restart", launch(), spawner=tg, timeout=10, limits=FAST)
    try:
        first = (await whoami(upstream))["pid"]
        os.kill(first, signal.SIGKILL)
        await wait_dead(first, 5)
        # Written to a dead process's closed stdin, the request is not lost: it waits for the
        # restart (within its timeout) and goes to the new process.
        second = (await whoami(upstream))["pid"]
        assert second != first and upstream.starts == 2
    finally:
        await upstream.aclose()


async def test_a_call_written_to_a_closed_stdin_goes_to_the_next_process(tg: TaskGroup) -> None:
    upstream = StdioUpstream("deaf", launch(), spawner=tg, timeout=10, limits=FAST)
    try:
        first = (await whoami(upstream))["pid"]
        await call(upstream, "close_stdin")  # alive, but reads nothing more: EPIPE on the next write
        assert (await whoami(upstream))["pid"] != first  # not lost: sent to the restarted process
        await wait_dead(first, 5)
    finally:
        await upstream.aclose()


async def test_a_call_in_flight_when_the_process_dies_fails_unavailable(tg: TaskGroup) -> None:
    upstream = StdioUpstream("dies", launch(), spawner=tg, timeout=10, limits=FAST)
    try:
        with pytest.raises(UpstreamUnavailable, match="closed its stdout"):
            await upstream.request("tools/call", {"name": "exit", "arguments": {"code": 3}})
        assert (await call(upstream, "echo", text="back"))["content"][0]["text"] == "back"
    finally:
        await upstream.aclose()


async def test_a_stdout_line_over_the_cap_is_a_protocol_error_and_restarts_the_process(tg: TaskGroup) -> None:
    limits = StdioLimits(max_line=4096, backoff_initial=0.05, stdin_grace=0.3, term_grace=0.3)
    upstream = StdioUpstream("long", launch(), spawner=tg, timeout=10, limits=limits)
    try:
        pid = (await whoami(upstream))["pid"]
        assert (await call(upstream, "long_line", size=4000))["content"][0]["text"] == "written"  # at the cap: fine
        with pytest.raises(UpstreamProtocolError, match="over 4096 bytes"):
            await upstream.request("tools/call", {"name": "long_line", "arguments": {"size": 5000}})
        await wait_dead(pid, 5)
        assert (await whoami(upstream))["pid"] != pid
    finally:
        await upstream.aclose()


async def test_a_start_failure_fails_the_request_at_once(tg: TaskGroup) -> None:
    missing = StdioLaunch.from_record({"command": "/nonexistent/mcp-server"})
    upstream = StdioUpstream("missing", missing, spawner=tg, timeout=30, limits=FAST)
    started = time.monotonic()
    try:
        with pytest.raises(UpstreamUnavailable, match="cannot start '/nonexistent/mcp-server'"):
            await upstream.request("tools/list", {})
        exits = StdioUpstream("exits", launch("--exit-at-start", "7"), spawner=tg, timeout=30, limits=FAST)
        with pytest.raises(UpstreamUnavailable):
            await exits.request("tools/list", {})
        await exits.aclose()
    finally:
        await upstream.aclose()
    assert time.monotonic() - started < 5


async def test_stderr_is_logged_line_by_line_cut_escaped_and_budgeted(
    tg: TaskGroup, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.upstream.stdio")
    limits = StdioLimits(stderr_line=64, stderr_lines=4, stdin_grace=0.3, term_grace=0.3)
    upstream = StdioUpstream("chatty", launch(), spawner=tg, timeout=10, limits=limits)
    try:
        await call(upstream, "stderr", text="forged\x1b[31m\rline", lines=1)
        await call(upstream, "stderr", lines=10, size=200)
        await call(upstream, "echo", text="still answering")  # stderr never blocks the server
    finally:
        await upstream.aclose()  # the budget's summary is flushed when stderr ends
    lines = [r.getMessage() for r in caplog.records if " stderr: " in r.getMessage()]
    assert lines[0] == "stdio upstream chatty stderr: stdio test server ready"
    assert lines[1] == "stdio upstream chatty stderr: forged\\x1b[31m\\x0dline"
    assert lines[2:] == [f"stdio upstream chatty stderr: {'e' * 64} [136 more bytes not logged]"] * 2
    summary = [r.getMessage() for r in caplog.records if "not logged: over" in r.getMessage()]
    assert summary == [
        "stdio upstream chatty: 8 stderr line(s) (1600 bytes) not logged: over 4 lines / 65536 bytes per 60s"
    ]


async def test_stop_escalates_to_sigkill_for_the_whole_process_group(tg: TaskGroup) -> None:
    stubborn = launch("--ignore-sigterm", "--stay-after-eof", "--child")
    upstream = StdioUpstream("stubborn", stubborn, spawner=tg, timeout=10, limits=FAST)
    info = await whoami(upstream)
    assert alive(info["pid"]) and alive(info["child"])
    started = time.monotonic()
    await upstream.aclose()
    elapsed = time.monotonic() - started
    assert not alive(info["pid"])
    assert FAST.stdin_grace + FAST.term_grace <= elapsed < 5  # it took the SIGKILL step
    await wait_dead(info["child"], 2)  # SIGKILL went to the whole group
    with pytest.raises(UpstreamUnavailable, match="is stopped"):
        await upstream.request("tools/list", {})


async def test_a_well_behaved_server_exits_when_its_stdin_closes(tg: TaskGroup) -> None:
    upstream = StdioUpstream("polite", launch(), spawner=tg, timeout=10, limits=StdioLimits(stdin_grace=5))
    pid = (await whoami(upstream))["pid"]
    started = time.monotonic()
    await upstream.aclose()
    assert not alive(pid) and time.monotonic() - started < 2  # no SIGTERM needed


async def test_concurrent_requests_are_matched_by_id(tg: TaskGroup) -> None:
    upstream = StdioUpstream("multi", launch(), spawner=tg, timeout=10)
    finished: list[str] = []

    async def slow() -> None:
        assert (await call(upstream, "sleep", seconds=0.3))["content"][0]["text"] == "slept"
        finished.append("slow")

    async def fast() -> None:
        await anyio.sleep(0.05)
        assert (await call(upstream, "echo", text="fast"))["content"][0]["text"] == "fast"
        finished.append("fast")

    try:
        await whoami(upstream)
        async with anyio.create_task_group() as both:
            both.start_soon(slow)
            both.start_soon(fast)
    finally:
        await upstream.aclose()
    assert finished == ["fast", "slow"]  # answered out of order, each to its own caller


async def test_a_server_to_client_ping_is_answered(tg: TaskGroup) -> None:
    upstream = StdioUpstream("pinger", launch("--banner"), spawner=tg, timeout=10)
    try:
        reply = orjson.loads((await call(upstream, "ask_ping"))["content"][0]["text"])
    finally:
        await upstream.aclose()
    assert reply == {"jsonrpc": "2.0", "id": "srv-1", "result": {}}


async def test_the_pool_runs_only_launches_of_the_projection_and_kills_dropped_ones() -> None:
    http = HttpxClient()
    pool = UpstreamPool(http, timeout=10)
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(pool.run)
            first = launch(env={"STDIO_MARKER": "one"})
            address = UpstreamAddress("stdio", first.address(), first)
            with pytest.raises(UpstreamUnavailable, match="not in the active projection"):
                await pool.get("s", "stdio", address.url).request("tools/list", {})
            await pool.retain({"s": address})
            upstream = pool.get("s", "stdio", address.url)
            assert pool.get("s", "stdio", address.url) is upstream
            pid = (await whoami(upstream))["pid"]
            await pool.retain({})
            assert not alive(pid)
            with pytest.raises(UpstreamUnavailable):
                await upstream.request("tools/list", {})
            tg.cancel_scope.cancel()
    finally:
        await http.aclose()


async def test_cancelling_the_pool_stops_its_processes() -> None:
    http = HttpxClient()
    pool = UpstreamPool(http, timeout=10)
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(pool.run)
            one = launch(env={"STDIO_MARKER": "shutdown"})
            await pool.retain({"s": UpstreamAddress("stdio", one.address(), one)})
            pid = (await whoami(pool.get("s", "stdio", one.address())))["pid"]
            tg.cancel_scope.cancel()
        assert not alive(pid)
    finally:
        await http.aclose()


async def test_the_sdk_transport_used_at_approval_lists_tools_and_stops_the_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GATEWAY_ADMIN_TOKEN", "admin-token-canary")
    async with Client(stdio_transport("disc", launch("--child"), FAST), mode="legacy") as client:
        names = [t.name for t in (await client.list_tools()).tools]
        result = await client.call_tool("whoami", {})
        info = orjson.loads(result.content[0].text)  # type: ignore[union-attr]
    assert names == ["whoami", "echo", "stderr", "long_line", "sleep", "ask_ping", "close_stdin", "exit"]
    assert "GATEWAY_ADMIN_TOKEN" not in info["env_keys"]
    assert not alive(info["pid"])
    await wait_dead(info["child"], 2)


def test_a_launch_never_shows_env_values() -> None:
    secret = launch(env={"API_KEY": "s3cret-value"})
    assert "s3cret-value" not in repr(secret) and "API_KEY" in repr(secret)
    assert "s3cret-value" not in secret.address()
    assert secret.address() != launch(env={"API_KEY": "other"}).address()


RELAY = Path(__file__).resolve().parents[1] / "support" / "relay_upstream.py"


async def test_progress_keeps_a_call_alive_past_the_idle_timeout_up_to_the_hard_limit(tg: TaskGroup) -> None:
    """``timeout`` is an idle timeout restarted by each progress notification; ``max_duration``
    ends the exchange however lively it is (``tests/support/relay_upstream.py`` over stdio)."""
    relay = StdioLaunch.from_record(
        {
            "command": sys.executable,
            "args": [str(RELAY), "--transport", "stdio"],
            "env": {"PYTHONPATH": str(RELAY.parents[2])},
        }
    )
    seen: list[Any] = []

    class Channel:
        async def notify(self, message: dict[str, Any]) -> None:
            if message["method"] == "notifications/progress":
                seen.append(message["params"]["progress"])

        async def request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
            raise AssertionError("not asked")

    lively = StdioUpstream("relay", relay, spawner=tg, timeout=2.5, max_duration=30)
    capped = StdioUpstream("relay", relay, spawner=tg, timeout=2.5, max_duration=3)
    for upstream in (lively, capped):  # started (and the interpreter warm) before the clocks matter
        assert "result" in await upstream.request("tools/list", {})
    params = {"name": "count", "arguments": {"steps": 25, "pause": 0.15}, "_meta": {"progressToken": "p"}}
    reply = await lively.request("tools/call", params, Channel())  # 3.75 s of work, never 2.5 s idle
    assert reply["result"]["content"][0]["text"] == "counted 25" and seen == list(range(1, 26))
    with anyio.fail_after(10), pytest.raises(UpstreamTimeout, match="did not finish within 3s"):
        await capped.request("tools/call", params, Channel())
    await lively.aclose()
    await capped.aclose()
