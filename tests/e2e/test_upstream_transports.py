"""End to end: ``legacy_sse`` and ``stdio`` upstreams behind a real ``gateway serve``.

* ``@modelcontextprotocol/server-everything@2026.8.31`` (from ``.tools/npm``, installed by
  the helper of ``test_third_party.py``) in ``sse`` mode (2024-11-05 HTTP+SSE, registered
  as ``sse``) and in ``stdio`` mode (registered as ``evstdio``, run by the data plane);
* ``tests/support/stdio_server.py`` as ``tiny``: it reports its environment keys and pid.

Each is registered and approved through the admin API (approval discovers and pins its
tools over that transport), then listed and called with the ``mcp`` SDK client through
``/mcp``: lists filtered by the sample policy, an allowed and a denied call, both audited.
The stdio process gets only PATH, HOME and LANG plus its record's env (not the gateway's
``DATABASE_URL`` or admin token); it is restarted after it is killed; its stderr reaches
the gateway log; every stdio process is gone once the gateway stops (last test).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from mcp.shared.exceptions import MCPError

from gateway.devtools.stack import LocalStack, free_port
from tests.e2e.helpers import Answering, audit_item, client
from tests.e2e.test_third_party import EVERYTHING, LOOPBACK_SHIM, _sayer, ensure_npm_tool
from tests.support.ports import port_open

pytestmark = [pytest.mark.integration, pytest.mark.db, pytest.mark.anyio, pytest.mark.timeout(300)]

TINY = Path(__file__).resolve().parents[1] / "support" / "stdio_server.py"
CANARY = "stdio-env-canary-5be1c0"


@dataclass
class Upstreams:
    sse_url: str
    everything_bin: Path


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _wait_dead(pids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.05)
    return [p for p in pids if _alive(p)]


def _pids_running(*argv_tail: str) -> list[int]:
    """PIDs whose command line ends with ``argv_tail``."""
    found = []
    tail = [a.encode() for a in argv_tail]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")[:-1]
            except OSError:
                continue
            if cmdline[-len(tail) :] == tail and _alive(int(entry.name)):
                found.append(int(entry.name))
    return found


@pytest.fixture(scope="module")
def upstreams(stack: LocalStack, request: pytest.FixtureRequest) -> Iterator[Upstreams]:
    """server-everything (sse) on a loopback port; ``sse``, ``evstdio`` and ``tiny`` registered and approved."""
    node = subprocess.run(["which", "node"], capture_output=True, text=True).stdout.strip()
    if not node:
        pytest.fail("node not found on PATH (Node >= 20 is needed for server-everything)", pytrace=False)
    everything_bin = ensure_npm_tool(EVERYTHING, _sayer(request.config))
    shim = stack.run_dir / "loopback-listen.cjs"
    shim.write_text(LOOPBACK_SHIM)
    port = free_port()
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(stack.run_dir),
        "PORT": str(port),
        "NODE_OPTIONS": f"--require {shim}",
    }
    with open(stack.run_dir / "everything-sse.log", "ab") as out:
        sse = subprocess.Popen(
            [node, str(everything_bin), "sse"], stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env
        )
    try:
        deadline = time.monotonic() + 20
        while not port_open("127.0.0.1", port):
            assert sse.poll() is None and time.monotonic() < deadline, "server-everything (sse) did not start"
            time.sleep(0.05)
        sse_url = f"http://127.0.0.1:{port}/sse"
        stack.admin("POST", "/v1/servers", {"name": "sse", "transport": "legacy_sse", "url": sse_url})
        stack.admin("POST", "/v1/servers/sse/approve", {"comment": "reviewed"})
        home = str(stack.run_dir)  # its get-env tool is read-only: give it nothing worth reading
        evstdio = {"command": node, "args": [str(everything_bin), "stdio"], "env": {"HOME": home}}
        stack.admin("POST", "/v1/servers", {"name": "evstdio", "transport": "stdio", **evstdio})
        stack.admin("POST", "/v1/servers/evstdio/approve", {"trust_stdio": True, "comment": "reviewed"})
        tiny_env = {"STDIO_MARKER": "visible", "API_TOKEN": CANARY, "LANG": "C.UTF-8"}
        # --stay-after-eof: EOF on stdin alone (the gateway exiting) would not stop it; the gateway must.
        tiny = {"command": sys.executable, "args": [str(TINY), "--stay-after-eof"], "env": tiny_env}
        stack.admin("POST", "/v1/servers", {"name": "tiny", "transport": "stdio", **tiny})
        stack.admin("POST", "/v1/servers/tiny/approve", {"trust_stdio": True, "comment": "reviewed"})
        stack.wait_projection_active()
        yield Upstreams(sse_url, everything_bin)
    finally:
        sse.send_signal(signal.SIGTERM)
        try:
            sse.wait(timeout=10)
        except subprocess.TimeoutExpired:
            sse.kill()
            sse.wait()


def _audited(stack: LocalStack, subject: str, server: str, tool: str, allowed: bool) -> dict[str, Any]:
    query = f"/v1/audit/decisions?subject={subject}&server={server}&tool={tool}&allowed={str(allowed).lower()}"
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        items = stack.admin("GET", query)["items"]
        if items:
            return items[0]  # type: ignore[no-any-return]
        time.sleep(0.1)
    raise AssertionError(f"no audit event for {query}")


@pytest.mark.parametrize("server", ["sse", "evstdio"])
async def test_server_everything_over_the_transport_is_listed_by_policy_called_and_audited(
    stack: LocalStack, upstreams: Upstreams, server: str
) -> None:
    viewer = stack.idp.mint(f"vera-{server}", ["viewer"], stack.audience)
    async with client(stack, viewer) as c:
        visible = {t.name for t in (await c.list_tools()).tools if t.name.startswith(f"{server}__")}
        echo = await c.call_tool(f"{server}__echo", {"message": f"via {server}"})
        with pytest.raises(MCPError) as denied:
            await c.call_tool(f"{server}__toggle-simulated-logging", {})
    assert f"{server}__echo" in visible and f"{server}__toggle-simulated-logging" not in visible
    assert not echo.is_error and echo.content[0].text == f"Echo: via {server}"  # type: ignore[union-attr]
    assert denied.value.error.code == -32003 and denied.value.error.data["reasons"] == ["tool_not_read_only"]
    item = audit_item(stack, denied.value.error.data["decision_id"])
    assert (item["server"], item["tool"], item["allowed"]) == (server, "toggle-simulated-logging", False)
    allowed = _audited(stack, f"vera-{server}", server, "echo", True)
    assert allowed["status"] == "ok" and allowed["action"] == "tools/call"

    admin = stack.idp.mint("ada", ["admin"], stack.audience)
    async with client(stack, admin) as c:
        names = {t.name for t in (await c.list_tools()).tools if t.name.startswith(f"{server}__")}
        total = await c.call_tool(f"{server}__get-sum", {"a": 2, "b": 40})
    assert names > visible and f"{server}__toggle-simulated-logging" in names
    assert total.content[0].text == "The sum of 2 and 40 is 42."  # type: ignore[union-attr]
    gateway_log = (stack.run_dir / "gateway.log").read_text()
    if server == "sse":
        assert f"upstream {upstreams.sse_url}: legacy SSE session, protocol 2024-11-05" in gateway_log
    else:
        assert "stdio upstream evstdio stderr: Starting default (STDIO) server..." in gateway_log


@pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")  # sampling, logging: 2025-era
@pytest.mark.parametrize("server", ["sse", "evstdio"])
async def test_server_everything_over_the_transport_relays_progress_sampling_and_elicitation(
    stack: LocalStack, upstreams: Upstreams, server: str
) -> None:
    """server-everything in its ``sse`` and ``stdio`` modes: its progress, its sampling and
    elicitation requests reach the SDK client through the gateway and are answered back;
    its resources and prompts are read and got through the same governed methods."""
    token = stack.idp.mint(f"olga-{server}", ["operator"], stack.audience)
    seen = Answering(elicit_action="cancel")
    async with client(stack, token, mode="legacy", **seen.callbacks()) as c:
        done = await c.call_tool(
            f"{server}__trigger-long-running-operation",
            {"duration": 0.3, "steps": 3},
            progress_callback=seen.on_progress,
        )
        sampled = await c.call_tool(f"{server}__trigger-sampling-request", {"prompt": "hi", "maxTokens": 10})
        elicited = await c.call_tool(f"{server}__trigger-elicitation-request", {})
        resources = [r.uri for r in (await c.list_resources()).resources if r.uri.startswith(f"mcp-gw://{server}/")]
        read = await c.read_resource(resources[0])
        listed = [p.name for p in (await c.list_prompts()).prompts if p.name.startswith(f"{server}__")]
        got = await c.get_prompt(f"{server}__simple-prompt", {})
    assert not done.is_error and seen.progress == [1, 2, 3]
    assert not sampled.is_error and "sampled answer" in sampled.content[0].text  # type: ignore[union-attr]
    assert seen.prompts == ["Resource trigger-sampling-request context: hi"]
    assert not elicited.is_error and seen.questions == ["Please provide inputs for the following fields:"]
    assert read.contents[0].uri == resources[0]
    assert f"{server}__simple-prompt" in listed and got.messages
    event = _audited(stack, f"olga-{server}", server, "trigger-sampling-request", True)
    assert event["action"] == "tools/call"
    relayed = stack.admin("GET", f"/v1/audit/decisions?subject=olga-{server}&action=sampling/createMessage")["items"]
    assert [(e["server"], e["tool"], e["allowed"]) for e in relayed] == [(server, "trigger-sampling-request", True)]


def test_approving_a_stdio_server_without_trust_stdio_is_refused(stack: LocalStack, upstreams: Upstreams) -> None:
    body = {"name": "untrusted", "transport": "stdio", "command": sys.executable, "args": [str(TINY)]}
    stack.admin("POST", "/v1/servers", body)
    with pytest.raises(RuntimeError, match=r'-> 400: .*"trust_stdio: approving a stdio server'):
        stack.admin("POST", "/v1/servers/untrusted/approve", {"comment": "reviewed"})
    record = stack.admin("GET", "/v1/servers/untrusted")
    assert record["status"] == "pending_approval" and record["trusted"] is False and record["tools"] == []


async def _whoami(stack: LocalStack) -> dict[str, Any]:
    token = stack.idp.mint("vic", ["viewer"], stack.audience)
    async with client(stack, token) as c:
        result = await c.call_tool("tiny__whoami", {})
    assert not result.is_error, result
    return json.loads(result.content[0].text)  # type: ignore[union-attr,no-any-return]


async def test_the_stdio_process_gets_a_minimal_environment(stack: LocalStack, upstreams: Upstreams) -> None:
    info = await _whoami(stack)
    gateway_env = stack.gateway_env()
    assert "DATABASE_URL" in gateway_env and "GATEWAY_ADMIN_TOKEN" in gateway_env
    expected = {k for k in ("PATH", "HOME") if k in gateway_env} | {"LANG", "STDIO_MARKER", "API_TOKEN"}
    assert set(info["env_keys"]) == expected
    assert info["marker"] == "visible"
    record = stack.admin("GET", "/v1/servers/tiny")
    assert record["env_keys"] == ["API_TOKEN", "LANG", "STDIO_MARKER"] and record["trusted"] is True
    assert CANARY not in json.dumps(stack.admin("GET", "/v1/servers"))
    assert CANARY not in (stack.run_dir / "gateway.log").read_text()


async def test_a_killed_stdio_process_is_restarted(stack: LocalStack, upstreams: Upstreams) -> None:
    first = (await _whoami(stack))["pid"]
    os.kill(first, signal.SIGKILL)
    assert _wait_dead([first], 5) == []
    second = (await _whoami(stack))["pid"]  # the first call after the death: waits for the restart
    assert second != first
    assert "stdio upstream tiny: restarting in" in (stack.run_dir / "gateway.log").read_text()


async def test_stdio_processes_are_stopped_with_the_gateway(stack: LocalStack, upstreams: Upstreams) -> None:
    # Last in this module: it stops the gateway.
    tiny = (await _whoami(stack))["pid"]
    async with client(stack, stack.idp.mint("ada", ["admin"], stack.audience)) as c:
        assert not (await c.call_tool("evstdio__echo", {"message": "still here"})).is_error
    everything = _pids_running(str(upstreams.everything_bin), "stdio")
    # one process per caller (vera, ada, olga, ... each their own) plus the shared one the
    # data plane lists and watches with: every one of them must go with the gateway
    assert len(everything) >= 2, everything
    stack.stop("gateway")
    assert _wait_dead([tiny, *everything], 10) == []
