"""The process side of stdio upstreams: launch, environment, capped line reading, stderr to the log, stop.

Shared by the data plane's supervised :class:`~gateway.mcp.stdio.StdioUpstream` and
the control plane's approval-time discovery (:func:`~gateway.mcp.stdio.stdio_transport`),
so both start a server the same way. Source for the shutdown order: MCP 2025-11-25
``basic/lifecycle`` "Shutdown" (stdio: close stdin, wait, SIGTERM, wait, SIGKILL).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import signal
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import anyio
import orjson
from anyio.abc import ByteReceiveStream, Process

from gateway.errors import UpstreamUnavailable
from gateway.httpclient import MAX_RESPONSE_BYTES

__all__ = [
    "BASE_ENV_KEYS",
    "Child",
    "LineTooLong",
    "StdioLaunch",
    "StdioLimits",
    "drain_stderr",
    "launch_environment",
    "read_lines",
    "release",
    "spawn",
    "terminate",
]

log = logging.getLogger("gateway.upstream.stdio")

BASE_ENV_KEYS = ("PATH", "HOME", "LANG")
"""The only variables a stdio upstream inherits from the gateway (those that are set there)."""
_CONTROL = {c: f"\\x{c:02x}" for c in [*range(0x20), 0x7F] if c != 0x09}
_EXIT_POLL = 0.01


@dataclass(frozen=True, slots=True, repr=False)
class StdioLaunch:
    """How to start one stdio upstream, exactly as its registry record says.

    ``env`` is sorted ``(name, value)`` pairs; values may be secrets, so ``repr``
    shows the names only.
    """

    command: str
    args: tuple[str, ...] = ()
    cwd: str | None = None
    env: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> StdioLaunch:
        """From a registry record or routing-table entry (``command``, ``args``, ``cwd``, ``env``).

        Raises:
            ValueError: ``command`` is not a non-empty string, or ``args``/``cwd``/``env`` have the wrong shape.
        """
        command, args, cwd, env = record.get("command"), record.get("args") or [], record.get("cwd"), record.get("env")
        if not isinstance(command, str) or not command:
            raise ValueError("a stdio record needs a command")
        if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
            raise ValueError("args must be a list of strings")
        if cwd is not None and not isinstance(cwd, str):
            raise ValueError("cwd must be a string or null")
        env = env or {}
        if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
            raise ValueError("env must map strings to strings")
        return cls(command, tuple(args), cwd, tuple(sorted(env.items())))

    def with_env(self, extra: Mapping[str, str]) -> StdioLaunch:
        """This launch with ``extra`` added to its environment (``extra`` wins for shared names)."""
        if not extra:
            return self
        return dataclasses.replace(self, env=tuple(sorted({**dict(self.env), **extra}.items())))

    def address(self) -> str:
        """A stable key naming this launch (``stdio:<sha256 hex>``); reveals nothing of ``env``."""
        canonical = orjson.dumps([self.command, list(self.args), self.cwd, [list(p) for p in self.env]])
        return "stdio:" + hashlib.sha256(canonical).hexdigest()

    def __repr__(self) -> str:
        keys = [k for k, _ in self.env]
        return f"StdioLaunch(command={self.command!r}, args=<{len(self.args)}>, cwd={self.cwd!r}, env_keys={keys})"


@dataclass(frozen=True, slots=True)
class StdioLimits:
    """Caps and timings of a stdio process (bytes and seconds)."""

    max_line: int = MAX_RESPONSE_BYTES
    """Longest stdout line (one JSON-RPC message); longer is a protocol error (and a restart)."""
    stderr_line: int = 2048
    """Bytes of one stderr line that reach the log; the rest of the line is counted, not logged."""
    stderr_window: float = 60.0
    stderr_lines: int = 200
    """stderr lines logged per window; later lines in the window are only counted."""
    stderr_bytes: int = 64 * 1024
    """stderr bytes logged per window."""
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    stable_after: float = 30.0
    """A process that lived this long resets the restart backoff."""
    stdin_grace: float = 1.0
    """After stdin is closed, how long the process may take to exit before SIGTERM."""
    term_grace: float = 2.0
    """After SIGTERM, how long before SIGKILL."""


def launch_environment(launch: StdioLaunch, parent: Mapping[str, str] | None = None) -> dict[str, str]:
    """The whole environment of the process: :data:`BASE_ENV_KEYS` from ``parent``
    (default ``os.environ``), overridden by the record's ``env``. Nothing else of the
    gateway's environment (``DATABASE_URL``, tokens) is passed on."""
    parent = os.environ if parent is None else parent
    env = {k: parent[k] for k in BASE_ENV_KEYS if k in parent}
    env.update(launch.env)
    return env


class StdinPipe:
    """The write end of the process's stdin, written with non-blocking ``os.write``.

    Ours rather than asyncio's pipe transport, which swallows ``EPIPE`` and reports it
    later: here a write to a process that is already gone fails *in* :meth:`send`,
    so the caller knows the message was never read and may send it elsewhere.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        os.set_blocking(fd, False)

    async def send(self, data: bytes) -> None:
        """Write all of ``data``.

        Raises:
            BrokenPipeError: The process closed its stdin (exited) before all of it was written.
            anyio.ClosedResourceError: :meth:`close` ran first (or while waiting).
        """
        view = memoryview(data)
        while view:
            if self._fd < 0:
                raise anyio.ClosedResourceError
            try:
                view = view[os.write(self._fd, view) :]
            except BlockingIOError:
                await anyio.wait_writable(self._fd)

    def close(self) -> None:
        """Close it (the process sees EOF on stdin); idempotent."""
        fd, self._fd = self._fd, -1
        if fd >= 0:
            anyio.notify_closing(fd)
            os.close(fd)


@dataclass(eq=False)
class Child:
    """A started stdio process: ``process`` has pipes for stdout and stderr; stdin is :class:`StdinPipe`."""

    process: Process
    stdin: StdinPipe

    @property
    def pid(self) -> int:
        return self.process.pid


async def spawn(name: str, launch: StdioLaunch) -> Child:
    """Start ``launch`` in a new session (its own process group), stdout and stderr piped.

    ``command`` is looked up in the minimal environment's ``PATH``.

    Raises:
        UpstreamUnavailable: It could not be started (not found, not executable, bad ``cwd``).
    """
    read_fd, write_fd = os.pipe()
    try:
        process = await anyio.open_process(
            [launch.command, *launch.args],
            stdin=read_fd,
            cwd=launch.cwd,
            env=launch_environment(launch),
            start_new_session=True,
        )
    except (OSError, ValueError) as exc:
        os.close(write_fd)
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise UpstreamUnavailable(f"stdio upstream {name}: cannot start {launch.command!r}: {reason}") from None
    finally:
        os.close(read_fd)
    log.info("stdio upstream %s: started %s (pid %d)", name, launch.command, process.pid)
    return Child(process, StdinPipe(write_fd))


class LineTooLong(Exception):
    """A line exceeded the cap given to :func:`read_lines` (``strict``)."""


async def read_lines(stream: ByteReceiveStream, cap: int, *, strict: bool) -> AsyncIterator[tuple[bytes, int]]:
    """``(line, dropped)`` per ``\\n``-terminated line (``\\r\\n`` too), memory bounded by ``cap``.

    A line longer than ``cap`` bytes raises :class:`LineTooLong` as soon as it is
    seen when ``strict``; otherwise its first ``cap`` bytes are yielded with
    ``dropped`` = the number of bytes cut. A last line without a terminator is
    yielded too.
    """
    buf = bytearray()
    dropped = 0
    async for chunk in stream:
        start = 0
        while True:
            end = chunk.find(b"\n", start)
            piece = chunk[start:] if end == -1 else chunk[start:end]
            room = max(cap - len(buf), 0)
            if len(piece) > room:
                if strict:
                    raise LineTooLong(f"line over {cap} bytes")
                buf += piece[:room]
                dropped += len(piece) - room
            else:
                buf += piece
            if end == -1:
                break
            yield bytes(buf).rstrip(b"\r"), dropped
            buf.clear()
            dropped = 0
            start = end + 1
    if buf or dropped:
        yield bytes(buf).rstrip(b"\r"), dropped


def _printable(line: bytes) -> str:
    return line.decode("utf-8", errors="replace").translate(_CONTROL)


class _StderrBudget:
    """Fixed-window line and byte budget for one process's stderr in the log."""

    def __init__(self, name: str, limits: StdioLimits) -> None:
        self._name, self._limits = name, limits
        self._window_end = anyio.current_time() + limits.stderr_window
        self._lines = self._bytes = self._dropped_lines = self._dropped_bytes = 0

    def admit(self, size: int) -> bool:
        if anyio.current_time() >= self._window_end:
            self.flush()
            self._window_end = anyio.current_time() + self._limits.stderr_window
            self._lines = self._bytes = 0
        if self._lines < self._limits.stderr_lines and self._bytes + size <= self._limits.stderr_bytes:
            self._lines += 1
            self._bytes += size
            return True
        self._dropped_lines += 1
        self._dropped_bytes += size
        return False

    def flush(self) -> None:
        if self._dropped_lines:
            log.warning(
                "stdio upstream %s: %d stderr line(s) (%d bytes) not logged: over %d lines / %d bytes per %gs",
                self._name,
                self._dropped_lines,
                self._dropped_bytes,
                self._limits.stderr_lines,
                self._limits.stderr_bytes,
                self._limits.stderr_window,
            )
        self._dropped_lines = self._dropped_bytes = 0


async def drain_stderr(name: str, child: Child, limits: StdioLimits, done: anyio.Event) -> None:
    """Read the process's stderr to its end into the log (``stdio upstream <name> stderr: <line>``, INFO).

    Each line is cut to ``limits.stderr_line`` bytes with control characters
    escaped (no forged log lines); lines over the window's budget are counted and
    reported in one WARNING line. Sets ``done`` at the end of the stream.
    """
    stderr = child.process.stderr
    assert stderr is not None
    budget = _StderrBudget(name, limits)
    try:
        async for line, dropped in read_lines(stderr, limits.stderr_line, strict=False):
            if budget.admit(len(line) + dropped):
                cut = f" [{dropped} more bytes not logged]" if dropped else ""
                log.info("stdio upstream %s stderr: %s%s", name, _printable(line), cut)
    except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
        pass
    finally:
        budget.flush()
        done.set()


async def _exited(process: Process, timeout: float) -> bool:
    """Whether the process exits within ``timeout`` seconds.

    Polls ``returncode`` rather than ``wait()``: on asyncio, ``wait()`` also waits
    for the pipes to close, which a grandchild holding them would delay forever.
    """
    with anyio.move_on_after(timeout):
        while process.returncode is None:
            await anyio.sleep(_EXIT_POLL)
    return process.returncode is not None


async def terminate(child: Child, limits: StdioLimits) -> int | None:
    """Stop ``process`` and its process group: stdin closed, then SIGTERM, then SIGKILL.

    Shielded from cancellation and bounded (``stdin_grace`` + ``term_grace`` + 5 s at
    most); idempotent. Whatever the server left in its process group is killed too.
    stdout and stderr stay open, so their last lines can still be read; then
    :func:`release` them.

    Returns:
        The exit status (negative: killed by that signal), or None if it survived SIGKILL.
    """
    process = child.process
    with anyio.CancelScope(shield=True):
        child.stdin.close()
        if process.returncode is None:
            await _exited(process, limits.stdin_grace)
        for sig, grace in ((signal.SIGTERM, limits.term_grace), (signal.SIGKILL, 5.0)):
            if process.returncode is not None:
                break
            _signal_group(process.pid, sig)
            await _exited(process, grace)
        _signal_group(process.pid, signal.SIGKILL)  # stragglers left in its group (holding its pipes open)
    return process.returncode


async def release(child: Child) -> None:
    """Close the process's pipes (after :func:`terminate`); idempotent."""
    child.stdin.close()
    with anyio.CancelScope(shield=True):
        for stream in (child.process.stdout, child.process.stderr):
            if stream is not None:
                try:
                    await stream.aclose()
                except Exception:  # noqa: BLE001 - closing what is already closed
                    pass


def _signal_group(pgid: int, sig: int) -> bool:
    """Send ``sig`` to process group ``pgid``; False when the group is gone."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True
