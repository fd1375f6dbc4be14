"""A local single-node stack for the demo, the benchmark and end-to-end tests.

Starts real processes on loopback: the sample upstream MCP server and
``gateway serve`` (control plane + data plane + supervised OPA sidecar), with
a development identity provider for bearer tokens. NOT for production.

Example::

    with LocalStack.create(run_dir, database_url=url, opa_bin=opa) as stack:
        stack.start_upstream()
        stack.start_gateway()
        stack.register_and_approve_server("demo", stack.upstream_url)
        stack.upload_and_approve_policy(sample_policy_modules())
        token = stack.idp.mint("alice", ["viewer"], stack.audience)
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx

from gateway.config import PROJECT_ROOT
from gateway.devtools.idp import DevIdentityProvider

__all__ = [
    "LocalStack",
    "drop_database",
    "free_port",
    "fresh_database",
    "quote_ident",
    "sample_policy_modules",
    "with_database",
]


_LISTEN_PORTS = range(20000, 32000)
"""Where :func:`free_port` looks: below Linux's default ephemeral range (32768-60999)."""
_handed_out: set[int] = set()


def _ephemeral_range() -> range:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return range(int(low), int(high) + 1)
    except (OSError, ValueError):  # pragma: no cover - not Linux
        return range(32768, 61000)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that was free a moment ago, outside the ephemeral range.

    A port the kernel picks for ``bind(0)`` comes from the ephemeral range, which every
    outgoing connection (PostgreSQL pools, long polls) also draws its local port from: a
    server started on it a moment later can find it taken and never bind (OPA restarting
    forever on a busy machine). Ports are therefore drawn from 20000-31999, skipping any
    inside the configured ephemeral range and any already handed out by this process.

    Raises:
        OSError: when no port in the range can be bound.
    """
    ephemeral = _ephemeral_range()
    rng = secrets.SystemRandom()
    candidates = [p for p in _LISTEN_PORTS if p not in ephemeral and p not in _handed_out]
    rng.shuffle(candidates)
    for port in candidates[:200]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise OSError(f"no free TCP port on {host} in {_LISTEN_PORTS.start}-{_LISTEN_PORTS.stop - 1}")


def with_database(url: str, dbname: str) -> str:
    """``url`` with its database (path) replaced by ``dbname``."""
    return urlunsplit(urlsplit(url)._replace(path=f"/{dbname}"))


def quote_ident(name: str) -> str:
    """``name`` as a quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


async def drop_database(conn: asyncpg.Connection, name: str) -> None:
    """``DROP DATABASE IF EXISTS … WITH (FORCE)``, retried for up to 5 s.

    FORCE cannot terminate an autovacuum worker (a superuser process) for a
    non-superuser role; it finishes within moments, so the drop is retried.
    """
    for attempt in range(50):
        try:
            await conn.execute(f"DROP DATABASE IF EXISTS {quote_ident(name)} WITH (FORCE)")
            return
        except (asyncpg.InsufficientPrivilegeError, asyncpg.ObjectInUseError):
            if attempt == 49:
                raise
            await asyncio.sleep(0.1)


def fresh_database(database_url: str, name: str) -> str:
    """Drop and re-create database ``name`` on the server of ``database_url``; return its URL.

    The demo and the benchmark start from an empty schema every run (the
    control plane's migrations create it), without touching other databases.
    """

    async def _recreate() -> None:
        conn = await asyncpg.connect(database_url)
        try:
            await drop_database(conn, name)
            await conn.execute(f"CREATE DATABASE {quote_ident(name)}")
        finally:
            await conn.close()

    asyncio.run(_recreate())
    return with_database(database_url, name)


def sample_policy_modules(root: Path | None = None) -> dict[str, str]:
    """The sample policy (``policies/gateway/**.rego``) as ``{relative file name: source}``."""
    base = (root or PROJECT_ROOT / "policies") / "gateway"
    return {
        str(p.relative_to(base.parent)): p.read_text()
        for p in sorted(base.rglob("*.rego"))
        if not p.name.endswith("_test.rego")
    }


@dataclass
class LocalStack:
    """Processes and endpoints of one local stack (all on 127.0.0.1).

    Attributes:
        run_dir: Logs, IdP keys and OPA work files go here.
        control_url: ``http://127.0.0.1:<control port>``.
        data_url: ``http://127.0.0.1:<data port>``.
        audience: The ``aud`` tokens must carry (``<data_url>/mcp``).
        admin_token: Bearer token of the admin API.
    """

    run_dir: Path
    database_url: str
    opa_bin: str
    control_port: int
    data_port: int
    opa_port: int
    upstream_port: int
    admin_token: str
    idp: DevIdentityProvider
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    extra_env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def create(
        cls,
        run_dir: Path,
        *,
        database_url: str,
        opa_bin: str,
        control_port: int | None = None,
        data_port: int | None = None,
        upstream_port: int | None = None,
    ) -> LocalStack:
        """Prepare a stack in ``run_dir`` (ports default to free ones)."""
        run_dir.mkdir(parents=True, exist_ok=True)
        issuer = "http://127.0.0.1/dev-idp"
        idp_dir = run_dir / "idp"
        idp = (
            DevIdentityProvider.load(idp_dir)
            if (idp_dir / "jwks.json").exists()
            else DevIdentityProvider.create(idp_dir, issuer)
        )
        return cls(
            run_dir=run_dir,
            database_url=database_url,
            opa_bin=opa_bin,
            control_port=control_port or free_port(),
            data_port=data_port or free_port(),
            opa_port=free_port(),
            upstream_port=upstream_port or free_port(),
            admin_token=secrets.token_urlsafe(24),
            idp=idp,
        )

    @property
    def control_url(self) -> str:
        return f"http://127.0.0.1:{self.control_port}"

    @property
    def data_url(self) -> str:
        return f"http://127.0.0.1:{self.data_port}"

    @property
    def upstream_url(self) -> str:
        return f"http://127.0.0.1:{self.upstream_port}/mcp"

    @property
    def audience(self) -> str:
        return f"{self.data_url}/mcp"

    def gateway_env(self) -> dict[str, str]:
        """The environment ``gateway serve`` runs with."""
        env = dict(os.environ)
        env.update(
            {
                "DATABASE_URL": self.database_url,
                "GATEWAY_CONTROL_PORT": str(self.control_port),
                "GATEWAY_DATA_PORT": str(self.data_port),
                "GATEWAY_ADMIN_TOKEN": self.admin_token,
                "GATEWAY_JWT_ISSUER": self.idp.issuer,
                "GATEWAY_JWT_AUDIENCE": self.audience,
                "GATEWAY_JWKS_URL": self.idp.jwks_url,
                "OPA_BIN": self.opa_bin,
                "GATEWAY_OPA_ADDR": f"127.0.0.1:{self.opa_port}",
                "GATEWAY_RUN_DIR": str(self.run_dir),
                "GATEWAY_DATAPLANE_ID": "dp-local",
            }
        )
        env.update(self.extra_env)
        return env

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = open(self.run_dir / f"{name}.log", "ab")  # noqa: SIM115 - owned by the process
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        log.close()
        self.procs[name] = proc
        return proc

    def _wait(self, name: str, url: str, timeout: float, headers: dict[str, str] | None = None) -> None:
        deadline = time.monotonic() + timeout
        proc = self.procs[name]
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}; see {self.run_dir / (name + '.log')}")
            try:
                if httpx.get(url, headers=headers, timeout=1.0).status_code < 500:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"{name} not ready at {url} after {timeout}s; see {self.run_dir / (name + '.log')}")

    def start_upstream(self, name: str = "upstream") -> None:
        """Start ``deploy/demo/sample_upstream.py`` and wait until it answers."""
        script = PROJECT_ROOT / "deploy" / "demo" / "sample_upstream.py"
        self._spawn(name, [sys.executable, str(script), "--host", "127.0.0.1", "--port", str(self.upstream_port)])
        self._wait(name, f"http://127.0.0.1:{self.upstream_port}/_health", 20)

    def start_gateway(self, timeout: float = 30, *, plane: str = "both") -> None:
        """Start ``gateway serve --plane <plane>`` and wait for its port(s).

        ``both`` runs as process ``gateway``; ``control`` and ``data`` run as
        processes named after the plane, so a split deployment can be started
        (and one plane stopped) independently.
        """
        name = "gateway" if plane == "both" else plane
        self._spawn(name, [sys.executable, "-m", "gateway", "serve", "--plane", plane], env=self.gateway_env())
        if plane in ("both", "control"):
            self._wait(name, f"{self.control_url}/v1/control-plane/scope", timeout, self.admin_headers)
        if plane in ("both", "data"):
            self._wait(name, f"{self.data_url}/healthz", timeout)

    def opa_pid(self) -> int | None:
        """PID of the OPA sidecar the gateway supervises (found by its listen address)."""
        needle = f"127.0.0.1:{self.opa_port}".encode()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if needle in cmdline and any(part.endswith(b"opa") for part in cmdline[:1]):
                return int(entry.name)
        return None

    def stop(self, name: str) -> None:
        """SIGTERM one process (SIGKILL after 10 s: a gateway stops its stdio upstreams, each
        with a grace of its own, before it exits)."""
        proc = self.procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def close(self) -> None:
        """Stop every process this stack started, the last started first (the gateway before
        the upstreams it holds connections to, so none waits for those to drain)."""
        for name in reversed(list(self.procs)):
            self.stop(name)

    def __enter__(self) -> LocalStack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def admin_headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.admin_token}"}

    def admin(self, method: str, path: str, json: Any = None, expect: int | tuple[int, ...] = (200, 201)) -> Any:
        """Call the admin API; raise with the body when the status is unexpected."""
        resp = httpx.request(method, f"{self.control_url}{path}", json=json, headers=self.admin_headers, timeout=30)
        allowed = (expect,) if isinstance(expect, int) else expect
        if resp.status_code not in allowed:
            raise RuntimeError(f"{method} {path} -> {resp.status_code}: {resp.text}")
        return resp.json() if resp.content else None

    def register_and_approve_server(self, name: str, url: str, description: str = "") -> dict[str, Any]:
        """``POST /v1/servers`` then ``POST /v1/servers/{name}/approve``."""
        self.admin(
            "POST",
            "/v1/servers",
            {"name": name, "transport": "streamable_http", "url": url, "description": description},
        )
        return self.admin("POST", f"/v1/servers/{name}/approve", {"comment": "reviewed"})  # type: ignore[no-any-return]

    def upload_and_approve_policy(self, modules: dict[str, str], data: Any = None) -> int:
        """Upload a policy version, approve it, return its version number."""
        body: dict[str, Any] = {"modules": modules}
        if data is not None:
            body["data"] = data
        version = int(self.admin("POST", "/v1/policies", body)["version"])
        self.admin("POST", f"/v1/policies/{version}/approve", {"comment": "reviewed"})
        return version

    def wait_projection_active(self, timeout: float = 30) -> dict[str, Any]:
        """Wait until every data plane and OPA runs the desired projection and ``/readyz`` is 200."""
        deadline = time.monotonic() + timeout
        state: dict[str, Any] = {}
        while time.monotonic() < deadline:
            state = self.admin("GET", "/v1/projection")
            if state.get("desired_version") and state.get("active_version") == state.get("desired_version"):
                if httpx.get(f"{self.data_url}/readyz", timeout=5).status_code == 200:
                    return state
            time.sleep(0.05)
        raise TimeoutError(f"projection not active after {timeout}s: {state}")
