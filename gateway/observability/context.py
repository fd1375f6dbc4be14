"""What one HTTP request has established, for its metrics, access line and server span.

:class:`RequestObserver` (:mod:`gateway.observability.asgi`) puts a fresh
:class:`RequestRecord` in the context variable :data:`CURRENT` for each request; code that
runs for the request (in its task, or in a task spawned from it: asyncio copies the
context, and the record is shared by reference) fills it in through :func:`note_action`
and :func:`note_governed`. Both are one context-variable read and a few attribute
stores; outside a request (background tasks) they do nothing.
"""

from __future__ import annotations

from contextvars import ContextVar

__all__ = ["CURRENT", "OUTCOME_OF_STATUS", "RequestRecord", "note_action", "note_governed"]


OUTCOME_OF_STATUS = {
    "ok": "allowed",
    "tool_error": "allowed",
    "denied": "denied",
    "rejected": "rejected",
    "error": "error",
}
"""Audit event ``status`` -> request ``outcome`` label (``tool_error``: policy allowed the
call and the upstream answered it with an error of its own)."""


class RequestRecord:
    """The request's fields for metrics and the access line (all optional, unbounded as set:
    :mod:`gateway.observability.metrics` bounds them before they become label values).

    Attributes:
        action: The JSON-RPC method of the request (``tools/call``), if it had one.
        server: The upstream server the governed request went to (or the endpoint's).
        tool: The tool (or prompt, resource URI) name the governed request concerned.
        outcome: ``allowed``, ``denied``, ``rejected`` or ``error`` of its first audit event.
        decision_id: The decision id of its first audit event (the one the audit shows).
        protocol: The protocol revision the governor saw (``ctx.protocol_version``).
        trace_id: 32 hex digits of the request's trace, when tracing is on.
    """

    __slots__ = ("action", "decision_id", "outcome", "protocol", "server", "tool", "trace_id")

    def __init__(self) -> None:
        self.action: str | None = None
        self.server: str | None = None
        self.tool: str | None = None
        self.outcome: str | None = None
        self.decision_id: str | None = None
        self.protocol: str | None = None
        self.trace_id: str | None = None


CURRENT: ContextVar[RequestRecord | None] = ContextVar("gateway_request_record", default=None)
"""The record of the HTTP request being served (None outside one)."""


def note_action(action: str | None) -> None:
    """Record the request's JSON-RPC method (the first one noted wins)."""
    record = CURRENT.get()
    if record is not None and record.action is None:
        record.action = action


def note_governed(
    *, decision_id: str, server: str | None, tool: str | None, status: str, protocol_version: str | None
) -> None:
    """Record the request's first audit event (later ones, e.g. an upstream's sampling request
    decided during a ``tools/call``, belong to the same request but do not replace it).

    Args:
        decision_id: The event's ``decision_id``.
        server: The event's ``server``.
        tool: The event's ``tool``.
        status: The event's ``status`` (``ok``, ``tool_error``, ``denied``, ``rejected``, ``error``).
        protocol_version: The caller's negotiated protocol revision.
    """
    record = CURRENT.get()
    if record is None or record.decision_id is not None:
        return
    record.decision_id = decision_id
    record.server = server
    record.tool = tool
    record.outcome = OUTCOME_OF_STATUS.get(status, "error")
    record.protocol = protocol_version
