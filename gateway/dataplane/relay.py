"""Server-to-client traffic, relayed to the caller of the request it belongs to.

While a governed request (``tools/call``, ``resources/read``, ``prompts/get``,
``completion/complete``) runs, its upstream may send progress, log messages and
list changes, and may ask the caller's client something (``sampling/createMessage``,
``elicitation/create``, ``roots/list``). Here:

* :class:`Outbox` is the caller's end: the messages for the response's SSE stream
  and, in the handshake era, the client's responses to what it was asked (routed
  back by :meth:`~gateway.dataplane.sessions.Session.deliver`);
* :class:`RelayResponse` answers the request with one ``application/json`` body when
  nothing was relayed before the response (no cost beyond a task), and otherwise
  switches to ``text/event-stream``: the relayed messages, then the response, then the
  end of the stream. A client that goes away cancels the request, which the upstream
  is told with ``notifications/cancelled``. Source: MCP 2025-11-25
  ``basic/transports`` (a POST answered with an SSE stream "MAY send JSON-RPC requests
  and notifications before sending the JSON-RPC response") and MCP 2026-07-28
  ``basic/transports/streamable-http`` (the stream carries notifications related to
  the request, never requests; closing it cancels the request);
* :class:`GovernedChannel` is what the upstream transports see
  (:class:`~gateway.mcp.channel.ClientChannel`): notifications pass (on ``/mcp`` a
  ``notifications/resources/updated`` URI is namespaced), and each request of the
  client is a policy decision of its own (``action`` = its method) with its own audit
  event, relayed only when allowed and only when the client declared the capability;
* :func:`settle_input_required` serves a handshake-era client whose upstream speaks
  2026-07-28: the upstream's ``input_required`` result (MRTR) is answered by asking the
  client each of its ``inputRequests`` as an ordinary server-to-client request, then
  retrying the original request with ``inputResponses`` and the echoed ``requestState``,
  so the client gets the complete result its SDK can parse.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import anyio
import orjson
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gateway.dataplane.namespacing import namespace_uri
from gateway.dataplane.sessions import Session
from gateway.mcp.messages import INTERNAL_ERROR, METHOD_NOT_FOUND, error_response

if TYPE_CHECKING:
    from gateway.dataplane.governance import CallContext, Governor
    from gateway.dataplane.projection import ActiveProjection, ToolEntry

__all__ = [
    "ANSWER_TIMEOUT",
    "MAX_INPUT_ROUNDS",
    "RELAYED_NOTIFICATIONS",
    "RELAYED_REQUESTS",
    "SSE_HEADERS",
    "GovernedChannel",
    "Outbox",
    "RelayResponse",
    "settle_input_required",
]

log = logging.getLogger("gateway.mcp")

RELAYED_REQUESTS: Mapping[str, str] = {
    "sampling/createMessage": "sampling",
    "elicitation/create": "elicitation",
    "roots/list": "roots",
}
"""Upstream requests relayed to the client, and the client capability each needs."""

RELAYED_NOTIFICATIONS = frozenset(
    {
        "notifications/progress",
        "notifications/message",
        "notifications/resources/updated",
        "notifications/resources/list_changed",
        "notifications/tools/list_changed",
        "notifications/prompts/list_changed",
    }
)
"""Upstream notifications relayed to the client; others are dropped."""

ANSWER_TIMEOUT = 300.0
"""Seconds the gateway waits for the client to answer a relayed request (a person may be
answering an elicitation). Then the upstream is answered ``-32603`` ``client_timeout``."""

MAX_INPUT_ROUNDS = 8
"""Most ``input_required`` rounds :func:`settle_input_required` goes through for one request."""

MAX_QUEUED = 4096
"""Most messages queued on a long-lived stream (:meth:`Outbox.put`)."""

_BUFFER = 256
"""Relayed messages buffered for a slow client; beyond it notifications are dropped (counted)."""


def _client_error(message: str, category: str, code: int = INTERNAL_ERROR) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "data": {"category": category}}}


class Outbox:
    """The caller's end of one request in flight (implements ``ClientChannel`` for the PEP).

    Args:
        session: The client's handshake-era session (its requests are answered on it), or
            None (2026-07-28): such a client is never sent a request mid-call.
        answer_timeout: Seconds to wait for the client's response to a relayed request.
    """

    def __init__(self, session: Session | None, *, answer_timeout: float = ANSWER_TIMEOUT) -> None:
        self._session = session
        self._timeout = answer_timeout
        # Unbounded, so the response and the requests always fit; notifications are capped
        # at _BUFFER queued messages by notify().
        self._send, self.receive = anyio.create_memory_object_stream[tuple[bool, dict[str, Any]]](math.inf)
        self.dropped = 0
        """Notifications dropped because the client did not keep up."""
        self.overflowed = False
        """A message that must not be dropped did not fit (:meth:`put`)."""

    async def notify(self, message: dict[str, Any]) -> None:
        """Queue a notification for the response stream (dropped when the client lags)."""
        if self._send.statistics().current_buffer_used >= _BUFFER:
            self.dropped += 1
            if self.dropped == 1:
                log.warning("client is not reading its response stream: relayed notifications dropped")
            return
        try:
            self._send.send_nowait((False, message))
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass

    async def request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """Send a request on the response stream and wait for the client's response.

        Returns:
            ``{"result": ...}`` or ``{"error": ...}``: the client's answer, or ``-32603``
            with ``data.category`` ``no_back_channel`` (no session), ``client_timeout``
            or ``client_gone``.
        """
        session = self._session
        if session is None:
            return _client_error("This client cannot be sent requests during a call", "no_back_channel")
        request_id, answer = session.expect()
        try:
            try:
                await self._send.send((False, {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}))
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                return _client_error("The client's response stream is closed", "client_gone")
            with anyio.move_on_after(self._timeout):
                await answer.event.wait()
        finally:
            session.answers.pop(request_id, None)
        msg = answer.message
        if msg is None:
            return _client_error(f"The client did not answer {method} within {self._timeout:g}s", "client_timeout")
        if isinstance(msg.get("error"), dict):
            return {"error": msg["error"]}
        result = msg.get("result")
        return {"result": result if isinstance(result, dict) else {}}

    def put(self, message: dict[str, Any]) -> None:
        """Queue a message that must not be dropped (a response on a long-lived stream).

        Beyond :data:`MAX_QUEUED` queued messages the client is not reading its stream:
        the message is dropped and :attr:`overflowed` set, which ends the stream.
        """
        if self._send.statistics().current_buffer_used >= MAX_QUEUED:
            if not self.overflowed:
                log.warning("client is not reading its event stream: ending it")
            self.overflowed = True
            return
        try:
            self._send.send_nowait((False, message))
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass

    def finish(self, response: dict[str, Any]) -> None:
        """Queue the response itself: the last message of the stream."""
        try:
            self._send.send_nowait((True, response))
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass


SSE_HEADERS = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache, no-transform"),
    (b"x-accel-buffering", b"no"),
]
"""The response headers of a gateway event stream (MCP 2026-07-28 ``streamable-http``: SHOULD
send ``X-Accel-Buffering: no``)."""


def _event(message: dict[str, Any]) -> bytes:
    return b"event: message\ndata: " + orjson.dumps(message) + b"\n\n"


class RelayResponse(Response):
    """The answer to one governed request: JSON, or an SSE stream once something is relayed.

    A request the client cancelled (``notifications/cancelled``) gets no JSON-RPC response:
    its answer is an event stream that ends without one.

    Args:
        outbox: The request's :class:`Outbox`.
        work: Runs the governed request; returns the JSON-RPC response message. An
            exception is answered ``-32603`` ``internal_error`` (the PEP has audited it).
        status: The HTTP status of a JSON answer, from the response message.
        headers: Extra headers for either form.
        request_id: The client's JSON-RPC id (for the ``-32603`` answers).
        on_start: Called with the cancel scope of ``work`` before it runs, so a
            ``notifications/cancelled`` can reach it; ``on_end`` when it has ended.
        stream: Answer with an SSE stream at once (a listening stream: ``GET`` or
            ``subscriptions/listen``), which lasts until ``work`` returns or the client leaves.
    """

    def __init__(
        self,
        outbox: Outbox,
        work: Callable[[], Awaitable[dict[str, Any]]],
        *,
        status: Callable[[dict[str, Any]], int],
        request_id: Any,
        headers: Mapping[str, str] | None = None,
        on_start: Callable[[anyio.CancelScope], None] | None = None,
        on_end: Callable[[], None] | None = None,
        stream: bool = False,
    ) -> None:
        super().__init__(status_code=200, headers=headers)
        self._stream = stream
        self._outbox = outbox
        self._work = work
        self._status = status
        self._request_id = request_id
        self._on_start = on_start
        self._on_end = on_end

    async def _run(self) -> None:
        reply: dict[str, Any]
        with anyio.CancelScope() as scope:
            if self._on_start is not None:
                self._on_start(scope)
            try:
                reply = await self._work()
            except Exception as exc:  # boundary: the endpoint's mapping, for a streamed answer
                log.error("request failed unexpectedly: %s", type(exc).__name__)
                reply = error_response(
                    self._request_id, INTERNAL_ERROR, "Gateway error", {"category": "internal_error"}
                )
            finally:
                if self._on_end is not None:
                    self._on_end()
        # notifications/cancelled: no response is sent for the request (MCP 2025-11-25
        # utilities/cancellation); {} ends the answer without one.
        self._outbox.finish({} if scope.cancelled_caught else reply)

    def _start(self, status: int, content_type: bytes | None) -> dict[str, Any]:
        raw = [(k, v) for k, v in self.raw_headers if k not in (b"content-length", b"content-type")]
        if content_type is not None:
            raw.append((b"content-type", content_type))
        return {"type": "http.response.start", "status": status, "headers": raw}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        done = False  # the whole answer was handed to the server
        async with anyio.create_task_group() as tg:

            async def watch_disconnect() -> None:
                # From the start: a client that leaves before anything was relayed cancels too.
                while (await receive())["type"] != "http.disconnect":
                    pass
                # A server may report the end of the exchange as a disconnect once the answer is
                # complete (uvicorn does): that is no client leaving, and nothing is left to cancel.
                if not done:
                    log.info("client closed its connection: the request is cancelled")
                tg.cancel_scope.cancel()

            tg.start_soon(watch_disconnect)
            tg.start_soon(self._run)
            first: dict[str, Any] | None = None
            final = False
            if not self._stream:
                final, first = await self._outbox.receive.receive()
            if final and first:
                body = orjson.dumps(first)
                start = self._start(self._status(first), b"application/json")
                start["headers"].append((b"content-length", str(len(body)).encode()))
                await send(start)
                done = True
                await send({"type": "http.response.body", "body": body})
                tg.cancel_scope.cancel()
                return

            start = self._start(200, None)
            start["headers"].extend(SSE_HEADERS)
            await send(start)
            body = _event(first) if first else b""
            await send({"type": "http.response.body", "body": body, "more_body": True})
            while not final:
                final, message = await self._outbox.receive.receive()
                if message:
                    await send({"type": "http.response.body", "body": _event(message), "more_body": True})
            done = True
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            tg.cancel_scope.cancel()


class GovernedChannel:
    """What an upstream transport relays to: the policy-checked way to the caller's client.

    Args:
        governor: Decides and audits each request of the client.
        projection: The projection the originating request was resolved in.
        ctx: The originating request's caller and client.
        server: The upstream the messages come from.
        tool: The tool whose ``tools/call`` this is, if it is one (``input.tool``).
        on_list_changed: Called with ``server`` when it announces a changed tool list
            (the drift check re-lists it).
    """

    def __init__(
        self,
        governor: Governor,
        projection: ActiveProjection,
        ctx: CallContext,
        server: str,
        tool: ToolEntry | None = None,
        on_list_changed: Callable[[str], None] | None = None,
    ) -> None:
        self._governor = governor
        self._projection = projection
        self._ctx = ctx
        self._server = server
        self._tool = tool
        self._on_list_changed = on_list_changed

    @property
    def server(self) -> str:
        """The upstream server this channel's request went to (a name of its projection)."""
        return self._server

    @property
    def transport(self) -> str:
        """That server's transport in the channel's projection (``unknown`` when it is not there)."""
        entry = self._projection.servers.get(self._server)
        return entry.transport if entry is not None else "unknown"

    async def notify(self, message: dict[str, Any]) -> None:
        """Relay one of :data:`RELAYED_NOTIFICATIONS` (others are dropped)."""
        method = message.get("method")
        if method == "notifications/tools/list_changed" and self._on_list_changed is not None:
            self._on_list_changed(self._server)
        client = self._ctx.client
        if client is None or method not in RELAYED_NOTIFICATIONS:
            return
        params = message.get("params")
        if (
            method == "notifications/resources/updated"
            and self._ctx.server is None
            and isinstance(params, dict)
            and isinstance(params.get("uri"), str)
        ):
            message = {**message, "params": {**params, "uri": namespace_uri(self._server, params["uri"])}}
        await client.notify(message)

    async def request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """Relay an upstream's request when the client can take it and policy allows it.

        Returns:
            The client's ``{"result"}``/``{"error"}``; ``-32601`` for a method that is not
            relayed or whose capability the client did not declare; ``-32603``
            ``no_back_channel`` when the client cannot be asked mid-call; ``-32003`` when
            policy refused (see :meth:`~gateway.dataplane.governance.Governor.govern_client_request`).
        """
        capability = RELAYED_REQUESTS.get(method)
        refusal: dict[str, Any] | None = None
        if capability is None:
            refusal = _client_error(f"Method not found: {method}", "not_relayed", METHOD_NOT_FOUND)
        elif capability not in self._ctx.client_capabilities:
            message = f"The client did not declare the {capability} capability"
            refusal = _client_error(message, "capability_not_declared", METHOD_NOT_FOUND)
        elif self._ctx.client is None or not self._ctx.can_ask:
            refusal = _client_error("This client cannot be sent requests during a call", "no_back_channel")
        if refusal is not None:  # refused before policy: audited all the same
            return self._governor.refuse_client_request(
                self._projection, self._ctx, self._server, self._tool, method, params, refusal["error"]
            )
        client = self._ctx.client
        assert client is not None

        async def ask() -> dict[str, Any]:
            return await client.request(method, params)

        return await self._governor.govern_client_request(
            self._projection, self._ctx, self._server, self._tool, method, params, ask
        )

    async def check_input_requests(self, result: dict[str, Any]) -> dict[str, Any] | None:
        """Decide each input request of an ``input_required`` result bound for a 2026-07-28 client.

        The result reaches the client whole or not at all, and every input request gets one
        audit event saying which: first each is checked for a relayed method and a declared
        capability (the first that fails is ``rejected``, the others ``rejected``
        ``withheld``); then each is a policy decision of its own, made concurrently. When
        every one is allowed they are audited ``ok`` ("passed to the client"; the client
        answers them in its retry); when any is denied, that one is ``denied`` and the allowed
        ones ``error`` ``withheld``.

        Returns:
            None when every one may reach the client, else the JSON-RPC error object to
            answer instead (the refusal of the first refused, in the result's order).
        """
        requests = result.get("inputRequests")
        if not isinstance(requests, dict):
            return None
        asked: list[tuple[str, dict[str, Any]]] = []
        refused: list[dict[str, Any] | None] = []  # why each cannot reach the client, before policy
        for request in requests.values():
            method = request.get("method") if isinstance(request, dict) else None
            params = request.get("params") if isinstance(request, dict) else None
            asked.append((str(method)[:128], params if isinstance(params, dict) else {}))
            capability = RELAYED_REQUESTS.get(method) if isinstance(method, str) else None
            if capability is None or capability not in self._ctx.client_capabilities:
                category = "not_relayed" if capability is None else "capability_not_declared"
                message = f"Cannot ask the client {method!r}"
                refused.append({"code": METHOD_NOT_FOUND, "message": message, "data": {"category": category}})
            else:
                refused.append(None)
        first = next((error for error in refused if error is not None), None)
        if first is not None:
            for (method, _), error in zip(asked, refused, strict=True):  # each audited like any refusal
                reason = error if error is first else _withheld()
                self._governor.refuse_client_request(
                    self._projection, self._ctx, self._server, self._tool, method, {}, reason
                )
            return first
        return await self._decide_all(asked)

    async def _decide_all(self, asked: list[tuple[str, dict[str, Any]]]) -> dict[str, Any] | None:
        decided = 0
        all_decided = anyio.Event()
        refusals: dict[int, dict[str, Any]] = {}

        def one_more() -> None:
            nonlocal decided
            decided += 1
            if decided == len(asked):
                all_decided.set()

        async def decide(index: int, method: str, params: dict[str, Any]) -> None:
            allowed = False

            async def passed() -> dict[str, Any]:  # policy allowed it: wait for the others' verdicts
                nonlocal allowed
                allowed = True
                one_more()
                await all_decided.wait()
                return {"error": _withheld()} if refusals else {"result": {}}

            verdict = await self._governor.govern_client_request(
                self._projection, self._ctx, self._server, self._tool, method, params, passed
            )
            if not allowed:
                error = verdict.get("error")
                refusals[index] = error if isinstance(error, dict) else {"code": INTERNAL_ERROR, "message": "Refused"}
                one_more()

        async with anyio.create_task_group() as tg:
            for index, (method, params) in enumerate(asked):
                tg.start_soon(decide, index, method, params)
        return refusals[min(refusals)] if refusals else None


def _withheld() -> dict[str, Any]:
    message = "Not passed to the client: another input request of the same result was refused"
    return {"code": INTERNAL_ERROR, "message": message, "data": {"category": "withheld"}}


async def settle_input_required(
    reply: dict[str, Any],
    channel: GovernedChannel,
    resend: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]],
) -> dict[str, Any]:
    """Turn a 2026-07-28 upstream's ``input_required`` result into a complete one (MRTR).

    Args:
        reply: The upstream's response message.
        channel: Asks the client each input request (policy-decided, audited).
        resend: Retries the original request with ``{"inputResponses", "requestState"}``
            added to its params; returns the next response message.

    Returns:
        The first response that is not ``input_required``; the response is returned as is
        when it never was. ``-32603`` ``input_refused`` (with the client's or policy's
        error as ``data.error``) when an input request was not answered, and
        ``input_rounds_exceeded`` after :data:`MAX_INPUT_ROUNDS` rounds. Source: MCP
        2026-07-28 ``basic/patterns/mrtr``.
    """
    for _ in range(MAX_INPUT_ROUNDS):
        result = reply.get("result")
        if not isinstance(result, dict) or result.get("resultType") != "input_required":
            return reply
        requests = result.get("inputRequests") or {}
        responses: dict[str, Any] = {}
        if isinstance(requests, dict):
            for key, request in requests.items():
                method = request.get("method") if isinstance(request, dict) else None
                params = request.get("params") if isinstance(request, dict) else None
                answer = await channel.request(str(method), params if isinstance(params, dict) else {})
                if "result" not in answer:
                    data = {"category": "input_refused", "error": answer.get("error")}
                    return {"error": {"code": INTERNAL_ERROR, "message": f"{method} was not answered", "data": data}}
                responses[str(key)] = answer["result"]
        extra: dict[str, Any] = {"inputResponses": responses}
        if "requestState" in result:
            extra["requestState"] = result["requestState"]
        reply = await resend(extra)
    data = {"category": "input_rounds_exceeded"}
    return {"error": {"code": INTERNAL_ERROR, "message": "The upstream kept asking for input", "data": data}}
