"""Request-head and body limits for the ASGI servers (uvicorn + httptools, hypercorn + h11).

What each server does on its own, and what this module adds (uvicorn 0.54,
hypercorn 0.18, read from their source):

============================  ===========================================  ==========================================
limit                         uvicorn (``http="httptools"``)               hypercorn (h11)
============================  ===========================================  ==========================================
head size                     none (httptools buffers any header):         ``h11_max_incomplete_size`` -> 431
                              :func:`limited_httptools_protocol` -> 431
head time (slow loris)        none (keep-alive timer only after a          ``keep_alive_timeout``: one idle timer runs
                              response): :func:`limited_httptools_protocol`  until a request head is complete, then
                              -> 408                                        closes without a response
body time                     none: :class:`BodyReadTimeout` -> 408        none (``read_timeout`` also cuts idle and
                                                                            long-running requests): :class:`BodyReadTimeout`
============================  ===========================================  ==========================================

Status codes: 431 Request Header Fields Too Large (RFC 6585 §5), 408 Request
Timeout (RFC 9110 §15.5.9); both responses carry ``connection: close``. Each
limit hit, and a client that disconnects before its body is read, is logged as
one INFO line on ``gateway.server`` (client address, never the request).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import anyio
from starlette.requests import ClientDisconnect
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["BodyReadTimeout", "limited_httptools_protocol"]

log = logging.getLogger("gateway.server")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def _plain_response(status: int, reason: str) -> bytes:
    body = f"{reason}\n".encode()
    return (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    ).encode() + body


_431 = _plain_response(431, "Request Header Fields Too Large")
_408 = _plain_response(408, "Request Timeout")


def limited_httptools_protocol(*, max_head_bytes: int, head_timeout: float) -> type[HttpToolsProtocol]:
    """A uvicorn ``http`` protocol class: httptools with a request-head size and time limit.

    Args:
        max_head_bytes: Bytes the request line and header fields may take; the
            parser is never fed more than this before the head is complete, so
            memory per connection stays bounded. Over it: 431, connection closed.
        head_timeout: Seconds from the connection's start, or from the first byte
            of a later request on it, until the head is complete. Over it: 408
            (or a plain close when no byte of a request arrived), connection closed.

    Returns:
        A subclass of uvicorn's ``HttpToolsProtocol`` for ``uvicorn.Config(http=...)``.
    """

    class LimitedHttpToolsProtocol(HttpToolsProtocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._in_head = True
            self._head_bytes = 0
            self._head_started = False
            self._head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm_head_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_head_timer()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            while data and not self.transport.is_closing():
                if not self._in_head:
                    super().data_received(data)
                    return
                room = max_head_bytes - self._head_bytes
                piece, data = data[:room], data[room:]
                self._head_bytes += len(piece)
                if piece:
                    super().data_received(piece)
                # Still in the same head (a completed message resets the count): it is too large.
                if data and self._in_head and self._head_bytes >= max_head_bytes and not self.transport.is_closing():
                    self._refuse(_431, "request head larger than %d bytes: 431", max_head_bytes)

        # httptools parser callbacks (called from within feed_data)
        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._head_started = True
            if self._head_timer is None:
                self._arm_head_timer()

        def on_headers_complete(self) -> None:
            self._in_head = False
            self._cancel_head_timer()
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._in_head, self._head_bytes, self._head_started = True, 0, False

        def _arm_head_timer(self) -> None:
            self._head_timer = self.loop.call_later(head_timeout, self._head_timed_out)

        def _cancel_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timed_out(self) -> None:
            self._head_timer = None
            if self._in_head and not self.transport.is_closing():
                if self._head_started:
                    self._refuse(_408, "request head not complete after %gs: 408", head_timeout)
                else:
                    self.transport.close()

        def _refuse(self, response: bytes, message: str, limit: float) -> None:
            self._cancel_head_timer()
            # A previous (pipelined) response still being written must not be interleaved.
            if self.cycle is None or self.cycle.response_complete:
                self.transport.write(response)
            self.transport.close()
            log.info("client %s: " + message, _peer(self.client), limit)

    return LimitedHttpToolsProtocol


def _peer(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "?"


class BodyReadTimeout:
    """Pure ASGI middleware: a request body must arrive within ``timeout`` seconds.

    The clock starts at the application's first ``receive()`` and stops once the
    last body chunk (``more_body`` false) arrived; waiting for ``http.disconnect``
    afterwards (streaming responses) is not limited. When it runs out and no
    response has started, the middleware answers 408 with ``connection: close``
    (the server then closes the connection), hands the application an
    ``http.disconnect`` and drops whatever it sends afterwards. Starlette's
    ``ClientDisconnect`` escaping the application after a disconnect is logged as
    one INFO line instead of the server's ERROR traceback. Cost: one extra
    coroutine call per ASGI message.

    Args:
        app: The ASGI application.
        timeout: Seconds (> 0).
    """

    def __init__(self, app: ASGIApp, timeout: float) -> None:
        self.app = app
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        deadline: float | None = None
        body_done = started = timed_out = disconnected = False

        async def timed_receive() -> Message:
            nonlocal deadline, body_done, timed_out, disconnected
            if timed_out:
                return {"type": "http.disconnect"}
            if body_done:
                return await receive()
            if deadline is None:
                deadline = anyio.current_time() + self.timeout
            with anyio.move_on_after(max(0.0, deadline - anyio.current_time())) as cancel:
                message = await receive()
            if cancel.cancelled_caught:
                timed_out = True
                if not started:
                    await send(
                        {
                            "type": "http.response.start",
                            "status": 408,
                            "headers": [
                                (b"content-type", b"text/plain; charset=utf-8"),
                                (b"connection", b"close"),
                            ],
                        }
                    )
                    await send({"type": "http.response.body", "body": b"Request Timeout\n"})
                log.info(
                    "client %s: request body not complete after %gs: 408", _peer(scope.get("client")), self.timeout
                )
                return {"type": "http.disconnect"}
            if message["type"] == "http.disconnect":
                body_done = disconnected = True
            elif not message.get("more_body", False):
                body_done = True
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            if timed_out:
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, timed_receive, tracked_send)
        except ClientDisconnect:
            if not (disconnected or timed_out):
                raise
            if not timed_out:
                log.info("client %s disconnected before its request body was read", _peer(scope.get("client")))
