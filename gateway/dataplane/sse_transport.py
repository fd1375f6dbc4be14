"""The 2024-11-05 HTTP+SSE transport, served to clients that speak only it.

Source: MCP 2024-11-05 ``basic/transports`` "HTTP with SSE":

* ``GET /sse`` (or ``/sse/{server}``), authenticated like ``/mcp``, opens a session and
  its event stream. The first event is ``endpoint``, whose data is where to POST:
  ``/messages?session_id=<id>`` (``/messages/{server}?session_id=<id>``); every server
  message then arrives as a ``message`` event on this stream: responses, what upstreams
  relay during a call (progress, log messages, requests of the client) and what they
  announce outside calls (list changes, updates of subscribed resources). Closing the
  stream ends the session;
* ``POST /messages?session_id=<id>``: one JSON-RPC message, by the subject that opened
  the session (another subject's, or an unknown id: 404); answered ``202 Accepted`` and
  handled in the background: ``initialize`` (any handshake-era revision the client asks
  for, else ``2024-11-05``), then the same governed methods as on ``/mcp``
  (:func:`~gateway.dataplane.endpoint.session_reply`), the client's responses to
  relayed requests, and ``notifications/cancelled``.
"""

from __future__ import annotations

import logging
from typing import Any

import anyio
import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gateway.dataplane.endpoint import (
    SERVER_INFO,
    authenticate,
    cancel_request,
    request_key,
    session_context,
    session_reply,
    unauthorized,
)
from gateway.dataplane.feature_routing import advertised_capabilities
from gateway.dataplane.relay import Outbox
from gateway.dataplane.sessions import Session, SessionLimitReached
from gateway.errors import AuthenticationFailed, RequestRejected
from gateway.mcp.messages import (
    HANDSHAKE_VERSIONS,
    INTERNAL_ERROR,
    INVALID_REQUEST,
    error_response,
    parse_message,
    result_response,
)
from gateway.policy.input import Subject

__all__ = ["LEGACY_SSE_VERSION", "MAX_RUNNING", "sse_connect", "sse_message"]

log = logging.getLogger("gateway.mcp")

MAX_RUNNING = 32
"""Most requests of one HTTP+SSE session in progress at once; more are answered ``-32603``
``too_many_requests`` on the stream."""

LEGACY_SSE_VERSION = "2024-11-05"
"""The revision a client of this transport gets unless it asks for another handshake-era one."""


class _EventStream(Response):
    """``endpoint`` first, then every queued message as a ``message`` event, until the client leaves."""

    def __init__(self, endpoint: str, outbox: Outbox, on_close: Any) -> None:
        super().__init__(status_code=200)
        self._endpoint, self._outbox, self._on_close = endpoint, outbox, on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [
            (b"content-type", b"text/event-stream"),
            (b"cache-control", b"no-cache, no-transform"),
            (b"x-accel-buffering", b"no"),
        ]
        try:
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            first = b"event: endpoint\ndata: " + self._endpoint.encode() + b"\n\n"
            await send({"type": "http.response.body", "body": first, "more_body": True})
            async with anyio.create_task_group() as tg:

                async def watch_disconnect() -> None:
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    tg.cancel_scope.cancel()

                tg.start_soon(watch_disconnect)
                while not self._outbox.overflowed:
                    _, message = await self._outbox.receive.receive()
                    body = b"event: message\ndata: " + orjson.dumps(message) + b"\n\n"
                    await send({"type": "http.response.body", "body": body, "more_body": True})
                tg.cancel_scope.cancel()
        finally:
            self._on_close()


def _server(request: Request) -> tuple[str | None, Response | None]:
    server = request.path_params.get("server")
    projection = request.state.dp_sync.current
    if server is not None and (projection is None or server not in projection.servers):
        return server, Response(orjson.dumps({"error": "unknown_server"}), 404, media_type="application/json")
    return server, None


async def _caller(request: Request) -> tuple[str | None, Subject | Response]:
    """The endpoint's server and the verified caller, or the 401/404 to answer instead."""
    server, refused = _server(request)
    try:
        subject = await authenticate(request, server)
    except AuthenticationFailed as exc:
        return server, unauthorized(request, server, exc)
    return server, subject if refused is None else refused


async def sse_connect(request: Request) -> Response:
    """``GET /sse[/{server}]``: open a session and its event stream (see the module docstring)."""
    server, subject = await _caller(request)
    if isinstance(subject, Response):
        return subject
    owner = (subject.issuer, subject.sub)
    sessions = request.state.dp_sessions
    try:
        # Not resumable: the session lives on its one event stream, on this data plane.
        session: Session = sessions.create(owner, LEGACY_SSE_VERSION, {}, resumable=False)
    except SessionLimitReached:
        return Response(b'{"error": "too_many_sessions"}', 503, media_type="application/json")
    listener = request.state.dp_hub.session_listener(session, server)
    session.stream_open = True  # its one stream is this one (no GET /mcp stream besides)
    path = "/messages" if server is None else f"/messages/{server}"
    log.info("legacy SSE session opened")
    return _EventStream(f"{path}?session_id={session.id}", listener.outbox, lambda: sessions.delete(session.id, owner))


async def sse_message(request: Request) -> Response:
    """``POST /messages[/{server}]?session_id=<id>``: one message of an HTTP+SSE session; 202."""
    server, subject = await _caller(request)
    if isinstance(subject, Response):
        return subject
    session: Session | None = request.state.dp_sessions.get(
        request.query_params.get("session_id", ""), (subject.issuer, subject.sub), resume=False
    )
    if session is None or session.listener is None:
        return Response(b'{"error": "unknown_session"}', 404, media_type="application/json")
    outbox = session.listener.outbox
    try:
        body = await request.body()
    except ClientDisconnect:
        return Response(status_code=400)
    if len(body) > request.state.dp_config.data_plane.max_body:
        return Response(orjson.dumps(error_response(None, INVALID_REQUEST, "Request body too large")), 413)
    try:
        msg = parse_message(body)
    except RequestRejected as exc:
        return Response(
            orjson.dumps(error_response(None, exc.args[1], exc.args[0])), 400, media_type="application/json"
        )
    if msg.kind == "response":
        session.deliver(msg.raw)
    elif msg.kind == "notification":
        if msg.method == "notifications/cancelled":
            cancel_request(session, msg.params)
    elif msg.method == "initialize":
        requested = msg.params.get("protocolVersion")
        session.protocol_version = requested if requested in HANDSHAKE_VERSIONS else LEGACY_SSE_VERSION
        declared = msg.params.get("capabilities")
        session.capabilities = declared if isinstance(declared, dict) else {}
        capabilities = advertised_capabilities(request.state.dp_sync.current, server, handshake=True)
        result = {"protocolVersion": session.protocol_version, "capabilities": capabilities, "serverInfo": SERVER_INFO}
        outbox.put(result_response(msg.id, result))
    elif len(session.running) >= MAX_RUNNING:
        data = {"category": "too_many_requests"}
        outbox.put(error_response(msg.id, INTERNAL_ERROR, f"More than {MAX_RUNNING} requests in progress", data))
    else:
        request.state.dp_hub.spawn(lambda: _answer(request, msg, subject, server, session, outbox))
    return Response(b"Accepted", 202, media_type="text/plain")


async def _answer(
    request: Request, msg: Any, subject: Any, server: str | None, session: Session, outbox: Outbox
) -> None:
    """Handle one request in the background; its response goes on the session's stream."""
    ctx = session_context(subject, session, server, outbox)
    key = request_key(msg.id)
    with anyio.CancelScope() as scope:
        session.running[key] = scope
        if session.listener is None:  # the session ended before the request started
            scope.cancel()
        try:
            reply = await session_reply(request, msg, ctx, session)
        except Exception as exc:  # boundary: a background task never raises into the data plane
            log.error("request failed unexpectedly: %s", type(exc).__name__)
            reply = error_response(msg.id, INTERNAL_ERROR, "Gateway error", {"category": "internal_error"})
        finally:
            session.running.pop(key, None)
    if not scope.cancelled_caught:  # a cancelled request gets no response (MCP utilities/cancellation)
        outbox.put(reply)
