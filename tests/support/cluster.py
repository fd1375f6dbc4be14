"""A scaled-out gateway on loopback for tests: N control planes on one database, M data planes,
a round-robin load balancer in front of each tier (issue 11, "Scale out").

Everything is real: PostgreSQL (a throwaway database), ``gateway serve --plane control`` and
``--plane data`` processes (each data plane supervising its own OPA sidecar), the sample
upstream (``deploy/demo/sample_upstream.py``) and :class:`LoadBalancer`, a small HTTP reverse
proxy built on aiohttp that runs in a thread of the test process.

Example::

    with Cluster.start(run_dir, pg_admin_url, opa_bin, control_planes=1, data_planes=2) as c:
        c.approve_sample()                      # server "demo" + the sample policy, converged
        token = c.mint("alice", ["viewer"])     # aud = <lb>/mcp
        async with c.client(token) as mcp:      # MCP SDK client, through the data-plane LB
            await mcp.call_tool("demo__echo", {"text": "hi"})
        c.lb.counts()                           # Counter({"dp-1": 2, "dp-2": 1})

Shared by every process of a cluster (generated once in ``run_dir``): the admin, internal and
OPA tokens, the bundle-signing key (RSA, ``GATEWAY_BUNDLE_SIGNING_KEY_FILE`` on control planes,
its public half as ``GATEWAY_BUNDLE_VERIFICATION_KEYS`` on data planes), the audit
checkpoint-signing key (Ed25519) and the credentials KEK. Without them each control plane would
generate development keys of its own, and an OPA fed by one control plane would refuse the
bundle signed by the other.

Clients talk to :attr:`Cluster.lb_url`: every data plane runs with ``GATEWAY_PUBLIC_URL`` set to
it and ``GATEWAY_JWT_AUDIENCE`` to ``<lb_url>/mcp``, and the balancer forwards ``Host``
unchanged, so host/origin checks and audiences hold whichever data plane answers.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import json
import os
import secrets
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import httpx2
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from gateway.config import PROJECT_ROOT
from gateway.devtools.idp import DevIdentityProvider
from gateway.devtools.stack import free_port, sample_policy_modules
from tests.support import pg
from tests.support.procs import ManagedProcess

__all__ = [
    "Cluster",
    "ControlPlane",
    "DataPlane",
    "GatewayProcess",
    "LoadBalancer",
    "Served",
    "poll_until",
]

STATELESS = "2026-07-28"
"""The MCP revision of the stateless era (no handshake, no session: any data plane can answer)."""

_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
"""RFC 9110 §7.6.1 connection-specific fields: never forwarded by a proxy."""


def poll_until(what: str, probe: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05) -> Any:
    """Call ``probe`` until it returns something truthy; return that (bounded, no fixed sleep).

    Raises:
        TimeoutError: ``probe`` stayed falsy for ``timeout`` seconds; the message names ``what``
            and the last value.
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = probe()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what}: not reached after {timeout:.0f}s (last: {last!r})")
        time.sleep(interval)


# --------------------------------------------------------------------------- load balancer


@dataclass(frozen=True)
class Served:
    """One request the balancer forwarded: the backend that answered (``None`` when none could),
    method, path with query, HTTP status (502 when no backend accepted the connection), and the
    JSON-RPC ``method`` of a JSON request body (``None`` otherwise)."""

    backend: str | None
    method: str
    path: str
    status: int
    rpc: str | None = None


@dataclass
class _Backend:
    name: str
    url: str
    down: bool = False


class LoadBalancer:
    """A round-robin HTTP reverse proxy on ``127.0.0.1:<port>`` (aiohttp, in its own thread).

    * Round-robin per request over the backends not marked down, in the order they were added;
      not sticky: consecutive requests of one client (even of one MCP session) alternate.
    * A backend refusing the TCP connection (nothing was sent) is skipped and the next one
      tried; any other failure (reset, timeout, a backend dying mid-request or mid-response)
      is passed on to the client as such (502 before the response started, a cut stream
      after), never retried.
    * Request and response headers are forwarded both ways unchanged (``Host``,
      ``Authorization``, ``Mcp-Session-Id``, ``Last-Event-ID``, ``traceparent``, ``ETag``, ...)
      except RFC 9110 hop-by-hop fields. Bodies are not decompressed.
    * Responses stream: every chunk the backend sends is written to the client at once (SSE
      passes through unbuffered). A client disconnecting cancels the backend request.
    * One new backend connection per request (no pooling), so "refused" is exact after a kill.

    Control (thread-safe, callable from tests): :meth:`add`, :meth:`remove`, :meth:`mark_down`,
    :meth:`mark_up`, :meth:`pin`, :meth:`route_next`, :meth:`round_robin`; :attr:`served` and
    :meth:`counts` record which backend served each request.
    """

    def __init__(self, name: str, backends: Iterable[tuple[str, str]] = (), port: int | None = None) -> None:
        self.name = name
        self.port = port or free_port()
        self._backends: list[_Backend] = [_Backend(n, u.rstrip("/")) for n, u in backends]
        self._lock = threading.Lock()
        self._next = 0
        self._pinned: str | None = None
        self._once: collections.deque[str] = collections.deque()
        self.served: list[Served] = []
        """Every forwarded request, in completion order of its response head."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.port}"

    # ---------------------------------------------------------------- control
    @property
    def backends(self) -> list[str]:
        """Names of every backend (down ones included), in round-robin order."""
        with self._lock:
            return [b.name for b in self._backends]

    def add(self, name: str, url: str) -> None:
        """Add a backend (or point an existing name at ``url`` and mark it up)."""
        with self._lock:
            for b in self._backends:
                if b.name == name:
                    b.url, b.down = url.rstrip("/"), False
                    return
            self._backends.append(_Backend(name, url.rstrip("/")))

    def remove(self, name: str) -> None:
        """Forget a backend (no error when unknown)."""
        with self._lock:
            self._backends = [b for b in self._backends if b.name != name]

    def mark_down(self, name: str) -> None:
        """Stop routing to ``name`` (kept in the list; :meth:`mark_up` routes to it again)."""
        self._find(name).down = True

    def mark_up(self, name: str) -> None:
        self._find(name).down = False

    def pin(self, name: str) -> None:
        """Route every request to ``name`` until :meth:`round_robin` (no skipping when refused)."""
        self._find(name)
        with self._lock:
            self._pinned = name

    def route_next(self, *names: str) -> None:
        """Route the next ``len(names)`` requests to these backends, in order; then round-robin."""
        for n in names:
            self._find(n)
        with self._lock:
            self._once.extend(names)

    def round_robin(self) -> None:
        """Undo :meth:`pin` and :meth:`route_next`."""
        with self._lock:
            self._pinned = None
            self._once.clear()

    def counts(self, since: int = 0, *, rpc: str | None = None) -> collections.Counter[str | None]:
        """Requests served per backend name, over :attr:`served` from index ``since`` on (only
        those of JSON-RPC method ``rpc``, when given)."""
        with self._lock:
            return collections.Counter(s.backend for s in self.served[since:] if rpc is None or s.rpc == rpc)

    def mark(self) -> int:
        """An index into :attr:`served` to pass to :meth:`counts` later (requests after now)."""
        with self._lock:
            return len(self.served)

    def _find(self, name: str) -> _Backend:
        with self._lock:
            for b in self._backends:
                if b.name == name:
                    return b
        raise KeyError(f"{self.name}: no backend {name!r} (have {self.backends})")

    def _candidates(self) -> list[_Backend]:
        """Backends to try for one request, first choice first."""
        with self._lock:
            if self._once:
                name = self._once.popleft()
                return [b for b in self._backends if b.name == name]
            if self._pinned is not None:
                return [b for b in self._backends if b.name == self._pinned]
            up = [b for b in self._backends if not b.down]
            if not up:
                return []
            start = self._next % len(up)
            self._next += 1
            return up[start:] + up[:start]

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> LoadBalancer:
        """Listen (returns once the port accepts connections)."""
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._start())
            except BaseException as exc:  # noqa: BLE001 - reported to start()
                failure.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._shutdown())
            loop.close()

        self._thread = threading.Thread(target=run, name=f"lb-{self.name}", daemon=True)
        self._thread.start()
        ready.wait(10)
        if failure:
            raise failure[0]
        return self

    def close(self) -> None:
        """Stop listening and cut every open connection (idempotent)."""
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._thread = None

    def __enter__(self) -> LoadBalancer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def _start(self) -> None:
        connector = aiohttp.TCPConnector(force_close=True, limit=0)
        self._session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None, connect=5, sock_read=None),
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        # aiohttp re-sends an idempotent request once when the connection drops after sending
        # (RFC 9112 §9.3.1.1); a balancer must not: a backend killed mid-request is the client's
        # to see. No public switch: aiohttp's own test client clears this attribute too.
        self._session._retry_connection = False
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # Request bodies pass through as sent (OPA gzips its decision logs: Content-Encoding stays).
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None, auto_decompress=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, shutdown_timeout=0.5).start()

    async def _shutdown(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    def _record(self, backend: str | None, request: web.Request, status: int, body: bytes) -> None:
        rpc = None
        if body[:1] == b"{" and len(body) <= 1024 * 1024:
            with contextlib.suppress(ValueError):
                method = json.loads(body).get("method")
                rpc = method if isinstance(method, str) else None
        with self._lock:
            self.served.append(Served(backend, request.method, request.path_qs, status, rpc))

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        body = await request.read()
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP | {"content-length"}]
        skip = {"User-Agent", "Accept", "Accept-Encoding", "Content-Type"}  # forward only what the client sent
        for backend in self._candidates():
            try:
                upstream = await self._session.request(
                    request.method,
                    backend.url + request.path_qs,
                    headers=headers,
                    data=body if body else None,
                    allow_redirects=False,
                    skip_auto_headers=skip,
                )
            except aiohttp.ClientConnectorError as exc:
                if isinstance(exc.os_error, ConnectionRefusedError):
                    continue  # nothing was sent: the next backend may take it
                self._record(backend.name, request, 502, body)
                return web.Response(status=502, text=f"{self.name}: {backend.name}: {exc}")
            except aiohttp.ClientError as exc:
                self._record(backend.name, request, 502, body)
                return web.Response(status=502, text=f"{self.name}: {backend.name}: {exc}")
            async with upstream:
                self._record(backend.name, request, upstream.status, body)
                response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
                for k, v in upstream.headers.items():
                    if k.lower() not in _HOP_BY_HOP:
                        response.headers.add(k, v)
                await response.prepare(request)
                # A backend dying mid-body raises here: aiohttp then drops the client
                # connection, so the client sees a cut stream, not a complete response.
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
                return response
        self._record(None, request, 502, body)
        return web.Response(status=502, text=f"{self.name}: no backend accepted the connection")


# --------------------------------------------------------------------------- processes


class GatewayProcess:
    """One ``gateway serve --plane <plane>`` process, restartable with the same identity.

    Attributes:
        name: Process and load-balancer backend name (``cp-1``, ``dp-2``, ...).
        port: The plane's listen port.
        env: The environment it runs with (``GATEWAY_*`` on top of ``os.environ``).
        proc: The current :class:`ManagedProcess` (a new one per start; logs in ``log_dir``).
    """

    plane = "both"

    def __init__(self, name: str, port: int, env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.port = port
        self.env = env
        self.log_dir = log_dir
        self.proc: ManagedProcess | None = None

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>`` (the process itself, not a load balancer)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def ready_url(self) -> str:
        raise NotImplementedError

    def spawn(self) -> GatewayProcess:
        """Start the process (returns at once; see :meth:`wait_ready`)."""
        if self.running:
            raise RuntimeError(f"{self.name} is running")
        argv = [sys.executable, "-m", "gateway", "serve", "--plane", self.plane]
        self.proc = ManagedProcess(self.name, argv, log_dir=self.log_dir, env=self.env, cwd=PROJECT_ROOT).start()
        return self

    def wait_ready(self, timeout: float = 30) -> None:
        """Wait until the plane answers its readiness probe (bounded; raises with the log tail)."""
        assert self.proc is not None
        self.proc.wait_http(self.ready_url, timeout, ok=lambda s: s < 500, headers=self._probe_headers())

    def _probe_headers(self) -> dict[str, str]:
        return {}

    def start(self, timeout: float = 30) -> GatewayProcess:
        """Start a fresh process with the same name, port and environment; wait until ready."""
        self.spawn()
        self.wait_ready(timeout)
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.is_running()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def kill(self) -> None:
        """SIGKILL the process group at once (a crash: nothing is flushed, no goodbye); reap it."""
        if self.proc is None or self.proc.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.proc.wait(10)
        self.proc.stop()  # closes the log handle; the group is gone already

    def stop(self, grace: float = 10) -> int | None:
        """SIGTERM (graceful shutdown: drains, spools the audit queue), SIGKILL after ``grace`` s."""
        return None if self.proc is None else self.proc.stop(grace)

    def log(self) -> str:
        """Every log of this process so far (all restarts), oldest first."""
        paths = sorted(self.log_dir.glob(f"{self.name}*.log"), key=lambda p: p.stat().st_mtime)
        return "".join(p.read_text(errors="replace") for p in paths)


class ControlPlane(GatewayProcess):
    """``gateway serve --plane control`` (its port is ``GATEWAY_CONTROL_PORT``)."""

    plane = "control"

    def __init__(self, name: str, port: int, env: dict[str, str], log_dir: Path, admin_token: str) -> None:
        super().__init__(name, port, env, log_dir)
        self._admin_token = admin_token

    @property
    def ready_url(self) -> str:
        return f"{self.url}/v1/control-plane/scope"

    def _probe_headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self._admin_token}"}


class DataPlane(GatewayProcess):
    """``gateway serve --plane data`` with its OPA sidecar.

    Attributes:
        id: ``GATEWAY_DATAPLANE_ID`` (also its load-balancer backend name).
        opa_port: Where its supervised OPA listens.
        run_dir: Its own ``GATEWAY_RUN_DIR`` (audit spool, OPA work directory).
    """

    plane = "data"

    def __init__(self, name: str, port: int, env: dict[str, str], log_dir: Path, opa_port: int, run_dir: Path) -> None:
        super().__init__(name, port, env, log_dir)
        self.opa_port = opa_port
        self.run_dir = run_dir

    @property
    def id(self) -> str:
        return self.name

    @property
    def ready_url(self) -> str:
        return f"{self.url}/healthz"

    def readyz(self) -> dict[str, Any]:
        """``GET /readyz`` of this data plane (directly): ``{"status", "projection_version", ...}``."""
        try:
            resp = httpx.get(f"{self.url}/readyz", timeout=5)
        except httpx.HTTPError as exc:
            return {"status": "unreachable", "error": type(exc).__name__}
        return resp.json()  # type: ignore[no-any-return]

    @property
    def spool(self) -> Path:
        """The audit spool file this data plane appends to while the control plane is away."""
        return self.run_dir / "audit-spool" / f"{self.id}.jsonl"


# --------------------------------------------------------------------------- the cluster


def _write_secret(path: Path, data: bytes) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    return path


def _shared_keys(key_dir: Path) -> dict[str, Path]:
    """Generate the keys every control plane must share (once per cluster): bundle signing
    (RSA 2048: deterministic signatures, so both control planes serve identical bundles) and
    its public half, audit checkpoint signing (Ed25519), the credentials KEK (32 random bytes)."""
    key_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    bundle = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pkcs8 = (serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    spki = (serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    audit = ed25519.Ed25519PrivateKey.generate()
    return {
        "bundle": _write_secret(key_dir / "bundle-signing.pem", bundle.private_bytes(*pkcs8)),
        "bundle_pub": _write_secret(key_dir / "bundle-signing.pub.pem", bundle.public_key().public_bytes(*spki)),
        "audit": _write_secret(key_dir / "audit-signing.pem", audit.private_bytes(*pkcs8)),
        "kek": _write_secret(key_dir / "credentials.kek", base64.b64encode(secrets.token_bytes(32)) + b"\n"),
    }


@dataclass
class Cluster:
    """A running scaled-out gateway; build it with :meth:`start` (a context manager).

    Attributes:
        run_dir: Logs (``run_dir/logs/<process>.log``), keys, the IdP and per-process run dirs.
        database_url: The cluster's own throwaway database.
        lb: The data-plane load balancer; :attr:`lb_url` is what clients use.
        control_lb: The control-plane load balancer (data planes' and OPAs'
            ``GATEWAY_CONTROL_URL``), or None with a single control plane.
        control_planes: ``cp-1``, ``cp-2``, ... in start order.
        dataplanes: ``dp-1``, ``dp-2``, ... in start order (killed ones stay listed).
        idp: The development identity provider whose JWKS every data plane trusts.
    """

    run_dir: Path
    database_url: str
    opa_bin: str
    idp: DevIdentityProvider
    admin_token: str
    internal_token: str
    opa_token: str
    keys: dict[str, Path]
    lb: LoadBalancer
    control_lb: LoadBalancer | None
    upstream_port: int
    control_planes: list[ControlPlane] = field(default_factory=list)
    dataplanes: list[DataPlane] = field(default_factory=list)
    upstream: ManagedProcess | None = None
    dataplane_env: dict[str, str] = field(default_factory=dict)
    """Extra environment for every data plane started from now on."""

    # ---------------------------------------------------------------- construction
    @classmethod
    @contextlib.contextmanager
    def start(
        cls,
        run_dir: Path,
        pg_admin_url: str,
        opa_bin: str | os.PathLike[str],
        *,
        control_planes: int = 1,
        data_planes: int = 2,
        control_lb: bool | None = None,
        dataplane_env: Mapping[str, str] | None = None,
        control_env: Mapping[str, str] | None = None,
    ) -> Iterator[Cluster]:
        """Start a cluster; stop everything and drop its database on exit.

        Every process starts at once (control planes' migrations serialise on their advisory
        lock; data planes retry the control plane until it answers). Nothing is approved yet
        (see :meth:`approve_sample`).

        Args:
            control_lb: Put a load balancer in front of the control planes (default: when
                there is more than one); data planes and their OPAs then use it.
            dataplane_env / control_env: Extra environment per plane (e.g.
                ``GATEWAY_SSE_POLL_INTERVAL``).
        """
        run_dir.mkdir(parents=True, exist_ok=True)
        with contextlib.ExitStack() as stack:
            database_url = stack.enter_context(pg.throwaway_database(pg_admin_url, prefix="gwscale_"))
            lb = stack.enter_context(LoadBalancer("data"))
            use_control_lb = control_planes > 1 if control_lb is None else control_lb
            clb = stack.enter_context(LoadBalancer("control")) if use_control_lb else None
            admin_token = secrets.token_urlsafe(24)
            cluster = cls(
                run_dir=run_dir,
                database_url=database_url,
                opa_bin=os.fspath(opa_bin),
                idp=DevIdentityProvider.create(run_dir / "idp", "http://127.0.0.1/dev-idp"),
                admin_token=admin_token,
                internal_token=secrets.token_urlsafe(24),
                opa_token=secrets.token_urlsafe(24),
                keys=_shared_keys(run_dir / "keys"),
                lb=lb,
                control_lb=clb,
                upstream_port=free_port(),
                dataplane_env=dict(dataplane_env or {}),
            )
            stack.callback(cluster._stop_all)
            cluster._start_upstream()
            for _ in range(control_planes):
                cluster.add_control_plane(wait=False, env=control_env)
            for _ in range(data_planes):
                cluster.add_dataplane(wait=False)
            cluster.upstream_wait()
            for p in [*cluster.control_planes, *cluster.dataplanes]:
                p.wait_ready(60)
            yield cluster

    def _stop_all(self) -> None:
        # Data planes first (they hold connections to the rest), then control planes, upstream.
        for p in [*reversed(self.dataplanes), *reversed(self.control_planes)]:
            with contextlib.suppress(Exception):
                p.stop(grace=5)
        if self.upstream is not None:
            self.upstream.stop()

    @property
    def log_dir(self) -> Path:
        return self.run_dir / "logs"

    @property
    def lb_url(self) -> str:
        """The one address clients use (the data-plane load balancer)."""
        return self.lb.url

    @property
    def audience(self) -> str:
        """``<lb_url>/mcp``: the ``aud`` every data plane accepts."""
        return f"{self.lb_url}/mcp"

    @property
    def control_url(self) -> str:
        """What data planes and OPA use to reach the control plane(s): the control LB, if any."""
        return self.control_lb.url if self.control_lb is not None else self.control_planes[0].url

    @property
    def upstream_url(self) -> str:
        return f"http://127.0.0.1:{self.upstream_port}/mcp"

    def _common_env(self, control_url: str | None = None) -> dict[str, str]:
        return {
            "GATEWAY_INTERNAL_TOKEN": self.internal_token,
            "GATEWAY_OPA_TOKEN": self.opa_token,
            "GATEWAY_CONTROL_URL": control_url or self.control_url,
            "GATEWAY_JWT_ISSUER": self.idp.issuer,
            "GATEWAY_JWT_AUDIENCE": self.audience,
            "GATEWAY_JWKS_URL": self.idp.jwks_url,
            "OPA_BIN": self.opa_bin,
        }

    def _start_upstream(self) -> None:
        script = PROJECT_ROOT / "deploy" / "demo" / "sample_upstream.py"
        argv = [sys.executable, str(script), "--host", "127.0.0.1", "--port", str(self.upstream_port)]
        self.upstream = ManagedProcess("upstream", argv, log_dir=self.log_dir).start()

    def upstream_wait(self) -> None:
        assert self.upstream is not None
        self.upstream.wait_http(f"http://127.0.0.1:{self.upstream_port}/_health", 20)

    def add_control_plane(self, *, wait: bool = True, env: Mapping[str, str] | None = None) -> ControlPlane:
        """Start one more control plane on the shared database, keys and tokens (added to the
        control LB, if any)."""
        name = f"cp-{len(self.control_planes) + 1}"
        port = free_port()
        cp_run = self.run_dir / name
        cp_run.mkdir(parents=True, exist_ok=True)
        own_url = f"http://127.0.0.1:{port}"
        process_env = {
            **self._common_env(self.control_lb.url if self.control_lb is not None else own_url),
            "DATABASE_URL": self.database_url,
            "GATEWAY_ADMIN_TOKEN": self.admin_token,
            "GATEWAY_CONTROL_PORT": str(port),
            "GATEWAY_RUN_DIR": str(cp_run),
            "GATEWAY_BUNDLE_SIGNING_KEY_FILE": str(self.keys["bundle"]),
            "GATEWAY_AUDIT_SIGNING_KEY_FILE": str(self.keys["audit"]),
            "GATEWAY_CREDENTIALS_KEK_FILE": str(self.keys["kek"]),
            **(env or {}),
        }
        cp = ControlPlane(name, port, process_env, self.log_dir, self.admin_token)
        self.control_planes.append(cp)
        cp.spawn()
        if self.control_lb is not None:
            self.control_lb.add(name, cp.url)
        if wait:
            cp.wait_ready()
        return cp

    def add_dataplane(self, *, wait: bool = True, env: Mapping[str, str] | None = None) -> DataPlane:
        """Start one more data plane (new id, port, OPA port and run dir) behind :attr:`lb`."""
        name = f"dp-{len(self.dataplanes) + 1}"
        port, opa_port = free_port(), free_port()
        dp_run = self.run_dir / name
        dp_run.mkdir(parents=True, exist_ok=True)
        process_env = {
            **self._common_env(),
            # Not needed by today's data plane; there for state kept in PostgreSQL (sessions).
            "DATABASE_URL": self.database_url,
            "GATEWAY_DATA_PORT": str(port),
            "GATEWAY_PUBLIC_URL": self.lb_url,
            "GATEWAY_DATAPLANE_ID": name,
            "GATEWAY_OPA_ADDR": f"127.0.0.1:{opa_port}",
            "GATEWAY_RUN_DIR": str(dp_run),
            "GATEWAY_BUNDLE_VERIFICATION_KEYS": str(self.keys["bundle_pub"]),
            **self.dataplane_env,
            **(env or {}),
        }
        dp = DataPlane(name, port, process_env, self.log_dir, opa_port, dp_run)
        self.dataplanes.append(dp)
        dp.spawn()
        self.lb.add(name, dp.url)
        if wait:
            dp.wait_ready()
        return dp

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop_all()

    # ---------------------------------------------------------------- clients
    def mint(self, sub: str, roles: list[str], **claims: Any) -> str:
        """A bearer JWT of the dev IdP for ``sub`` with ``roles``, audience ``<lb_url>/mcp``."""
        return self.idp.mint(sub, roles, self.audience, **claims)

    def client(self, token: str, *, mode: str = STATELESS, path: str = "/mcp", url: str | None = None) -> Client:
        """An ``mcp`` SDK client through the data-plane LB (or ``url``), stateless by default
        (``mode="legacy"`` for a 2025-11-25 session)."""
        http = httpx2.AsyncClient(headers={"authorization": f"Bearer {token}"}, timeout=httpx2.Timeout(30, read=60))
        return Client(streamable_http_client(f"{url or self.lb_url}{path}", http_client=http), mode=mode)

    @property
    def admin_headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.admin_token}"}

    def admin(
        self,
        method: str,
        path: str,
        json: Any = None,
        *,
        via: ControlPlane | None = None,
        expect: int | tuple[int, ...] = (200, 201),
    ) -> Any:
        """Call the admin API on ``via`` (default: the first running control plane); raise with
        the body on an unexpected status."""
        cp = via or next(c for c in self.control_planes if c.running)
        resp = httpx.request(method, f"{cp.url}{path}", json=json, headers=self.admin_headers, timeout=30)
        allowed = (expect,) if isinstance(expect, int) else expect
        if resp.status_code not in allowed:
            raise RuntimeError(f"{method} {cp.name}{path} -> {resp.status_code}: {resp.text}")
        return resp.json() if resp.content else None

    def register_and_approve_server(self, name: str, url: str, *, via: ControlPlane | None = None) -> Any:
        """``POST /v1/servers`` then ``POST /v1/servers/{name}/approve`` (streamable HTTP)."""
        body = {"name": name, "transport": "streamable_http", "url": url, "description": "scale-out test"}
        self.admin("POST", "/v1/servers", body, via=via)
        return self.admin("POST", f"/v1/servers/{name}/approve", {"comment": "reviewed"}, via=via)

    def approve_policy(
        self, modules: dict[str, str] | None = None, data: Any = None, *, via: ControlPlane | None = None
    ) -> int:
        """Upload and approve a policy version (default: the sample policy); return its number."""
        body: dict[str, Any] = {"modules": modules or sample_policy_modules()}
        if data is not None:
            body["data"] = data
        version = int(self.admin("POST", "/v1/policies", body, via=via)["version"])
        self.admin("POST", f"/v1/policies/{version}/approve", {"comment": "reviewed"}, via=via)
        return version

    def approve_sample(self) -> dict[str, Any]:
        """Register and approve the sample upstream as ``demo`` and the sample policy; wait until
        every data plane and OPA runs the result (see :meth:`wait_converged`)."""
        self.register_and_approve_server("demo", self.upstream_url)
        self.approve_policy()
        return self.wait_converged()

    def projection(self, *, via: ControlPlane | None = None) -> dict[str, Any]:
        """``GET /v1/projection`` (the rollout view)."""
        return self.admin("GET", "/v1/projection", via=via)  # type: ignore[no-any-return]

    def desired_version(self) -> int:
        return int(self.projection()["desired_version"])

    def live_dataplanes(self) -> list[DataPlane]:
        return [dp for dp in self.dataplanes if dp.running]

    def converged(self, version: int, state: dict[str, Any]) -> bool:
        """True when ``state`` (a ``/v1/projection``) shows ``version`` desired and active on every
        running data plane and on each one's live OPA, and each data plane's ``/readyz`` agrees."""
        if state.get("desired_version") != version:
            return False
        dps = {d["id"]: d for d in state["data_planes"]}
        for dp in self.live_dataplanes():
            row = dps.get(dp.id)
            if row is None or row["active_version"] != version or not row["live"]:
                return False
            opas = [o for o in state["opa"] if o["dataplane_id"] == dp.id and o["live"]]
            if not any(o["active_version"] == version for o in opas):
                return False
            ready = dp.readyz()
            if ready.get("status") != "ready" or ready.get("projection_version") != version:
                return False
        return True

    def wait_converged(self, version: int | None = None, timeout: float = 30) -> dict[str, Any]:
        """Poll ``GET /v1/projection`` until :meth:`converged` (``version`` default: the desired
        one); return the last state.

        Raises:
            TimeoutError: with the last state.
        """
        target = version or self.desired_version()
        last: list[dict[str, Any]] = [{}]

        def probe() -> bool:
            last[0] = self.projection()
            return self.converged(target, last[0])

        try:
            poll_until(f"projection {target} on every data plane and OPA", probe, timeout)
        except TimeoutError as exc:
            brief = {k: v for k, v in last[0].items() if k != "policy_capabilities"}
            raise TimeoutError(f"{exc}; last /v1/projection: {brief}") from None
        return last[0]

    def audit_decisions(self, **filters: str) -> list[dict[str, Any]]:
        """Every ``GET /v1/audit/decisions`` item matching ``filters`` (all pages)."""
        items: list[dict[str, Any]] = []
        params = {**filters, "limit": "500"}
        while True:
            page = httpx.get(
                f"{self.control_planes_running()[0].url}/v1/audit/decisions",
                params=params,
                headers=self.admin_headers,
                timeout=30,
            )
            page.raise_for_status()
            body = page.json()
            items.extend(body["items"])
            if not body.get("next_cursor"):
                return items
            params["cursor"] = body["next_cursor"]

    def control_planes_running(self) -> list[ControlPlane]:
        return [c for c in self.control_planes if c.running]
