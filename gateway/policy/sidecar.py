"""Start and supervise the OPA sidecar (``opa run --server``) as a child process.

OPA pulls its bundle from the control plane with the bundle protocol (long
polling), reports status and uploads decision logs there, with the OPA token
(``control_plane.opa_token``), which opens nothing else. OPA activates only bundles
signed by one of the configured verification keys (``keys`` and the bundle's
``signing`` section, :mod:`gateway.policy.bundle_signing`). Source: OPA
configuration reference ("services", "bundles", "status", "decision_logs", "keys").
Readiness is checked by :mod:`gateway.policy.health`.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import anyio
import orjson

from gateway.config import Config
from gateway.policy.bundle_signing import SigningKeyError, VerificationKey, opa_keys_config, verification_keys
from gateway.policy.health import OpaHealth

__all__ = ["OPA_TOKEN_FILE", "OpaSidecar", "die_with_parent", "opa_config", "sidecar_environment", "stop_process"]

log = logging.getLogger("gateway.opa")

OPA_TOKEN_FILE = "opa-token"
"""Name, in the OPA work directory (mode 0600), of the file holding the OPA token."""


def opa_config(
    config: Config, token_path: str, instance_id: str = "", keys: Iterable[VerificationKey] = ()
) -> dict[str, Any]:
    """The OPA configuration document (JSON is valid YAML for ``opa run -c``).

    Args:
        config: Gateway configuration.
        token_path: File holding the OPA token (``control_plane.opa_token``: it opens the
            control plane's ``/v1/opa/*`` only, never the data planes' API nor the credential
            broker); re-read by OPA on every request, so it never appears on a command line.
        instance_id: This OPA process's id (label ``gateway_instance``), under which the
            control plane files its status reports; fresh for every (re)start. The label
            ``decision_engine`` (``sidecar`` or ``embedded``) rides on every status report and
            decision log.
        keys: The bundle verification keys (:func:`gateway.policy.bundle_signing.verification_keys`).
            The bundle's ``signing`` section is always present, without a ``keyid``: OPA then
            requires a ``.signatures.json`` and picks the key by the JWS ``kid``, so several keys
            can be trusted at once (rotation). With no key at all OPA refuses every bundle.
    """
    opa = config.opa
    return {
        "labels": {
            "gateway_instance": instance_id,
            "gateway_dataplane": config.data_plane.id,
            "decision_engine": config.opa.engine,
            "tenant": config.tenant,
            "environment": config.environment,
        },
        "keys": opa_keys_config(keys),
        "services": {
            "control_plane": {
                "url": f"{config.control_plane.url}/v1/opa",
                "credentials": {"bearer": {"token_path": token_path}},
                "response_header_timeout_seconds": opa.long_poll_timeout + 10,
            }
        },
        "bundles": {
            opa.bundle_name: {
                "service": "control_plane",
                "resource": f"bundles/{opa.bundle_name}",
                # Not persisted: revisions ("p<N>") are only unique within one database, so a
                # bundle kept on disk could be mistaken for a different projection of the same N.
                "persist": False,
                "signing": {},
                "polling": {
                    "min_delay_seconds": 1,
                    "max_delay_seconds": 3,
                    "long_polling_timeout_seconds": opa.long_poll_timeout,
                },
            }
        },
        "status": {"service": "control_plane"},
        "decision_logs": {
            "service": "control_plane",
            "resource": "/logs",
            "reporting": {
                "buffer_type": "event",
                "min_delay_seconds": opa.decision_log_min_delay,
                "max_delay_seconds": opa.decision_log_max_delay,
                "upload_size_limit_bytes": 1048576,
            },
        },
    }


def sidecar_environment(work_dir: str) -> dict[str, str]:
    """The whole environment ``opa run`` gets: nothing inherited from the gateway.

    The gateway's own environment holds the admin token and ``DATABASE_URL``; OPA needs
    none of it (its configuration is a file, the OPA token a ``token_path``). Even
    though policy versions may not call ``opa.runtime()`` (restricted capabilities), the
    sidecar is started as if they could. ``HOME`` and ``TMPDIR`` point at its own work
    directory; ``PATH`` is the OS default.

    Returns:
        ``{"PATH": os.defpath, "HOME": work_dir, "TMPDIR": work_dir, "LANG": "C.UTF-8"}``.
    """
    return {"PATH": os.defpath, "HOME": work_dir, "TMPDIR": work_dir, "LANG": "C.UTF-8"}


_PRCTL: Any
try:  # resolved in the parent: the forked child only makes the call
    _PRCTL = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # pragma: no cover - not Linux
    _PRCTL = None
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGTERM)


die_with_parent = _die_with_parent
"""``preexec_fn`` for supervised children: SIGTERM when the gateway process dies (Linux)."""


def stop_process(proc: subprocess.Popen[bytes] | None, grace: float = 5.0) -> None:
    """Terminate a supervised child: SIGTERM, then SIGKILL after ``grace`` seconds; nothing
    when it is None or has already exited."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class OpaSidecar:
    """A supervised ``opa run --server`` process.

    ``run()`` keeps OPA alive until cancelled: it restarts it with backoff when
    it exits. The data plane denies every request while OPA is down
    (``policy_unavailable``), so a crash fails closed.
    """

    def __init__(self, config: Config, on_start: Callable[[str], None] | None = None) -> None:
        self._config = config
        self._on_start = on_start
        self.instance_id = ""
        """Id of the current OPA process (label ``gateway_instance``); a new one per (re)start."""
        self._health = OpaHealth(config.opa.url)
        self._proc: subprocess.Popen[bytes] | None = None
        self._bundle_active = False
        self.restarts = 0

    def _prepare(self) -> list[str]:
        """Write the token and a configuration for a fresh :attr:`instance_id`; return the argv.

        The verification keys are read here, so a (re)start picks up changed key files.

        Raises:
            SigningKeyError: A configured verification key cannot be read or parsed.
        """
        self.instance_id = f"{self._config.data_plane.id}/{uuid.uuid4()}"
        work = Path(self._config.opa.work_dir)
        work.mkdir(parents=True, exist_ok=True)
        # Only the OPA token: the internal token (the data planes', which opens the credential
        # broker) never reaches OPA. Earlier versions wrote that one here: removed.
        (work / "internal-token").unlink(missing_ok=True)
        token_file = work / OPA_TOKEN_FILE
        fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(self._config.control_plane.opa_token.reveal())
        cfg_file = work / "opa-config.json"
        keys = verification_keys(self._config)
        if not keys:
            log.error(
                "no bundle verification key (GATEWAY_BUNDLE_VERIFICATION_KEYS, or the development key of a control "
                "plane sharing %s): OPA will refuse every bundle",
                self._config.run_dir,
            )
        document = opa_config(self._config, str(token_file), self.instance_id, keys)
        cfg_file.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2))
        return [
            self._config.opa.bin,
            "run",
            "--server",
            "--addr",
            self._config.opa.addr,
            "--config-file",
            str(cfg_file),
            "--log-level",
            "error",
            "--skip-version-check",
        ]

    def bundle_active(self) -> bool:
        """True once the running OPA process has activated the bundle (``/health?bundles``).

        The data plane sends no decision to an OPA that has not: before activation
        it has neither the policy nor the ``system.log.mask`` rule, so a decision
        would be undefined (a deny) *and* logged with raw arguments.
        """
        return self._bundle_active

    async def run(self) -> None:
        """Run and restart OPA until cancelled; kills it on cancellation."""
        log_path = Path(self._config.opa.work_dir) / "opa.log"
        backoff = 0.2
        try:
            while True:
                self._bundle_active = False
                try:
                    argv = self._prepare()
                except SigningKeyError as exc:  # fail closed (no OPA, every call denied) until it is fixed
                    log.error("cannot start the opa sidecar: %s; retrying in %.1fs", exc, backoff)
                    await anyio.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
                    continue
                if self._on_start is not None:
                    self._on_start(self.instance_id)
                with open(log_path, "ab") as logf:
                    # Own session: a signal to the gateway's process group does not
                    # kill OPA behind the supervisor's back; PDEATHSIG ends OPA if the
                    # gateway itself dies without stopping it.
                    self._proc = subprocess.Popen(
                        argv,
                        stdout=logf,
                        stderr=subprocess.STDOUT,
                        env=sidecar_environment(self._config.opa.work_dir),
                        start_new_session=True,
                        preexec_fn=_die_with_parent,
                    )
                log.info("opa sidecar started pid=%s addr=%s", self._proc.pid, self._config.opa.addr)
                while self._proc.poll() is None:
                    if not self._bundle_active:
                        self._bundle_active = await self._health.bundles_ready()
                        if self._bundle_active:
                            log.info("opa sidecar pid=%s activated its bundle", self._proc.pid)
                    await anyio.sleep(0.2 if self._bundle_active else 0.02)
                    backoff = 0.2
                self._bundle_active = False
                log.error("opa sidecar exited with %s; restarting in %.1fs", self._proc.returncode, backoff)
                self.restarts += 1
                await anyio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
        finally:
            self.stop()
            self._health.close()

    def stop(self) -> None:
        """Terminate the OPA process (SIGTERM, then SIGKILL after 5 s)."""
        proc, self._proc = self._proc, None
        self._bundle_active = False
        stop_process(proc)
