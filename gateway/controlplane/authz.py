"""The admin API's authorization decisions, made by the control plane's own OPA.

The policy is ``policies/controlplane/`` (package ``gateway.controlplane.authz``, tests in
``rego_tests/controlplane/``), versioned with the gateway. One ``opa run --server`` per
control-plane process serves it (:class:`ControlPlaneOpa`): started on first use, listening
only on a Unix socket in a fresh 0700 directory (no TCP port another local process could
reach or squat), loaded as a bundle (``-b``) so its REST API refuses policy and
data writes, with decision logging on so every decision has an OPA ``decision_id`` (the
console log is appended to ``<run_dir>/controlplane-opa.log``), a minimal environment,
killed with the process (its directory, holding the socket and the policy copy, removed).

Decision API (OPA REST API, "Get a Document (with Input)")::

    POST /v1/data/gateway/controlplane/authz/decision
    {"input": {"actor": {"subject", "issuer", "roles": [...], "bootstrap": bool},
               "request": {"method", "path", "action"},
               "resource"?: {"kind", "id", "author"}}}
    -> {"result": {"allow": bool, "reasons": [str]}, "decision_id": str}

OPA unreachable, or an undefined or malformed result: :class:`~gateway.errors.PolicyUnavailable`
(503): the admin API fails closed like the data plane.

:data:`ACTIONS` names the action of every admin route (method, path template); a route
missing from it is refused (``unknown``) by the policy.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
from starlette.routing import compile_path

from gateway.config import PROJECT_ROOT, Config
from gateway.errors import PolicyUnavailable
from gateway.policy.sidecar import die_with_parent, sidecar_environment, stop_process

__all__ = ["ACTIONS", "ControlPlaneOpa", "Decision", "action_for", "shared_engine"]

log = logging.getLogger(__name__)

POLICY_DIR = PROJECT_ROOT / "policies" / "controlplane"
DECISION_PATH = "/v1/data/gateway/controlplane/authz/decision"
TIMEOUT = 5.0
"""Seconds for one decision."""

ACTIONS: dict[tuple[str, str], str] = {
    ("GET", "/v1/control-plane/scope"): "scope.read",
    ("GET", "/v1/servers"): "servers.read",
    ("POST", "/v1/servers"): "servers.register",
    ("GET", "/v1/servers/{name}"): "servers.read",
    ("POST", "/v1/servers/{name}/approve"): "servers.approve",
    ("GET", "/v1/servers/{name}/drift"): "servers.read",
    # API sources are upstreams too: the same registry actions (register, read, approve).
    ("GET", "/v1/api-sources"): "servers.read",
    ("POST", "/v1/api-sources"): "servers.register",
    ("GET", "/v1/api-sources/{name}"): "servers.read",
    ("POST", "/v1/api-sources/{name}/approve"): "servers.approve",
    ("GET", "/v1/policies"): "policies.read",
    ("POST", "/v1/policies"): "policies.upload",
    ("GET", "/v1/policies/{version}"): "policies.read",
    ("POST", "/v1/policies/{version}/approve"): "policies.approve",
    ("GET", "/v1/policies/{a}/diff/{b}"): "policies.read",
    ("POST", "/v1/policies/{version}/replay"): "policies.replay",
    ("POST", "/v1/policies/{candidate}/replay"): "policies.replay",
    ("GET", "/v1/policies/{version}/replays"): "policies.read",
    ("GET", "/v1/policies/{candidate}/replays"): "policies.read",
    ("GET", "/v1/policies/{version}/replays/{id}"): "policies.read",
    ("GET", "/v1/policies/{candidate}/replays/{id}"): "policies.read",
    ("GET", "/v1/projection"): "projection.read",
    ("GET", "/v1/audit/decisions"): "audit.read",
    ("GET", "/v1/audit/decisions/{decision_id}"): "audit.read",
    ("GET", "/v1/audit/control-plane"): "audit.read",
    ("GET", "/v1/audit/stats"): "audit.read",
    ("GET", "/v1/audit/export"): "audit.export",
    ("GET", "/v1/audit/verify"): "audit.verify",
    ("GET", "/v1/audit/checkpoints"): "audit.verify",
    ("POST", "/v1/audit/checkpoints"): "audit.verify",
    ("GET", "/v1/audit/partitions"): "audit.read",
    ("POST", "/v1/audit/retention"): "audit.retention",
    ("GET", "/v1/credentials"): "credentials.read",
    ("POST", "/v1/credentials"): "credentials.write",
    ("POST", "/v1/credentials/rewrap"): "credentials.write",
    ("GET", "/v1/credentials/{id}"): "credentials.read",
    ("DELETE", "/v1/credentials/{id}"): "credentials.write",
    ("POST", "/v1/credentials/{id}/rotate"): "credentials.write",
    ("GET", "/v1/credentials/{id}/uses"): "credentials.read",
    ("GET", "/v1/credential-bindings"): "credentials.read",
    ("POST", "/v1/credential-bindings"): "credentials.bind",
    ("DELETE", "/v1/credential-bindings/{id}"): "credentials.bind",
    ("GET", "/v1/api-keys"): "api_keys.read",
    ("POST", "/v1/api-keys"): "api_keys.write",
    ("DELETE", "/v1/api-keys/{id}"): "api_keys.write",
    ("GET", "/v1/admin/roles"): "roles.read",
    ("POST", "/v1/admin/roles"): "roles.write",
    ("DELETE", "/v1/admin/roles/{id}"): "roles.write",
    ("GET", "/v1/admin/whoami"): "scope.read",
}
"""Action of each admin route, by (method, Starlette path template). ``HEAD`` is ``GET``'s."""

_COMPILED = [(method, compile_path(path)[0], action) for (method, path), action in ACTIONS.items()]


def action_for(method: str, path: str) -> str | None:
    """The action of an admin request (``path`` relative to the control plane's mount), or
    None when no route has that path (the router answers 404 or 405)."""
    method = "GET" if method == "HEAD" else method
    matched_path = False
    for m, regex, action in _COMPILED:
        if regex.match(path):
            if m == method:
                return action
            matched_path = True
    return "unknown" if matched_path else None


@dataclass(frozen=True, slots=True)
class Decision:
    """One control-plane decision."""

    allow: bool
    reasons: tuple[str, ...]
    decision_id: str | None


class ControlPlaneOpa:
    """A supervised ``opa run --server`` serving ``policies/controlplane`` on loopback."""

    def __init__(self, opa_bin: str, log_path: Path) -> None:
        self._bin = opa_bin
        self._log = log_path
        self._proc: subprocess.Popen[bytes] | None = None
        self._socket = ""
        self._lock = threading.Lock()  # not an asyncio one: apps of several event loops share it
        self._ready = False
        self.restarts = 0

    def _start(self) -> None:
        work = Path(tempfile.mkdtemp(prefix="gw-cpopa-"))  # 0700, fresh: short enough for a socket path
        self._socket = str(work / "opa.sock")
        policy = work / "policy"
        policy.mkdir()
        for source in sorted(POLICY_DIR.glob("*.rego")):
            if not source.name.endswith("_test.rego"):
                shutil.copyfile(source, policy / source.name)
        argv = [
            self._bin, "run", "--server", "--addr", f"unix://{self._socket}", "--log-level", "error",
            "--skip-version-check", "--set", "decision_logs.console=true", "--bundle", str(policy),
        ]  # fmt: skip
        self._log.parent.mkdir(parents=True, exist_ok=True)
        logf = open(self._log, "ab")  # noqa: SIM115 - handed to the child
        try:
            self._proc = subprocess.Popen(
                argv,
                stdout=logf,
                stderr=subprocess.STDOUT,
                env=sidecar_environment(str(work)),
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
        finally:
            logf.close()
        log.info("control-plane opa started pid=%s socket=%s", self._proc.pid, self._socket)

    async def _ensure(self) -> str:
        """The running OPA's socket path, starting (or restarting) it first when needed.

        The process is started in the calling (event-loop) thread, never a worker thread:
        ``PR_SET_PDEATHSIG`` fires when the *thread* that forked the child ends, so a child of
        a pooled worker thread would be killed when that thread is reaped.
        """
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                if self._proc is not None:
                    self.restarts += 1
                    log.error("control-plane opa exited with %s; restarting", self._proc.returncode)
                    shutil.rmtree(os.path.dirname(self._socket), ignore_errors=True)
                self._ready = False
                self._start()
            socket_path, proc, ready = self._socket, self._proc, self._ready
        if ready:
            return socket_path
        assert proc is not None
        deadline = time.monotonic() + 15
        transport = httpx.AsyncHTTPTransport(
            uds=socket_path, verify=False
        )  # plain HTTP on a Unix socket: no CA bundle to load
        async with httpx.AsyncClient(transport=transport, base_url="http://opa", trust_env=False, timeout=1.0) as http:
            while True:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise PolicyUnavailable("the control plane's OPA did not start")
                try:
                    if (await http.get("/health")).status_code == 200:
                        self._ready = True
                        return socket_path
                except httpx.HTTPError:
                    pass
                await anyio.sleep(0.01)

    async def decide(self, input_doc: dict[str, Any]) -> Decision:
        """The decision for ``input_doc`` (module docstring).

        Raises:
            PolicyUnavailable: OPA is unreachable or answered no well-formed decision.
        """
        socket_path = await self._ensure()
        try:
            transport = httpx.AsyncHTTPTransport(
                uds=socket_path, verify=False
            )  # plain HTTP on a Unix socket: no CA bundle to load
            async with httpx.AsyncClient(
                transport=transport, base_url="http://opa", trust_env=False, timeout=TIMEOUT
            ) as http:
                resp = await http.post(DECISION_PATH, json={"input": input_doc})
            body = resp.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise PolicyUnavailable(f"the control plane's OPA failed ({type(exc).__name__})") from None
        result = body.get("result") if isinstance(body, dict) else None
        if resp.status_code != 200 or not isinstance(result, dict) or not isinstance(result.get("allow"), bool):
            raise PolicyUnavailable("the control plane's OPA answered no decision")
        reasons = result.get("reasons")
        decision_id = body.get("decision_id")
        return Decision(
            result["allow"],
            tuple(str(r) for r in reasons) if isinstance(reasons, list) else (),
            decision_id if isinstance(decision_id, str) else None,
        )

    def stop(self) -> None:
        """Terminate the OPA process (SIGTERM, then SIGKILL after 5 s)."""
        proc, self._proc = self._proc, None
        stop_process(proc)
        if self._socket:
            shutil.rmtree(os.path.dirname(self._socket), ignore_errors=True)


_engines: dict[tuple[str, str], ControlPlaneOpa] = {}


def shared_engine(config: Config) -> ControlPlaneOpa:
    """This process's engine for ``config``'s OPA binary and run dir (one per process: the
    control plane's apps share it; it stops when the process exits)."""
    log_path = Path(config.run_dir or PROJECT_ROOT / ".run") / "controlplane-opa.log"
    key = (config.opa.bin, str(log_path))
    engine = _engines.get(key)
    if engine is None:
        engine = _engines[key] = ControlPlaneOpa(config.opa.bin, log_path)
        atexit.register(engine.stop)
    return engine
