"""Resumable answers for handshake-era requests: event ids, priming, polling (SEP-1699).

A handshake-era request (``tools/call``, ``resources/read``, ``prompts/get``,
``completion/complete``) whose client accepts ``text/event-stream`` is a
:class:`CallStream`. Its answer is one ``application/json`` body when the response comes
before anything is relayed (and, with polling on, before the poll interval); otherwise an
SSE stream whose every event has an id ``<stream>-<n>`` (unique in the session, naming
its stream). Then:

* a 2025-11-25 client first gets a *priming* event (an id, empty data, and the ``retry``
  field: :attr:`~gateway.config.DataPlaneConfig.sse_retry`), so it can resume even before
  the first message;
* a client that loses the connection does **not** cancel the request (clients cancel with
  ``notifications/cancelled``): the request goes on, its messages are kept, and ``GET``
  with ``Last-Event-ID`` resumes the stream where the client left it (events after that
  id, then the rest live). A stream nobody resumes within
  :attr:`~gateway.config.DataPlaneConfig.sse_resume_window` seconds is cancelled (the
  upstream is told) and forgotten;
* with :attr:`~gateway.config.DataPlaneConfig.sse_poll_interval` set, the gateway closes
  each connection of a stream after that many seconds and the client polls (reconnects
  with ``Last-Event-ID`` after ``retry``): no connection is held longer than a proxy or
  load balancer in front of the data plane allows;
* a client that leaves before its answer became a stream has nothing to resume from: the
  request is cancelled, as before.

Resumption works on the data plane that holds the request: a session moves between data
planes (:mod:`gateway.dataplane.session_seal`), a request in progress does not.
Older clients (2025-03-26, 2025-06-18) get event ids but no priming event (their SDKs
cannot parse one), so they are not polled. Source: MCP 2025-11-25 ``basic/transports``
("Resumability and Redelivery", "Sending Messages to the Server" items on priming,
``retry`` and disconnection), SEP-1699; WHATWG HTML "Server-sent events" (``id``,
``retry``, ``Last-Event-ID``).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import anyio
import orjson
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gateway.dataplane.relay import SSE_HEADERS, Outbox
from gateway.dataplane.sessions import Session
from gateway.mcp.messages import INTERNAL_ERROR, error_response

__all__ = [
    "KEEP_DELIVERED",
    "MAX_REPLAY",
    "MAX_STREAMS_PER_SESSION",
    "PRIMING_SINCE",
    "CallStream",
    "CallStreamResponse",
    "Reaper",
]

log = logging.getLogger("gateway.mcp")

MAX_REPLAY = 256
"""Most sent events a stream keeps for a client that resumes (older ones are forgotten;
the response, sent last, is always kept)."""

MAX_STREAMS_PER_SESSION = 100
"""Most resumable streams a session keeps; beyond it the oldest one nobody reads is dropped
(its request cancelled)."""

KEEP_DELIVERED = 10.0
"""Seconds a stream whose response was sent stays resumable (the connection may have dropped
before the client read it)."""

PRIMING_SINCE = "2025-11-25"
"""The first revision whose clients get a priming event (and so can be polled)."""


class Reaper:
    """Forgets the streams nobody reads once their time is up: one task for the data plane.

    Args:
        resume_window: Seconds a stream whose response is not sent yet waits for its
            client (:attr:`~gateway.config.DataPlaneConfig.sse_resume_window`); then its
            request is cancelled.
    """

    def __init__(self, resume_window: float) -> None:
        self.resume_window = resume_window
        self._due: list[tuple[float, int, CallStream, int]] = []
        self._order = itertools.count()
        self._wake = anyio.Event()

    def __len__(self) -> int:
        return len(self._due)

    def schedule(self, stream: CallStream, generation: int, delay: float) -> None:
        """Reap ``stream`` after ``delay`` seconds unless a reader attached meanwhile."""
        heapq.heappush(self._due, (time.monotonic() + delay, next(self._order), stream, generation))
        self._wake.set()

    async def run(self) -> None:
        """Reap due streams until cancelled (the data plane's task group)."""
        while True:
            if not self._due:
                self._wake = anyio.Event()
                await self._wake.wait()
                continue
            due = self._due[0][0]
            now = time.monotonic()
            if due > now:
                self._wake = anyio.Event()
                with anyio.move_on_after(due - now):
                    await self._wake.wait()  # an earlier deadline may arrive
                continue
            _, _, stream, generation = heapq.heappop(self._due)
            stream.reap(generation)


class CallStream:
    """One handshake-era request in flight and the events of its answer.

    Args:
        session: The client's session (streams are found by it, and closed with it).
        outbox: Where the request's relayed messages and response arrive
            (:class:`~gateway.dataplane.relay.Outbox`).
        spawn: Runs a coroutine function detached from any HTTP request (the data plane's
            task group: :meth:`gateway.dataplane.listening.Hub.spawn`).
        reaper: Forgets the stream when nobody reads it any more.
        poll: :attr:`~gateway.config.DataPlaneConfig.sse_poll_interval` (seconds, 0 = off).
        retry: :attr:`~gateway.config.DataPlaneConfig.sse_retry` (seconds).
    """

    def __init__(
        self,
        session: Session,
        outbox: Outbox,
        spawn: Callable[[Callable[[], Coroutine[Any, Any, None]]], None],
        reaper: Reaper,
        *,
        poll: float,
        retry: float,
    ) -> None:
        self.session = session
        self.outbox = outbox
        self.priming = session.protocol_version >= PRIMING_SINCE
        self.poll = poll if poll > 0 and self.priming else math.inf
        self.retry_ms = max(0, round(retry * 1000))
        self._spawn = spawn
        self._reaper = reaper
        self.number = ""
        """The stream's part of its event ids; set when the answer becomes a stream."""
        self.scope = anyio.CancelScope()
        """The request's cancel scope (``notifications/cancelled``, expiry)."""
        self._sent: deque[tuple[int, dict[str, Any]]] = deque(maxlen=MAX_REPLAY)
        self._seq = 0
        self._final_seq: int | None = None
        self._reader: anyio.CancelScope | None = None
        self._generation = 0
        self.closed = False
        """Delivered, cancelled or expired: nothing more to read."""

    # ---------------------------------------------------------------- the request
    def start(
        self,
        work: Callable[[], Awaitable[dict[str, Any]]],
        request_id: Any,
        on_start: Callable[[anyio.CancelScope], None],
        on_end: Callable[[], None],
    ) -> None:
        """Run ``work`` (returns the JSON-RPC response) detached from the HTTP request.

        An exception is answered ``-32603`` ``internal_error`` (the PEP audited it); a
        cancelled request gets no response (its stream ends without one).
        """

        async def run() -> None:
            reply: dict[str, Any] = {}
            with self.scope:
                on_start(self.scope)
                try:
                    reply = await work()
                except Exception as exc:  # boundary: a detached request never raises into the data plane
                    log.error("request failed unexpectedly: %s", type(exc).__name__)
                    reply = error_response(request_id, INTERNAL_ERROR, "Gateway error", {"category": "internal_error"})
                finally:
                    on_end()
            # notifications/cancelled or expiry: no response (MCP 2025-11-25 utilities/cancellation)
            self.outbox.finish({} if self.scope.cancelled_caught else reply)

        self._spawn(run)

    def cancel(self) -> None:
        """Cancel the request and forget the stream."""
        self.scope.cancel()
        self.close()

    def close(self, *, stop_reader: bool = True) -> None:
        """Forget the stream (delivered or given up); a reader still attached stops unless
        it is the one closing."""
        self.closed = True
        if self.number and self.session.streams.get(self.number) is self:
            del self.session.streams[self.number]
        if stop_reader and self._reader is not None:
            self._reader.cancel()

    # ---------------------------------------------------------------- the readers
    def event_id(self, seq: int) -> str:
        return f"{self.number}-{seq}"

    def register(self) -> None:
        """The answer became a stream: number it and make it findable by its event ids."""
        session = self.session
        streams = session.streams
        if len(streams) >= MAX_STREAMS_PER_SESSION:
            for stream in list(streams.values()):
                if stream._reader is None:  # nobody reads it: the oldest such goes
                    log.warning("session keeps too many resumable streams: the oldest unread one is cancelled")
                    stream.cancel()
                    break
        self.number = str(session.next_stream())
        streams[self.number] = self

    def attach(self, reader: anyio.CancelScope) -> None:
        """``reader`` reads the stream from now on; a previous reader stops."""
        previous, self._reader = self._reader, reader
        self._generation += 1
        if previous is not None:
            previous.cancel()

    def detach(self, reader: anyio.CancelScope) -> None:
        """``reader``'s connection ended: wait for the client to come back, for the resume
        window at most (:data:`KEEP_DELIVERED` seconds once the response was sent)."""
        if self._reader is not reader or self.closed:
            return
        self._reader = None
        delay = KEEP_DELIVERED if self._final_seq is not None else self._reaper.resume_window
        self._reaper.schedule(self, self._generation, delay)

    def reap(self, generation: int) -> None:
        """Time is up for the detachment ``generation``: forget the stream unless it was
        resumed since; a request still running is cancelled (the upstream is told)."""
        if self.closed or self._reader is not None or generation != self._generation:
            return
        if self._final_seq is None:
            log.info("client did not resume its stream in time: the request is cancelled")
        self.cancel()

    def replay(self, after: int) -> list[tuple[int, dict[str, Any]]]:
        """The kept events after ``after`` (a resume's ``Last-Event-ID``, at most
        :attr:`last_seq`); older ones are dropped (the client has them), except the last
        event, kept for another resume from before it."""
        while len(self._sent) > 1 and self._sent[0][0] <= after:
            self._sent.popleft()
        return [(seq, message) for seq, message in self._sent if seq > after]

    def delivered(self, seq: int) -> bool:
        """True once event ``seq`` was the stream's last (the response, or its end)."""
        return self._final_seq is not None and seq >= self._final_seq

    async def next(self) -> tuple[int, dict[str, Any]]:
        """The next message of the request (``{}`` for "ended without a response"), numbered
        and kept for a resume before it is returned."""
        final, message = await self.outbox.receive.receive()
        self._seq += 1
        self._sent.append((self._seq, message))
        if final:
            self._final_seq = self._seq
        return self._seq, message

    @property
    def last_seq(self) -> int:
        return self._seq


def _event(stream: CallStream, seq: int, message: dict[str, Any]) -> bytes:
    if not message:  # the end of a request cancelled by its client: nothing to send
        return b""
    return b"id: " + stream.event_id(seq).encode() + b"\nevent: message\ndata: " + orjson.dumps(message) + b"\n\n"


class CallStreamResponse(Response):
    """One connection reading a :class:`CallStream`: the ``POST`` that started the request
    (``resume_after`` None) or a ``GET`` with ``Last-Event-ID`` (``resume_after`` = its
    sequence number)."""

    def __init__(self, stream: CallStream, *, resume_after: int | None = None, headers: dict[str, str] | None = None):
        super().__init__(status_code=200, headers=headers)
        self._stream = stream
        self._resume_after = resume_after
        self._started = self._ended = False

    def _start(self, content_type: bytes | None = None) -> dict[str, Any]:
        raw = [(k, v) for k, v in self.raw_headers if k not in (b"content-length", b"content-type")]
        if content_type is None:
            raw.extend(SSE_HEADERS)
        else:
            raw.append((b"content-type", content_type))
        self._started = True
        return {"type": "http.response.start", "status": 200, "headers": raw}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        stream = self._stream
        left = False
        with anyio.CancelScope() as reader:
            stream.attach(reader)
            async with anyio.create_task_group() as tg:

                async def watch_disconnect() -> None:
                    nonlocal left
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    left = True
                    tg.cancel_scope.cancel()

                tg.start_soon(watch_disconnect)
                try:
                    await self._serve(send)
                finally:
                    tg.cancel_scope.cancel()
        if self._started and not self._ended and not left:  # stopped by a newer reader or a closed session
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        if stream.closed:
            return
        if not stream.number:  # still a JSON answer: nothing to resume from
            if left:
                log.info("client closed its connection: the request is cancelled")
                stream.cancel()
            return
        if left and not stream.delivered(stream.last_seq):
            log.info("client left its stream: the request goes on, resumable with Last-Event-ID")
        stream.detach(reader)

    async def _serve(self, send: Send) -> None:
        stream = self._stream
        deadline = time.monotonic() + stream.poll
        if self._resume_after is None:
            seq, message = 0, None
            with anyio.move_on_at(deadline):
                seq, message = await stream.next()
            if message and stream.delivered(seq):  # the response, before anything else
                body = orjson.dumps(message)
                start = self._start(b"application/json")
                start["headers"].append((b"content-length", str(len(body)).encode()))
                stream.close(stop_reader=False)
                self._ended = True
                await send(start)
                await send({"type": "http.response.body", "body": body})
                return
            stream.register()
            await send(self._start())
            head = b""
            if stream.priming:
                head = b"id: " + stream.event_id(0).encode() + b"\nretry: %d\ndata: \n\n" % stream.retry_ms
            if message is not None:
                head += _event(stream, seq, message)
            await send({"type": "http.response.body", "body": head, "more_body": True})
            if message is not None and stream.delivered(seq):
                await self._end(send)
                return
        else:
            await send(self._start())
            after = min(self._resume_after, stream.last_seq)  # an id beyond what was sent means "all of it"
            for seq, message in stream.replay(after):
                await send({"type": "http.response.body", "body": _event(stream, seq, message), "more_body": True})
                if stream.delivered(seq):
                    await self._end(send)
                    return
            if stream.delivered(stream.last_seq):  # the client had everything, the response included
                await self._end(send)
                return
        while True:
            got = None
            with anyio.move_on_at(deadline):
                got = await stream.next()
            if got is None:  # the poll interval is over: close this connection; the client reconnects
                await self._end(send)
                return
            seq, message = got
            await send({"type": "http.response.body", "body": _event(stream, seq, message), "more_body": True})
            if stream.delivered(seq):
                await self._end(send)
                return

    async def _end(self, send: Send) -> None:
        self._ended = True
        await send({"type": "http.response.body", "body": b"", "more_body": False})
