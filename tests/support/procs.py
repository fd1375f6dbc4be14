"""Managed subprocesses for integration tests.

Every process writes stdout+stderr to ``<log_dir>/<name>.log`` so a test can
inspect (or grep every log for a canary, see :mod:`tests.support.logs`).
All waits are bounded; failures raise :class:`ProcessStartError` with the log tail.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

from .ports import port_open

STOP_GRACE_SECONDS = 2.0
"""SIGKILL after this: test servers built on the SDK wait for open streams on SIGTERM, never exiting by themselves."""
_POLL_INTERVAL = 0.05
_MAX_POLL_INTERVAL = 0.25

# No proxies for loopback health checks, whatever the environment says.
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class ProcessStartError(RuntimeError):
    """A managed process died or did not become ready in time."""


def _unique_log_path(log_dir: Path, name: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "proc"
    path = log_dir / f"{safe}.log"
    n = 1
    while path.exists():
        path = log_dir / f"{safe}-{n}.log"
        n += 1
    return path


class ManagedProcess:
    """A subprocess with a log file, readiness waits and a bounded stop()."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str | os.PathLike[str]],
        *,
        log_dir: str | os.PathLike[str],
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        inherit_env: bool = True,
    ) -> None:
        self.name = name
        self.argv = [os.fspath(a) for a in argv]
        self.log_dir = Path(log_dir)
        self.cwd = os.fspath(cwd) if cwd is not None else None
        base = dict(os.environ) if inherit_env else {}
        if env:
            base.update(env)
        self.env = base
        self.log_path: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_fh = None

    # ------------------------------------------------------------ lifecycle
    def start(self) -> ManagedProcess:
        if self.proc is not None:
            raise RuntimeError(f"{self.name}: already started")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = _unique_log_path(self.log_dir, self.name)
        self._log_fh = open(self.log_path, "ab", buffering=0)  # noqa: SIM115
        self._log_fh.write(f"# argv: {self.argv}\n# cwd: {self.cwd}\n".encode())
        try:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=self._log_fh,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,  # own process group: stop() reaps children too
            )
        except BaseException:
            self._log_fh.close()
            self._log_fh = None
            raise
        return self

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError(f"{self.name}: not started")
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, grace: float = STOP_GRACE_SECONDS) -> int | None:
        """SIGTERM the process group, SIGKILL after ``grace`` seconds. Idempotent."""
        proc = self.proc
        if proc is None:
            return None
        try:
            if proc.poll() is None:
                self._signal_group(signal.SIGTERM)
                try:
                    proc.wait(timeout=grace)
                except subprocess.TimeoutExpired:
                    self._signal_group(signal.SIGKILL)
                    proc.wait(timeout=grace)
            else:
                # leader gone; make sure no orphans of its group survive
                self._signal_group(signal.SIGKILL)
        finally:
            if self._log_fh is not None:
                self._log_fh.close()
                self._log_fh = None
        return proc.returncode

    def _signal_group(self, sig: int) -> None:
        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            with contextlib.suppress(ProcessLookupError):
                if self.proc.poll() is None:
                    self.proc.send_signal(sig)

    def __enter__(self) -> ManagedProcess:
        if self.proc is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------ logs
    def read_log(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.read_log().splitlines()[-lines:])

    def _fail(self, what: str) -> ProcessStartError:
        rc = self.returncode
        state = "still running" if rc is None else f"exited with rc={rc}"
        return ProcessStartError(
            f"{self.name}: {what} (process {state}; argv={self.argv}; log={self.log_path})\n"
            f"----- last log lines -----\n{self.log_tail()}\n--------------------------"
        )

    def _check_alive(self, what: str) -> None:
        if self.proc is None:
            raise RuntimeError(f"{self.name}: not started")
        if self.proc.poll() is not None:
            raise self._fail(f"died while waiting for {what}")

    # ------------------------------------------------------------ readiness
    def _poll(self, what: str, probe: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        interval = _POLL_INTERVAL
        while True:
            self._check_alive(what)
            if probe():
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._fail(f"not ready after {timeout:.1f}s waiting for {what}")
            time.sleep(min(interval, remaining))
            interval = min(interval * 1.5, _MAX_POLL_INTERVAL)

    def wait_port(self, host: str, port: int, timeout: float = 15.0) -> None:
        """Wait until host:port accepts TCP connections (bounded)."""
        self._poll(f"tcp {host}:{port}", lambda: port_open(host, port, timeout=0.5), timeout)

    def wait_http(
        self,
        url: str,
        timeout: float = 15.0,
        *,
        ok: Callable[[int], bool] = lambda status: 200 <= status < 300,
        headers: Mapping[str, str] | None = None,
    ) -> int:
        """Wait until GET ``url`` returns a status accepted by ``ok`` (bounded).

        Returns the final status code.
        """
        last: list[int] = []

        def probe() -> bool:
            req = urllib.request.Request(url, headers=dict(headers or {}), method="GET")
            try:
                with _HTTP.open(req, timeout=1.0) as resp:
                    status = resp.status
            except urllib.error.HTTPError as e:
                status = e.code
                e.close()
            except (OSError, ValueError):
                return False
            last[:] = [status]
            return ok(status)

        self._poll(f"http {url}", probe, timeout)
        return last[0]


@contextlib.contextmanager
def managed_process(
    name: str,
    argv: Sequence[str | os.PathLike[str]],
    *,
    log_dir: str | os.PathLike[str],
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    inherit_env: bool = True,
    wait_http: str | None = None,
    wait_port: tuple[str, int] | None = None,
    timeout: float = 15.0,
) -> Iterator[ManagedProcess]:
    """Start a :class:`ManagedProcess`, optionally wait for readiness, always stop it."""
    proc = ManagedProcess(name, argv, log_dir=log_dir, env=env, cwd=cwd, inherit_env=inherit_env)
    proc.start()
    try:
        if wait_port is not None:
            proc.wait_port(*wait_port, timeout=timeout)
        if wait_http is not None:
            proc.wait_http(wait_http, timeout=timeout)
        yield proc
    finally:
        proc.stop()
