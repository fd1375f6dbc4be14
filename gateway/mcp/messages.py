"""JSON-RPC 2.0 parsing and classification for MCP messages (pure, no I/O).

Messages stay raw ``dict``s parsed once with orjson: a proxy must forward
fields it does not know (the SDK's pydantic models drop them). Source:
JSON-RPC 2.0 §4-5; MCP 2025-11-25 ``basic/index``; MCP 2026-07-28
``basic/index`` (per-request ``_meta`` envelope, error-code partition).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import orjson

from gateway.errors import RequestRejected

__all__ = [
    "HANDSHAKE_VERSIONS",
    "INTERNAL_ERROR",
    "INVALID_PARAMS",
    "INVALID_REQUEST",
    "METHOD_NOT_FOUND",
    "MODERN_VERSIONS",
    "PARSE_ERROR",
    "POLICY_DENIED",
    "JsonRpcMessage",
    "error_response",
    "parse_message",
    "result_response",
]

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
POLICY_DENIED = -32003
"""Implementation-defined code (MCP 2026-07-28 reserves -32020..-32099 for the
spec; -32000..-32019 are ours) for a request the gateway refused: policy deny,
policy unavailable, upstream failure. ``error.data.category`` says which."""

MODERN_VERSIONS: tuple[str, ...] = ("2026-07-28",)
"""Stateless protocol revisions (per-request ``_meta`` envelope)."""
HANDSHAKE_VERSIONS: tuple[str, ...] = ("2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05")
"""Handshake-era revisions, newest first (``initialize`` + sessions)."""

Kind = Literal["request", "notification", "response"]


@dataclass(frozen=True, slots=True)
class JsonRpcMessage:
    """One parsed JSON-RPC message.

    Attributes:
        kind: ``request`` (has ``id`` and ``method``), ``notification``
            (``method``, no ``id``) or ``response`` (``result``/``error``).
        id: The request id (str or int), ``None`` for notifications.
        method: The method name, ``None`` for responses.
        params: ``params`` as a dict (``{}`` when absent).
        raw: The whole decoded message.
    """

    kind: Kind
    id: str | int | None
    method: str | None
    params: dict[str, Any]
    raw: dict[str, Any]


def parse_message(body: bytes) -> JsonRpcMessage:
    """Parse one JSON-RPC 2.0 message (batches are not part of MCP since 2025-06-18).

    Args:
        body: The HTTP request body, UTF-8 JSON.

    Returns:
        The classified message.

    Raises:
        RequestRejected: Invalid JSON (``args[1] == PARSE_ERROR``) or not a
            JSON-RPC 2.0 message (``args[1] == INVALID_REQUEST``).
    """
    try:
        raw = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise RequestRejected("request body is not valid JSON", PARSE_ERROR) from exc
    if not isinstance(raw, dict):
        raise RequestRejected("expected one JSON-RPC 2.0 object (batches are not supported)", INVALID_REQUEST)
    if raw.get("jsonrpc") != "2.0":
        raise RequestRejected('"jsonrpc" must be "2.0"', INVALID_REQUEST)
    params = raw.get("params", {})
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise RequestRejected('"params" must be an object', INVALID_REQUEST)
    method = raw.get("method")
    has_id = "id" in raw
    msg_id = raw.get("id")
    if has_id and (isinstance(msg_id, bool) or not isinstance(msg_id, (str, int))):
        if method is not None or msg_id is not None:
            raise RequestRejected('"id" must be a string or an integer', INVALID_REQUEST)
    if method is not None:
        if not isinstance(method, str) or not method:
            raise RequestRejected('"method" must be a non-empty string', INVALID_REQUEST)
        kind: Kind = "request" if has_id else "notification"
        return JsonRpcMessage(kind, msg_id if has_id else None, method, params, raw)
    if has_id and ("result" in raw or "error" in raw):
        return JsonRpcMessage("response", msg_id, None, {}, raw)
    raise RequestRejected("not a JSON-RPC request, notification or response", INVALID_REQUEST)


def result_response(msg_id: str | int | None, result: dict[str, Any]) -> dict[str, Any]:
    """Build a JSON-RPC success response ``{"jsonrpc", "id", "result"}``."""
    return {"jsonrpc": "2.0", "id": msg_id, "result": result}


def error_response(msg_id: str | int | None, code: int, message: str, data: Any = None) -> dict[str, Any]:
    """Build a JSON-RPC error response; ``data`` is omitted when ``None``."""
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return {"jsonrpc": "2.0", "id": msg_id, "error": error}
