"""A 2026-07-28 client asked by a handshake-era upstream: the call is held, the question is MRTR.

A 2026-07-28 client is never sent a request mid-call: a server that needs input answers
``input_required`` (``inputRequests`` + ``requestState``) and the client retries the
request with ``inputResponses`` and the echoed ``requestState`` (MCP 2026-07-28
``basic/patterns/mrtr``). A handshake-era upstream does not know this: it sends its
``sampling/createMessage``, ``elicitation/create`` or ``roots/list`` as a request on the
call's stream and waits for the answer. The gateway bridges the two:

* every 2026-07-28 ``tools/call``, ``prompts/get``, ``resources/read`` and
  ``completion/complete`` runs as a :class:`HeldCall`, detached from the HTTP request;
* when the upstream asks something (after policy allowed it), the client's answer is
  ``input_required`` with the question under a key and ``requestState`` = the held call's
  handle (``gw1.<random>``, bound to the caller, unguessable); the call keeps running,
  waiting for the answer;
* the client's retry carrying that ``requestState`` is routed to the held call: its
  ``inputResponses`` answer the questions, and the retry's answer is the next thing that
  happens (another ``input_required``, or the result under the retry's id);
* a question not answered within :data:`~gateway.dataplane.relay.ANSWER_TIMEOUT` is
  answered ``client_timeout`` to the upstream; a client that closes its stream cancels
  the call; a result nobody collects is dropped after :data:`KEEP_RESULT` seconds.
"""

from __future__ import annotations

import itertools
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import anyio

from gateway.dataplane.relay import ANSWER_TIMEOUT, Outbox
from gateway.dataplane.sessions import Answer
from gateway.mcp.messages import INTERNAL_ERROR, error_response, result_response

__all__ = ["HANDLE_PREFIX", "KEEP_RESULT", "MAX_HELD", "MAX_HELD_PER_OWNER", "HeldCall", "HeldCalls"]

log = logging.getLogger("gateway.mcp")

HANDLE_PREFIX = "gw1."
"""``requestState`` values minted by the gateway start with this; any other is the upstream's."""

KEEP_RESULT = 60.0
"""Seconds a finished held call's result waits for the client's retry."""

MAX_HELD_PER_OWNER = 16
"""Most calls of one caller held at once (so one caller cannot fill :data:`MAX_HELD`)."""

MAX_HELD = 1000
"""Most calls held waiting for a client's answers at once; beyond it the upstream is answered
``-32603`` ``no_back_channel`` (as if the client could not be asked)."""


class HeldCall:
    """One 2026-07-28 request running detached; implements ``ClientChannel`` for its upstream.

    Args:
        store: Where it is registered once it asks something.
        owner: ``(issuer, sub)`` of the caller; only it may retry.
    """

    def __init__(self, store: HeldCalls, owner: tuple[str, str]) -> None:
        self._store = store
        self.owner = owner
        self.handle = HANDLE_PREFIX + secrets.token_urlsafe(32)
        self._outbox: Outbox | None = None
        self._keys = itertools.count(1)
        self._asked: dict[str, tuple[dict[str, Any], Answer]] = {}
        self._changed = anyio.Event()
        self._final: dict[str, Any] | None = None
        self._scope = anyio.CancelScope()
        self.ended_at: float | None = None

    def attach(self, outbox: Outbox) -> None:
        """Relay notifications to this (the latest) request's stream from now on."""
        self._outbox = outbox

    def start(
        self,
        work: Callable[[], Awaitable[dict[str, Any]]],
        spawn: Callable[[Callable[[], Coroutine[Any, Any, None]]], None],
    ) -> None:
        """Run ``work`` (returns the JSON-RPC response) detached, with ``spawn``."""

        async def run() -> None:
            with self._scope:
                try:
                    self._final = await work()
                except Exception as exc:  # boundary: a detached call never raises into the data plane
                    log.error("request failed unexpectedly: %s", type(exc).__name__)
                    self._final = error_response(None, INTERNAL_ERROR, "Gateway error", {"category": "internal_error"})
            self.ended_at = time.monotonic()
            self._changed.set()

        spawn(run)

    def cancel(self) -> None:
        self._scope.cancel()
        self._store.drop(self)

    # ---------------------------------------------------------------- ClientChannel
    async def notify(self, message: dict[str, Any]) -> None:
        if self._outbox is not None:
            await self._outbox.notify(message)

    async def request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """Hold the question for the client's retry (see the module docstring)."""
        if not self._store.hold(self):
            data = {"category": "no_back_channel"}
            return {"error": {"code": INTERNAL_ERROR, "message": "The gateway holds too many calls", "data": data}}
        key = f"q{next(self._keys)}"
        answer = Answer()
        self._asked[key] = ({"method": method, "params": params}, answer)
        self._changed.set()
        try:
            with anyio.move_on_after(ANSWER_TIMEOUT):
                await answer.event.wait()
        finally:
            self._asked.pop(key, None)
        if answer.message is None:
            data = {"category": "client_timeout"}
            return {"error": {"code": INTERNAL_ERROR, "message": f"The client did not answer {method}", "data": data}}
        return answer.message

    # ---------------------------------------------------------------- the client's side
    def answer(self, responses: Any) -> None:
        """Hand a retry's ``inputResponses`` (``{key: result}``) to the questions waiting."""
        if not isinstance(responses, dict):
            return
        for key, result in responses.items():
            asked = self._asked.get(key) if isinstance(key, str) else None
            if asked is not None and asked[1].message is None:
                asked[1].message = {"result": result if isinstance(result, dict) else {}}
                asked[1].event.set()

    async def next(self, request_id: Any) -> dict[str, Any]:
        """The answer to the client's request ``request_id``: the result when the call ends,
        or ``input_required`` with the questions not answered yet. Cancelled (the client
        closed the stream): the call is cancelled."""
        try:
            while True:
                if self._final is not None:
                    self._store.drop(self)
                    return {**self._final, "id": request_id}
                pending = {k: q for k, (q, a) in self._asked.items() if a.message is None}
                if pending:
                    result = {"resultType": "input_required", "inputRequests": pending, "requestState": self.handle}
                    return result_response(request_id, result)
                self._changed = anyio.Event()
                await self._changed.wait()
        except anyio.get_cancelled_exc_class():
            self.cancel()
            raise


class HeldCalls:
    """The held calls of one data plane, by handle."""

    def __init__(self) -> None:
        self._held: dict[str, HeldCall] = {}

    def __len__(self) -> int:
        return len(self._held)

    def new(self, owner: tuple[str, str]) -> HeldCall:
        return HeldCall(self, owner)

    def hold(self, call: HeldCall) -> bool:
        """Register ``call`` (it asked something); False when :data:`MAX_HELD` are held."""
        self._expire()
        if call.handle not in self._held:
            own = sum(1 for c in self._held.values() if c.owner == call.owner)
            if len(self._held) >= MAX_HELD or own >= MAX_HELD_PER_OWNER:
                return False
        self._held[call.handle] = call
        return True

    def get(self, handle: str, owner: tuple[str, str]) -> HeldCall | None:
        """The held call of ``owner`` with this handle, else None."""
        self._expire()
        call = self._held.get(handle)
        if call is None or not secrets.compare_digest("\x00".join(call.owner).encode(), "\x00".join(owner).encode()):
            return None
        return call

    def drop(self, call: HeldCall) -> None:
        self._held.pop(call.handle, None)

    def _expire(self) -> None:
        now = time.monotonic()
        for handle in [h for h, c in self._held.items() if c.ended_at is not None and now - c.ended_at > KEEP_RESULT]:
            del self._held[handle]
