"""What the upstream transports share: the gateway's client identity, log-safe URLs, message decoding."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import anyio
import orjson

from gateway.errors import UpstreamError, UpstreamProtocolError

__all__ = ["CLIENT_INFO", "Pending", "loads_message", "safe_url"]

CLIENT_INFO = {"name": "mcp-opa-gateway", "version": "0.1.0"}
"""``clientInfo`` the gateway sends in every ``initialize`` (MCP ``Implementation``)."""


def safe_url(url: str) -> str:
    """``url`` without userinfo, query or fragment: safe for logs and error messages."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = f"{host}:{port}" if port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def loads_message(raw: bytes | str, where: str) -> dict[str, Any]:
    """Decode one JSON-RPC message (a JSON object).

    Args:
        raw: The encoded message.
        where: Names the upstream in the error (already log-safe).

    Raises:
        UpstreamProtocolError: Not JSON, or not an object.
    """
    try:
        msg = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise UpstreamProtocolError(f"upstream {where} sent invalid JSON") from exc
    if not isinstance(msg, dict):
        raise UpstreamProtocolError(f"upstream {where} sent a non-object message")
    return msg


@dataclass(eq=False)
class _Slot:
    event: anyio.Event = field(default_factory=anyio.Event)
    message: dict[str, Any] | None = None
    error: UpstreamError | None = None


class Pending:
    """The requests sent on one multiplexed session (stdio, legacy HTTP+SSE), by integer id,
    waiting for their responses."""

    def __init__(self) -> None:
        self._slots: dict[int, _Slot] = {}

    def open(self, req_id: int) -> _Slot:
        slot = self._slots[req_id] = _Slot()
        return slot

    def close(self, req_id: int) -> None:
        self._slots.pop(req_id, None)

    def deliver(self, msg: dict[str, Any]) -> None:
        """Hand a response (``result`` or ``error``) to the request with its id; others are ignored."""
        msg_id = msg.get("id")
        slot = self._slots.get(msg_id) if isinstance(msg_id, int) and not isinstance(msg_id, bool) else None
        if slot is not None and ("result" in msg or "error" in msg) and slot.message is None:
            slot.message = msg
            slot.event.set()

    def fail(self, kind: type[UpstreamError], reason: str) -> None:
        """Wake every request still waiting with a ``kind(reason)`` of its own (the session is gone)."""
        for slot in self._slots.values():
            if slot.message is None and slot.error is None:
                slot.error = kind(reason)
                slot.event.set()

    @staticmethod
    def outcome(slot: _Slot) -> dict[str, Any]:
        """The response a woken slot got.

        Raises:
            UpstreamError: The session failed first.
        """
        if slot.error is not None:
            raise slot.error
        assert slot.message is not None
        return slot.message
