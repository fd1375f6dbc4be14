"""Upstream MCP servers the gateway runs itself, over stdio, supervised.

Source: MCP 2025-11-25 ``basic/transports`` "stdio": the client launches the
server as a subprocess; messages are UTF-8 JSON-RPC objects, one per line, on the
server's stdin and stdout (no embedded newlines); the server may log anything
to stderr; shutdown is: close stdin, wait, SIGTERM, wait, SIGKILL.

What the gateway adds (:class:`StdioUpstream`):

* **Launch from the registry only.** :class:`StdioLaunch` (command, args, cwd,
  env) comes from the approved registry record; nothing from a client request.
* **Minimal environment.** The process gets ``PATH``, ``HOME`` and ``LANG`` from
  the gateway's environment (those that are set) plus the record's ``env``, and
  nothing else: not ``DATABASE_URL``, not the admin or internal token
  (:func:`launch_environment`).
* **Supervision.** One process per upstream (per data plane), started on first
  use, in its own session (process group). When it exits, the requests waiting
  on it fail (``upstream_unavailable``) and it is restarted after a backoff that
  doubles from :attr:`StdioLimits.backoff_initial` up to
  :attr:`StdioLimits.backoff_max` (reset once a process has lived
  :attr:`StdioLimits.stable_after`). A request that arrives while a crashed
  process is being restarted waits for it (within its timeout); one that arrives
  after a failed start fails at once.
* **Caps.** A stdout line longer than :attr:`StdioLimits.max_line` is a protocol
  error: the process is killed and restarted. stderr is read line by line into
  the log (logger ``gateway.upstream.stdio``, INFO), each line cut to
  :attr:`StdioLimits.stderr_line` bytes with control characters escaped, and at
  most :attr:`StdioLimits.stderr_lines` lines / :attr:`StdioLimits.stderr_bytes`
  bytes per :attr:`StdioLimits.stderr_window` seconds; the rest is counted and
  reported in one WARNING line. stderr is always drained, so a chatty server
  never blocks on a full pipe.
* **Killed** when :meth:`StdioUpstream.aclose` runs (the server left the
  projection, or shutdown) or its supervisor is cancelled: stdin closed, then
  SIGTERM to its process group, then SIGKILL.

Each process speaks the handshake era: ``initialize`` (requesting 2025-11-25,
any handshake revision accepted) then ``notifications/initialized``. Requests
are multiplexed by JSON-RPC ``id``. Server-to-client notifications and requests
are relayed to the client of the request they belong to, as
:class:`~gateway.mcp.channel.InFlight` attributes them (``ping`` is answered ``{}``).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import mcp_types
import orjson
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp.shared.message import SessionMessage

from gateway.errors import UpstreamError, UpstreamProtocolError, UpstreamTimeout, UpstreamUnavailable
from gateway.mcp._common import CLIENT_INFO, Pending
from gateway.mcp._process import (
    BASE_ENV_KEYS,
    Child,
    LineTooLong,
    StdioLaunch,
    StdioLimits,
    drain_stderr,
    launch_environment,
    read_lines,
    release,
    spawn,
    terminate,
)
from gateway.mcp.channel import (
    GATEWAY_CAPABILITIES,
    ClientChannel,
    InFlight,
    UseCount,
    cancelled_notification,
    is_notification,
    is_server_request,
    keep_listening,
    listen_on,
)
from gateway.mcp.messages import HANDSHAKE_VERSIONS

__all__ = ["BASE_ENV_KEYS", "StdioLaunch", "StdioLimits", "StdioUpstream", "launch_environment", "stdio_transport"]

log = logging.getLogger("gateway.upstream.stdio")


class _NotDelivered(Exception):
    """The process ended before the request was written: safe to send it to the next one."""


class _Running:
    """One live process: its stdin writer and the requests waiting for its answers."""

    def __init__(self, name: str, child: Child, tg: TaskGroup, idle: float = 30.0) -> None:
        self.name = name
        self.inflight = InFlight(idle)
        self.child = child
        self.tg = tg
        self.pending = Pending()
        self.ended = anyio.Event()
        self.reason: tuple[type[UpstreamError], str] = (UpstreamUnavailable, f"stdio upstream {name} exited")
        self._ids = itertools.count(1)
        self._write_lock = anyio.Lock()
        self.protocol_version: str | None = None

    def end(self, kind: type[UpstreamError], reason: str) -> None:
        if self.ended.is_set():
            return
        self.reason = (kind, reason)
        self.ended.set()
        self.pending.fail(kind, reason)

    async def send(self, message: dict[str, Any]) -> None:
        """Write one message.

        Raises:
            _NotDelivered: stdin is closed or broken (the process is gone): nothing was written.
        """
        try:
            async with self._write_lock:
                await self.child.stdin.send(orjson.dumps(message) + b"\n")
        except (anyio.ClosedResourceError, OSError) as exc:  # EPIPE: the process is gone or stopped reading
            self.end(UpstreamUnavailable, f"stdio upstream {self.name} closed its stdin; restarting it")
            raise _NotDelivered from exc

    async def call(
        self,
        method: str,
        params: dict[str, Any],
        channel: ClientChannel | None = None,
        clock: anyio.CancelScope | None = None,
    ) -> dict[str, Any]:
        """Send a request and wait for its response; messages for it go to ``channel``.

        Raises:
            _NotDelivered: The process had ended, or its stdin broke, before the request was written.
            UpstreamError: The process ended (or broke the protocol) after the request was
                written: it may have been processed, so it is not repeated.
        """
        if self.ended.is_set():
            raise _NotDelivered
        req_id = next(self._ids)
        slot = self.pending.open(req_id)
        key, params = self.inflight.enter(params, channel, clock)
        try:
            await self.send({"jsonrpc": "2.0", "id": req_id, "method": method, "params": params})
            try:
                await slot.event.wait()
            except anyio.get_cancelled_exc_class():
                if method != "initialize" and not self.ended.is_set():  # tell the process (best effort)
                    with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                        with contextlib.suppress(_NotDelivered):
                            await self.send(cancelled_notification(req_id))
                raise
        finally:
            self.pending.close(req_id)
            self.inflight.leave(key)
        return Pending.outcome(slot)

    async def dispatch(self, msg: dict[str, Any]) -> None:
        if is_server_request(msg):  # answered off the reader: asking a client takes a while
            self.tg.start_soon(self._answer, msg)
            return
        if is_notification(msg):
            await self.inflight.notification(msg)
            return
        self.pending.deliver(msg)

    async def _answer(self, msg: dict[str, Any]) -> None:
        reply = await self.inflight.answer(msg)
        try:
            await self.send(reply)
        except _NotDelivered:
            pass


class StdioUpstream:
    """A supervised stdio upstream (implements ``Upstream``).

    Args:
        name: The server's registry name (log lines say ``stdio upstream <name>``).
        launch: Command, args, cwd and env from the registry record.
        spawner: Task group that runs the supervisor (the pool's; a supervisor never raises into it).
        timeout: Seconds for one request, including waiting for a (re)starting process.
        limits: Caps and timings.
    """

    def __init__(
        self,
        name: str,
        launch: StdioLaunch,
        *,
        spawner: TaskGroup,
        timeout: float,
        limits: StdioLimits | None = None,
        client_capabilities: dict[str, Any] | None = None,
        max_duration: float | None = None,
    ) -> None:
        self.name = name
        self._max_duration = math.inf if max_duration is None else max(timeout, max_duration)
        self._launch = launch
        self._capabilities = dict(GATEWAY_CAPABILITIES if client_capabilities is None else client_capabilities)
        self._use = UseCount()
        self._spawner = spawner
        self._timeout = timeout
        self._limits = limits or StdioLimits()
        self._running: _Running | None = None
        self._failure: tuple[type[UpstreamError], str] | None = None
        self._changed = anyio.Event()
        self._started = False
        self._closed = False
        self._scope: anyio.CancelScope | None = None
        self._done = anyio.Event()
        self.pid: int | None = None
        """PID of the current (or last) process."""
        self.starts = 0
        """Processes started so far."""

    @property
    def busy(self) -> bool:
        """A request or a listener is using the process (the pool does not stop it then)."""
        return self._use.busy

    @property
    def protocol_version(self) -> str | None:
        """The negotiated revision of the running process, if one is ready."""
        running = self._running
        return running.protocol_version if running is not None else None

    async def request(
        self, method: str, params: dict[str, Any], channel: ClientChannel | None = None
    ) -> dict[str, Any]:
        """Send one request to the process, starting it on first use.

        Messages the process sends meanwhile go to ``channel`` as
        :class:`~gateway.mcp.channel.InFlight` attributes them; a relayed message restarts
        the request's ``timeout`` clock, and a cancelled request is announced with
        ``notifications/cancelled``.

        Returns:
            The process's JSON-RPC response message (``result`` or ``error``).

        Raises:
            UpstreamUnavailable: The process could not be started (last attempt), exited
                while the request waited, or this upstream was closed.
            UpstreamTimeout: No answer (or no ready process) within the timeout.
            UpstreamProtocolError: The process wrote an over-long line while the request waited.
        """
        if self._closed:
            raise UpstreamUnavailable(f"stdio upstream {self.name} is stopped")
        if not self._started:
            self._started = True
            self._spawner.start_soon(self._supervise)
        try:
            with self._use.using(), anyio.fail_after(self._max_duration):
                return await self._request(method, params, channel)
        except TimeoutError:
            raise UpstreamTimeout(f"stdio upstream {self.name} did not finish within {self._max_duration}s") from None

    async def _request(self, method: str, params: dict[str, Any], channel: ClientChannel | None) -> dict[str, Any]:
        clock = anyio.CancelScope(deadline=anyio.current_time() + self._timeout)
        with clock:
            while True:
                running = await self._ready()
                try:
                    return await running.call(method, params, channel, clock)
                except _NotDelivered:
                    # The process died before it could read the request: wait for the
                    # supervisor to notice, then send it to the next process.
                    await running.ended.wait()
        raise UpstreamTimeout(f"stdio upstream {self.name} did not answer within {self._timeout}s")

    async def listen(
        self, notifications: dict[str, Any], sink: ClientChannel, ready: Callable[[], None] | None = None
    ) -> None:
        """Deliver notifications outside any call to ``sink`` until cancelled
        (:func:`~gateway.mcp.channel.listen_on` on each process in turn)."""

        async def once() -> None:
            if not self._started:
                self._started = True
                self._spawner.start_soon(self._supervise)
            with anyio.fail_after(self._timeout):
                running = await self._ready()
            await listen_on(running.inflight.listeners, notifications, sink, running.call, running.ended.wait, ready)

        with self._use.using():
            await keep_listening(f"stdio upstream {self.name}", once, lambda: not self._closed)
        await anyio.sleep_forever()

    async def aclose(self) -> None:
        """Stop the process (stdin closed, SIGTERM, SIGKILL) and refuse later requests."""
        self._closed = True
        self._notify()
        if self._scope is not None:
            self._scope.cancel()
        if self._started:
            with (
                anyio.CancelScope(shield=True),
                anyio.move_on_after(self._limits.stdin_grace + self._limits.term_grace + 3),
            ):
                await self._done.wait()

    # ------------------------------------------------------------ supervision
    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def _ready(self) -> _Running:
        while True:
            if self._closed:
                raise UpstreamUnavailable(f"stdio upstream {self.name} is stopped")
            if self._running is not None and not self._running.ended.is_set():
                return self._running
            if self._failure is not None:
                kind, reason = self._failure
                raise kind(reason)
            await self._changed.wait()

    async def _supervise(self) -> None:
        backoff = self._limits.backoff_initial
        try:
            with anyio.CancelScope() as scope:
                self._scope = scope
                if self._closed:
                    scope.cancel()
                while True:
                    self._failure = None
                    self._notify()
                    born = anyio.current_time()
                    try:
                        _, reason = await self._run_once()
                        log.warning("%s", reason)
                    except UpstreamError as exc:
                        self._failure = (type(exc), str(exc))
                        log.warning("%s", exc)
                    except Exception as exc:  # never into the pool's task group
                        self._failure = (UpstreamUnavailable, f"stdio upstream {self.name}: {type(exc).__name__}")
                        log.exception("stdio upstream %s: supervisor error", self.name)
                    self._running = None
                    self._notify()
                    if anyio.current_time() - born >= self._limits.stable_after:
                        backoff = self._limits.backoff_initial
                    log.info("stdio upstream %s: restarting in %.1fs", self.name, backoff)
                    await anyio.sleep(backoff)
                    backoff = min(backoff * 2, self._limits.backoff_max)
        finally:
            self._closed = True
            self._running = None
            self._notify()
            self._done.set()

    async def _run_once(self) -> tuple[type[UpstreamError], str]:
        """Start one process, hand it to requests after the handshake, return why it ended.

        Raises:
            UpstreamError: It could not be started, or failed the handshake.
        """
        child = await spawn(self.name, self._launch)
        self.pid = child.pid
        self.starts += 1
        failure: UpstreamError | None = None  # raised outside the task group, which would wrap it
        try:
            async with anyio.create_task_group() as tg:
                running = _Running(self.name, child, tg, self._timeout)
                stderr_done = anyio.Event()
                tg.start_soon(drain_stderr, self.name, child, self._limits, stderr_done)
                tg.start_soon(self._read_stdout, running)
                try:
                    await self._handshake(running)
                    self._running = running
                    self._notify()
                    await running.ended.wait()
                except UpstreamError as exc:
                    failure = exc
                finally:
                    self._running = None
                    running.end(UpstreamUnavailable, f"stdio upstream {self.name} was stopped")
                    await terminate(child, self._limits)
                    # The process is gone: its last stderr lines (a crash report) are worth the wait.
                    with anyio.CancelScope(shield=True), anyio.move_on_after(0.5):
                        await stderr_done.wait()
                    tg.cancel_scope.cancel()
            if failure is not None:
                raise failure
            return running.reason
        finally:
            code = await terminate(child, self._limits)
            await release(child)
            log.info("stdio upstream %s: pid %d ended with %s", self.name, child.pid, code)

    async def _handshake(self, running: _Running) -> None:
        init = {
            "protocolVersion": HANDSHAKE_VERSIONS[0],
            "capabilities": self._capabilities,
            "clientInfo": CLIENT_INFO,
        }
        try:
            with anyio.fail_after(self._timeout):
                msg = await running.call("initialize", init)
                result = msg.get("result")
                if not isinstance(result, dict):
                    raise UpstreamProtocolError(f"stdio upstream {self.name} refused initialize")
                negotiated = result.get("protocolVersion")
                if negotiated not in HANDSHAKE_VERSIONS:
                    raise UpstreamProtocolError(
                        f"stdio upstream {self.name} negotiated unsupported version {negotiated!r}"
                    )
                running.protocol_version = str(negotiated)
                await running.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        except TimeoutError:
            raise UpstreamTimeout(
                f"stdio upstream {self.name} did not answer initialize within {self._timeout}s"
            ) from None
        except _NotDelivered:
            raise UpstreamUnavailable(f"stdio upstream {self.name} exited during the handshake") from None
        log.info("stdio upstream %s: ready, protocol %s", self.name, negotiated)

    async def _read_stdout(self, running: _Running) -> None:
        stdout = running.child.process.stdout
        assert stdout is not None
        cap = self._limits.max_line
        ignored = 0
        try:
            async for line, _ in read_lines(stdout, cap, strict=True):
                if not line.strip():
                    continue
                try:
                    msg = orjson.loads(line)
                except orjson.JSONDecodeError:
                    msg = None
                if not isinstance(msg, dict):
                    ignored += 1
                    if ignored == 1:
                        log.warning(
                            "stdio upstream %s wrote a stdout line that is not a JSON-RPC message (%d bytes); "
                            "ignored (later ones are only counted)",
                            self.name,
                            len(line),
                        )
                    continue
                await running.dispatch(msg)
            running.end(UpstreamUnavailable, f"stdio upstream {self.name} closed its stdout (exited)")
        except LineTooLong:
            running.end(
                UpstreamProtocolError, f"stdio upstream {self.name} wrote a stdout line over {cap} bytes; restarting it"
            )
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            running.end(UpstreamUnavailable, f"stdio upstream {self.name}: its stdout broke")
        finally:
            if ignored > 1:
                log.warning("stdio upstream %s: %d non-JSON stdout lines ignored", self.name, ignored)


@contextlib.asynccontextmanager
async def stdio_transport(
    name: str, launch: StdioLaunch, limits: StdioLimits | None = None
) -> AsyncIterator[
    tuple[MemoryObjectReceiveStream[SessionMessage | Exception], MemoryObjectSendStream[SessionMessage]]
]:
    """An MCP SDK transport (for ``mcp.Client``) over a process started exactly like
    :class:`StdioUpstream`'s: same minimal environment, own process group, stderr into
    the log with the same caps, the same stdout line cap (a longer line ends the
    session). The control plane lists a stdio server's tools with it at approval.

    The process is stopped (stdin closed, SIGTERM, SIGKILL) when the context exits.

    Raises:
        UpstreamUnavailable: The process could not be started.
    """
    limits = limits or StdioLimits()
    child = await spawn(name, launch)
    process = child.process
    read_send, read_recv = anyio.create_memory_object_stream[SessionMessage | Exception](0)
    write_send, write_recv = anyio.create_memory_object_stream[SessionMessage](0)

    async def reader() -> None:
        assert process.stdout is not None
        async with read_send:
            try:
                async for line, _ in read_lines(process.stdout, limits.max_line, strict=True):
                    if not line.strip():
                        continue
                    try:
                        message = mcp_types.jsonrpc_message_adapter.validate_json(line, by_name=False)
                    except ValueError as exc:
                        await read_send.send(exc)
                        continue
                    await read_send.send(SessionMessage(message))
            except LineTooLong:
                log.warning("stdio upstream %s wrote a stdout line over %d bytes; stopping it", name, limits.max_line)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                pass

    async def writer() -> None:
        async with write_recv:
            async for session_message in write_recv:
                data = session_message.message.model_dump_json(by_alias=True, exclude_unset=True) + "\n"
                try:
                    await child.stdin.send(data.encode())
                except (anyio.ClosedResourceError, OSError):
                    return

    stderr_done = anyio.Event()
    failure: Exception | None = None  # re-raised outside the task group, which would wrap it
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(reader)
            tg.start_soon(writer)
            tg.start_soon(drain_stderr, name, child, limits, stderr_done)
            try:
                yield read_recv, write_send
            except Exception as exc:  # noqa: BLE001 - the caller's own error, re-raised below
                failure = exc
            finally:
                await terminate(child, limits)
                with anyio.CancelScope(shield=True), anyio.move_on_after(0.5):
                    await stderr_done.wait()
                tg.cancel_scope.cancel()
        if failure is not None:
            raise failure
    finally:
        code = await terminate(child, limits)
        await release(child)
        log.info("stdio upstream %s: pid %d ended with %s", name, child.pid, code)
