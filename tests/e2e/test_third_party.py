"""End to end with third-party MCP software on both sides of the gateway.

* Upstream: the reference ``@modelcontextprotocol/server-everything@2026.8.31``
  in ``streamableHttp`` mode (TypeScript SDK 1.x: 2025-11-25 era, stateful
  ``Mcp-Session-Id`` sessions, SSE responses), registered as server
  ``everything``. It exercises the gateway's LEGACY upstream session path.
* Client: the MCP Inspector CLI ``@modelcontextprotocol/inspector@2.12.0``
  (TypeScript SDK 2.x) against the gateway's ``/mcp``, with the sample
  upstream registered as ``demo``.

Both npm packages are installed once into ``.tools/npm`` (git-ignored) by a
session fixture, only when missing, each install bounded to
:data:`INSTALL_TIMEOUT` seconds; later runs are offline. No npm registry ->
the tests FAIL with a message saying so (never skip).

Notes recorded while writing this module:

* server-everything has no host option (``app.listen(PORT)`` binds all
  interfaces). We preload a tiny ``net.Server.listen`` shim
  (``NODE_OPTIONS=--require``) that binds a bare-port ``listen`` to
  127.0.0.1, and assert the loopback-only bind from ``/proc/net/tcp*``.
  It also gets a minimal environment, since its ``get-env`` tool is
  ``readOnlyHint: true`` and would hand the environment to any viewer.
* The Inspector declares ``engines.node >= 22.19.0`` but its CLI works on the
  machine's Node 20 (checked for every call used here), so no Node 22 is fetched.
* The Inspector always runs ``tools/list`` before ``tools/call`` and refuses a
  tool it cannot see (exit 5, ``tool_not_found``) without calling it. Under the
  sample policy a tool is listed exactly when it may be called, so a
  policy-denied ``tools/call`` from the Inspector needs a policy that lists a
  tool but denies some calls to it; we use one that denies by argument. The
  gateway's JSON-RPC error -32003 then makes the Inspector exit 1 with
  ``{"error": {"code": "error", "message": "Denied by policy"}}`` (not 5).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp.shared.exceptions import MCPError

from gateway.devtools.stack import LocalStack, free_port, sample_policy_modules
from tests.e2e.helpers import Answering, audit_item, client, recorded

pytestmark = [pytest.mark.integration, pytest.mark.db, pytest.mark.anyio, pytest.mark.timeout(600)]

REPO_ROOT = Path(__file__).resolve().parents[2]
NPM_PREFIX = REPO_ROOT / ".tools" / "npm"
INSTALL_TIMEOUT = 240
INSPECTOR_TIMEOUT = 60

# Loaded into server-everything with --require: a bare-port listen() binds loopback only.
LOOPBACK_SHIM = """\
const net = require("node:net");
const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  const port = args[0];
  const barePort = typeof port === "number" || (typeof port === "string" && /^\\d+$/.test(port));
  if (barePort && typeof args[1] !== "string") args.splice(1, 0, "127.0.0.1");
  return listen.apply(this, args);
};
"""


# ---------------------------------------------------------------- npm tools
@dataclass(frozen=True)
class NpmTool:
    package: str
    version: str
    bin: str

    @property
    def spec(self) -> str:
        return f"{self.package}@{self.version}"

    @property
    def bin_path(self) -> Path:
        return NPM_PREFIX / "node_modules" / ".bin" / self.bin

    @property
    def marker(self) -> Path:
        # Written only after a complete install: a killed install is redone next time.
        return NPM_PREFIX / f".installed-{self.package.replace('/', '+')}@{self.version}"


EVERYTHING = NpmTool("@modelcontextprotocol/server-everything", "2026.8.31", "mcp-server-everything")
INSPECTOR = NpmTool("@modelcontextprotocol/inspector", "2.12.0", "mcp-inspector")


def _sayer(config: pytest.Config) -> Callable[[str], None]:
    """print() that gets through pytest's capture (install progress is worth seeing)."""
    capman = config.pluginmanager.getplugin("capturemanager")

    def say(msg: str) -> None:
        if capman is None:
            print(f"[third-party] {msg}", flush=True)
            return
        with capman.global_and_fixture_disabled():
            print(f"\n[third-party] {msg}", flush=True)

    return say


def _installed_version(tool: NpmTool) -> str | None:
    manifest = NPM_PREFIX / "node_modules" / tool.package / "package.json"
    try:
        return str(json.loads(manifest.read_text())["version"])
    except (OSError, ValueError, KeyError):
        return None


def ensure_npm_tool(tool: NpmTool, say: Callable[[str], None]) -> Path:
    """Install ``tool`` into :data:`NPM_PREFIX` unless already there; return its bin. One
    install at a time (a file lock): ``pytest -n`` workers may ask at once on a new machine."""
    NPM_PREFIX.mkdir(parents=True, exist_ok=True)
    with open(NPM_PREFIX / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _ensure_npm_tool(tool, say)


def _ensure_npm_tool(tool: NpmTool, say: Callable[[str], None]) -> Path:
    if tool.marker.exists() and tool.bin_path.exists() and _installed_version(tool) == tool.version:
        say(f"using cached {tool.spec} from {NPM_PREFIX.relative_to(REPO_ROOT)}")
        return tool.bin_path
    gitignore = (REPO_ROOT / ".gitignore").read_text().splitlines()
    assert ".tools/" in gitignore, ".tools/ must stay git-ignored before npm installs into .tools/npm"
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail(f"npm not found on PATH; it is needed to install {tool.spec} into {NPM_PREFIX}", pytrace=False)
    NPM_PREFIX.mkdir(parents=True, exist_ok=True)
    tool.marker.unlink(missing_ok=True)
    cmd = [
        npm,
        "install",
        "--prefix",
        str(NPM_PREFIX),
        "--no-audit",
        "--no-fund",
        "--ignore-scripts",
        "--no-update-notifier",
        "--save-exact",
        "--loglevel=error",
        tool.spec,
    ]
    say(
        f"installing {tool.spec} into {NPM_PREFIX.relative_to(REPO_ROOT)} (npm install, timeout {INSTALL_TIMEOUT} s) ..."
    )
    started = time.monotonic()
    hint = "is the npm registry reachable (`npm config get registry`, proxy settings)?"
    try:
        proc = subprocess.run(
            cmd, cwd=REPO_ROOT, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=INSTALL_TIMEOUT
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"`{' '.join(cmd)}` did not finish within {INSTALL_TIMEOUT} s; {hint}", pytrace=False)
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        tail = "\n".join(lines if len(lines) <= 16 else [*lines[:8], "...", *lines[-8:]])
        pytest.fail(f"`{' '.join(cmd)}` failed with exit {proc.returncode}; {hint}\n{tail}", pytrace=False)
    if _installed_version(tool) != tool.version or not tool.bin_path.exists():
        pytest.fail(f"npm install finished but {tool.spec} / {tool.bin_path} is not there", pytrace=False)
    tool.marker.write_text(f"{tool.spec}\n")
    say(f"installed {tool.spec} in {time.monotonic() - started:.1f} s")
    return tool.bin_path


@pytest.fixture(scope="session")
def node_bin() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node not found on PATH (Node >= 20 is needed for the third-party MCP tests)", pytrace=False)
    return node


@pytest.fixture(scope="session")
def everything_bin(request: pytest.FixtureRequest) -> Path:
    return ensure_npm_tool(EVERYTHING, _sayer(request.config))


@pytest.fixture(scope="session")
def inspector_bin(request: pytest.FixtureRequest) -> Path:
    return ensure_npm_tool(INSPECTOR, _sayer(request.config))


# ---------------------------------------------------------------- the stack
# ---------------------------------------------------------------- server-everything (legacy upstream)
def _listen_addresses(port: int) -> set[str]:
    """IPv4/IPv6 addresses (hex, as in /proc/net/tcp*) with a socket LISTENing on ``port``."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            addr, hex_port = fields[1].rsplit(":", 1)
            if fields[3] == "0A" and int(hex_port, 16) == port:
                found.add(addr)
    return found


LOOPBACK_V4 = "0100007F"


@dataclass
class Everything:
    port: int
    log: Path
    start: Callable[[], None]
    stop: Callable[[], None]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"


@pytest.fixture(scope="class")
def everything(stack: LocalStack, everything_bin: Path, node_bin: str) -> Iterator[Everything]:
    """server-everything on a random loopback port, registered+approved as ``everything``.

    Class-scoped: it is stopped as soon as the tests that need it are done.
    """
    shim = stack.run_dir / "loopback-listen.cjs"
    shim.write_text(LOOPBACK_SHIM)
    port = free_port()
    log = stack.run_dir / "everything.log"
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(stack.run_dir),
        "PORT": str(port),
        "NODE_OPTIONS": f"--require {shim}",
    }
    procs: list[subprocess.Popen[bytes]] = []

    def start() -> None:
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                [node_bin, str(everything_bin), "streamableHttp"],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        procs.append(proc)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"server-everything exited with {proc.returncode}: {log.read_text()[-2000:]}")
            try:
                httpx.get(f"http://127.0.0.1:{port}/mcp", timeout=1.0)  # 400 without a session: it is up
                return
            except httpx.HTTPError:
                time.sleep(0.05)
        raise TimeoutError(f"server-everything not up on port {port} after 20 s: {log.read_text()[-2000:]}")

    def stop() -> None:
        while procs:
            proc = procs.pop()
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()

    try:
        start()
        stack.register_and_approve_server("everything", f"http://127.0.0.1:{port}/mcp", "server-everything 2026.8.31")
        stack.wait_projection_active()
        yield Everything(port=port, log=log, start=start, stop=stop)
    finally:
        stop()


class TestServerEverythingUpstream:
    """The gateway in front of a third-party legacy (2025-11-25, stateful, SSE) upstream."""

    def test_upstream_listens_on_loopback_only_and_is_legacy_with_sse(self, everything: Everything) -> None:
        addresses = _listen_addresses(everything.port)
        if Path("/proc/net/tcp").exists():
            assert addresses == {LOOPBACK_V4}, f"server-everything listens on {addresses}, expected 127.0.0.1 only"
        init = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-11-25",
                "capabilities": {},
                "clientInfo": {"name": "probe", "version": "1"},
            },
        }
        resp = httpx.post(everything.url, json=init, headers={"accept": "application/json, text/event-stream"})
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        session = resp.headers["mcp-session-id"]
        assert '"protocolVersion":"2025-11-25"' in resp.text
        httpx.delete(everything.url, headers={"mcp-session-id": session, "mcp-protocol-version": "2025-11-25"})

    @pytest.mark.parametrize(("mode", "version"), [("auto", "2026-07-28"), ("legacy", "2025-11-25")])
    async def test_admin_lists_and_calls_everything_tools(
        self, stack: LocalStack, everything: Everything, mode: str, version: str
    ) -> None:
        token = stack.idp.mint("ada", ["admin"], stack.audience)
        async with client(stack, token, mode=mode) as c:
            assert c.protocol_version == version
            names = {t.name for t in (await c.list_tools()).tools}
            assert {"everything__echo", "everything__get-sum", "everything__get-structured-content"} <= names
            assert {"demo__echo", "demo__delete_record"} <= names
            echo = await c.call_tool("everything__echo", {"message": f"hello via {mode}"})
            total = await c.call_tool("everything__get-sum", {"a": 2, "b": 40})
            weather = await c.call_tool("everything__get-structured-content", {"location": "Chicago"})
        assert not echo.is_error and echo.content[0].text == f"Echo: hello via {mode}"
        assert not total.is_error and total.content[0].text == "The sum of 2 and 40 is 42."
        assert not weather.is_error
        assert set(weather.structured_content or {}) == {"temperature", "conditions", "humidity"}
        gateway_log = (stack.run_dir / "gateway.log").read_text()
        assert f"upstream {everything.url}: legacy session, protocol 2025-11-25" in gateway_log

    @pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")  # sampling: 2025-era
    async def test_progress_sampling_and_elicitation_of_server_everything_reach_the_client(
        self, stack: LocalStack, everything: Everything
    ) -> None:
        """server-everything's own tools, through the gateway to a handshake-era SDK client:
        progress of a long operation, a sampling request (policy: operators may lend their
        model) and an elicitation, each relayed on the call's stream and answered back."""
        token = stack.idp.mint("olive", ["operator"], stack.audience)
        seen = Answering()
        async with client(stack, token, mode="legacy", **seen.callbacks()) as c:
            names = {t.name for t in (await c.list_tools()).tools}
            done = await c.call_tool(
                "everything__trigger-long-running-operation",
                {"duration": 0.3, "steps": 3},
                progress_callback=seen.on_progress,
            )
            sampled = await c.call_tool("everything__trigger-sampling-request", {"prompt": "hi", "maxTokens": 10})
            elicited = await c.call_tool("everything__trigger-elicitation-request", {})
        # pinned at approval because discovery declared sampling and elicitation
        assert {"everything__trigger-sampling-request", "everything__trigger-elicitation-request"} <= names
        assert not done.is_error and seen.progress == [1, 2, 3]
        assert not sampled.is_error and "sampled answer" in sampled.content[0].text  # type: ignore[union-attr]
        assert seen.prompts == ["Resource trigger-sampling-request context: hi"]
        assert not elicited.is_error and seen.questions == ["Please provide inputs for the following fields:"]

    @pytest.mark.parametrize("mode", ["auto", "legacy"])
    async def test_viewer_is_denied_a_tool_that_is_not_read_only(
        self, stack: LocalStack, everything: Everything, mode: str
    ) -> None:
        admin = stack.idp.mint("ada", ["admin"], stack.audience)
        async with client(stack, admin, mode=mode) as c:
            tools = {t.name: t for t in (await c.list_tools()).tools}
        not_read_only = sorted(
            n
            for n, t in tools.items()
            if n.startswith("everything__") and not (t.annotations and t.annotations.read_only_hint is True)
        )
        # Pick a harmless, argument-less, non-destructive one (gzip-file-as-resource would fetch a URL).
        target = "everything__toggle-simulated-logging"
        assert target in not_read_only, f"{target} should not be readOnly; not-readOnly tools: {not_read_only}"
        annotations = tools[target].annotations
        assert annotations is not None and annotations.read_only_hint is False and annotations.destructive_hint is False

        viewer = stack.idp.mint("vera", ["viewer"], stack.audience)
        async with client(stack, viewer, mode=mode) as c:
            visible = {t.name for t in (await c.list_tools()).tools}
            assert "everything__echo" in visible and not visible & set(not_read_only)
            with pytest.raises(MCPError) as denied:
                await c.call_tool(target, {})
            assert not (await c.call_tool("everything__echo", {"message": "still fine"})).is_error
        data = denied.value.error.data
        assert denied.value.error.code == -32003
        assert data["category"] == "policy_denied" and data["reasons"] == ["tool_not_read_only"]
        item = audit_item(stack, data["decision_id"])
        assert (
            item["allowed"] is False and item["server"] == "everything" and item["tool"] == "toggle-simulated-logging"
        )

    async def test_gateway_recovers_after_the_legacy_upstream_restarts(
        self, stack: LocalStack, everything: Everything
    ) -> None:
        # Must run last in this class: it restarts server-everything (same port, new process, no sessions).
        token = stack.idp.mint("ada", ["admin"], stack.audience)
        async with client(stack, token) as c:
            assert not (await c.call_tool("everything__echo", {"message": "before"})).is_error
            everything.stop()
            everything.start()
            failure: MCPError | None = None
            try:
                after = await c.call_tool("everything__echo", {"message": "after restart"})
            except MCPError as exc:
                failure = exc
        assert failure is None, f"call after the upstream restart failed: {failure and failure.error}"
        assert not after.is_error and after.content[0].text == "Echo: after restart"


# ---------------------------------------------------------------- MCP Inspector CLI (second client)
@dataclass
class InspectorRun:
    returncode: int
    stdout: str
    stderr: str

    def json_out(self) -> dict[str, Any]:
        return json.loads(self.stdout)  # type: ignore[no-any-return]

    def json_err(self) -> dict[str, Any]:
        return json.loads(self.stderr.strip().splitlines()[-1])  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def inspector(
    stack: LocalStack, inspector_bin: Path, node_bin: str, tmp_path_factory: pytest.TempPathFactory
) -> Callable[..., InspectorRun]:
    home = tmp_path_factory.mktemp("inspector-home")  # it keeps ~/.mcp-inspector state
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MCP_", "NODE_OPTIONS"))}
    env.update({"MCP_INSPECTOR_SECRET_STORE": "memory", "HOME": str(home)})

    def run(*args: str, token: str | None = None) -> InspectorRun:
        argv = [
            node_bin,
            str(inspector_bin),
            "--cli",
            f"{stack.data_url}/mcp",
            "--transport",
            "http",
            "--format",
            "json",
        ]
        argv += list(args)
        if token is not None:
            argv += ["--header", f"Authorization: Bearer {token}"]
        proc = subprocess.run(
            argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env, timeout=INSPECTOR_TIMEOUT
        )
        return InspectorRun(proc.returncode, proc.stdout, proc.stderr)

    return run


DEMO_TOOLS = {"demo__create_ticket", "demo__delete_record", "demo__echo", "demo__get_weather", "demo__search_docs"}


def test_inspector_lists_tools_through_the_gateway(stack: LocalStack, inspector: Callable[..., InspectorRun]) -> None:
    admin = inspector("--method", "tools/list", token=stack.idp.mint("insp-admin", ["admin"], stack.audience))
    assert admin.returncode == 0, admin.stderr
    admin_names = {t["name"] for t in admin.json_out()["result"]["tools"]}
    assert {n for n in admin_names if n.startswith("demo__")} == DEMO_TOOLS
    viewer = inspector("--method", "tools/list", token=stack.idp.mint("insp-viewer", ["viewer"], stack.audience))
    assert viewer.returncode == 0, viewer.stderr
    tools = {t["name"]: t for t in viewer.json_out()["result"]["tools"]}
    assert {n for n in tools if n.startswith("demo__")} == {"demo__echo", "demo__get_weather", "demo__search_docs"}
    assert all(t["annotations"]["readOnlyHint"] is True for t in tools.values())


def test_inspector_calls_demo_echo(stack: LocalStack, inspector: Callable[..., InspectorRun]) -> None:
    httpx.delete(f"http://127.0.0.1:{stack.upstream_port}/_recorded")
    token = stack.idp.mint("insp-admin", ["admin"], stack.audience)
    run = inspector("--method", "tools/call", "--tool-name", "demo__echo", "--tool-arg", "text=hi", token=token)
    assert run.returncode == 0, run.stderr
    result = run.json_out()["result"]
    assert result["isError"] is False
    assert result["content"] == [{"type": "text", "text": "hi"}]
    seen = recorded(stack)
    assert seen["calls"] == [{"tool": "echo", "arguments": {"text": "hi"}}]
    assert seen["authorization_header_count"] == 0, "the client's bearer token must not reach the upstream"


def test_inspector_without_token_exits_3_auth_required(
    stack: LocalStack, inspector: Callable[..., InspectorRun]
) -> None:
    run = inspector("--method", "tools/list")
    assert run.returncode == 3, (run.stdout, run.stderr)
    assert run.stdout == ""
    assert run.json_err()["error"]["code"] == "auth_required"


def test_inspector_refuses_a_tool_the_policy_hides_without_calling_it(
    stack: LocalStack, inspector: Callable[..., InspectorRun]
) -> None:
    # Sample policy: a viewer does not see create_ticket, so the Inspector (which lists first) exits 5 itself.
    httpx.delete(f"http://127.0.0.1:{stack.upstream_port}/_recorded")
    token = stack.idp.mint("insp-viewer", ["viewer"], stack.audience)
    run = inspector(
        "--method",
        "tools/call",
        "--tool-name",
        "demo__create_ticket",
        "--tool-arg",
        "title=x",
        "--tool-arg",
        "priority=low",
        token=token,
    )
    assert run.returncode == 5, (run.stdout, run.stderr)
    assert run.json_err()["error"]["code"] == "tool_not_found"
    assert recorded(stack)["calls"] == []


def test_inspector_tool_error_exits_5(stack: LocalStack, inspector: Callable[..., InspectorRun]) -> None:
    token = stack.idp.mint("insp-admin", ["admin"], stack.audience)
    run = inspector(
        "--method",
        "tools/call",
        "--tool-name",
        "demo__create_ticket",
        "--tool-arg",
        "title=x",
        "--tool-arg",
        "priority=urgent",
        token=token,
    )
    assert run.returncode == 5, (run.stdout, run.stderr)
    assert run.json_out()["result"]["isError"] is True
    assert "$.priority" in run.json_out()["result"]["content"][0]["text"]
    assert run.json_err()["error"]["code"] == "tool_is_error"


ARGUMENT_RULE = """
# METADATA
# custom:
#   category: argument_forbidden
deny contains rego.metadata.rule().custom.category if {
\tinput.action == "tools/call"
\tinput.arguments.text == "forbidden"
}
"""


def test_inspector_policy_denied_call_exits_1_with_the_denial(
    stack: LocalStack, inspector: Callable[..., InspectorRun]
) -> None:
    modules = sample_policy_modules()
    modules["gateway/actions/actions.rego"] += ARGUMENT_RULE
    stack.upload_and_approve_policy(modules)
    stack.wait_projection_active()
    try:
        httpx.delete(f"http://127.0.0.1:{stack.upstream_port}/_recorded")
        token = stack.idp.mint("insp-denied", ["viewer"], stack.audience)
        args = ("--method", "tools/call", "--tool-name", "demo__echo")
        denied = inspector(*args, "--tool-arg", "text=forbidden", token=token)
        allowed = inspector(*args, "--tool-arg", "text=fine", token=token)
    finally:
        stack.upload_and_approve_policy(sample_policy_modules())
        stack.wait_projection_active()
    assert denied.returncode == 1, (denied.stdout, denied.stderr)
    assert denied.stdout == ""
    assert denied.json_err() == {"error": {"code": "error", "message": "Denied by policy"}}
    assert allowed.returncode == 0, allowed.stderr
    assert recorded(stack)["calls"] == [{"tool": "echo", "arguments": {"text": "fine"}}]
    deadline = time.monotonic() + 15
    items: list[dict[str, Any]] = []
    while time.monotonic() < deadline and not items:
        items = stack.admin("GET", "/v1/audit/decisions?subject=insp-denied&action=tools/call&allowed=false")["items"]
        time.sleep(0.1)
    assert [(i["tool"], i["reasons"]) for i in items] == [("echo", ["argument_forbidden"])]


def test_inspector_reads_resources_and_gets_prompts_through_the_gateway(
    stack: LocalStack, inspector: Callable[..., InspectorRun]
) -> None:
    """The Inspector CLI (TypeScript SDK 2.x) on the feature methods: lists filtered by
    policy and namespaced on ``/mcp``, a read and a get through the same decisions."""
    token = stack.idp.mint("insp-viewer", ["viewer"], stack.audience)
    listed = inspector("--method", "resources/list", token=token)
    assert listed.returncode == 0, listed.stderr
    uris = [r["uri"] for r in listed.json_out()["result"]["resources"]]
    assert uris == ["mcp-gw://demo/demo://docs/readme", "mcp-gw://demo/demo://docs/policies"]  # payroll is internal
    read = inspector("--method", "resources/read", "--uri", uris[0], token=token)
    assert read.returncode == 0, read.stderr
    assert read.json_out()["result"]["contents"][0]["uri"] == uris[0]
    prompts = inspector("--method", "prompts/list", token=token)
    assert prompts.returncode == 0, prompts.stderr
    assert "demo__incident_report" in {p["name"] for p in prompts.json_out()["result"]["prompts"]}
    got = inspector(
        "--method",
        "prompts/get",
        "--prompt-name",
        "demo__incident_report",
        "--prompt-args",
        "service=billing",
        token=token,
    )
    assert got.returncode == 0, got.stderr
    assert "billing" in json.dumps(got.json_out()["result"]["messages"])
    internal = inspector("--method", "resources/read", "--uri", "mcp-gw://demo/demo://internal/payroll", token=token)
    assert internal.returncode == 1 and internal.json_err()["error"]["message"] == "Denied by policy"
