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

from gateway.errors import ArgumentsTooDeep, ArgumentsTooLarge, RequestRejected

__all__ = [
    "HANDSHAKE_VERSIONS",
    "INTERNAL_ERROR",
    "INVALID_PARAMS",
    "INVALID_REQUEST",
    "MAX_PARAMS_DEPTH",
    "MAX_PARAMS_VALUES",
    "METHOD_NOT_FOUND",
    "MODERN_VERSIONS",
    "PARSE_ERROR",
    "POLICY_DENIED",
    "JsonRpcMessage",
    "check_params_shape",
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

MAX_PARAMS_DEPTH = 64
"""Most levels of nested objects/arrays in a message's ``params``; the ``params`` object
itself is level 1, so ``tools/call`` ``arguments`` may hold 62 more levels below it.
Deeper is refused with ``-32602`` (:class:`~gateway.errors.ArgumentsTooDeep`): orjson
cannot encode more than 254 levels (the OPA input and the audit hash would fail), and
no real tool schema needs more than a handful."""

MAX_PARAMS_VALUES = 100_000
"""Most JSON values (objects, arrays, strings, numbers, booleans, nulls; object keys not
counted) in a message's ``params``. More is refused with ``-32602``
(:class:`~gateway.errors.ArgumentsTooLarge`): every value becomes part of the OPA input,
and OPA's memory and evaluation time grow with it. Bytes are bounded separately by
``data_plane.max_body`` (4 MiB)."""

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
        rejection: Set when ``params`` exceed :data:`MAX_PARAMS_DEPTH` or
            :data:`MAX_PARAMS_VALUES` (an ``ArgumentsTooDeep``/``ArgumentsTooLarge``).
            The message is otherwise well-formed, so the caller can answer it
            with ``-32602`` under its own id, and audit a governed method.
    """

    kind: Kind
    id: str | int | None
    method: str | None
    params: dict[str, Any]
    raw: dict[str, Any]
    rejection: RequestRejected | None = None


def check_params_shape(params: dict[str, Any]) -> None:
    """Refuse ``params`` deeper than :data:`MAX_PARAMS_DEPTH` or larger than
    :data:`MAX_PARAMS_VALUES` (an iterative walk: no recursion, stops at the first excess).

    Cost: about 1 µs for a typical ``tools/call`` (a name and a few scalar arguments);
    linear in the number of containers otherwise.

    Raises:
        ArgumentsTooDeep: More than ``MAX_PARAMS_DEPTH`` nested levels.
        ArgumentsTooLarge: More than ``MAX_PARAMS_VALUES`` values.
    """
    values = 1 + len(params)
    stack: list[tuple[dict[str, Any] | list[Any], int]] = [(params, 1)]
    while stack:
        node, depth = stack.pop()
        for child in node.values() if type(node) is dict else node:
            if type(child) is dict or type(child) is list:  # orjson decodes to exact types
                if depth >= MAX_PARAMS_DEPTH:
                    raise ArgumentsTooDeep(f"params nest deeper than {MAX_PARAMS_DEPTH} levels")
                values += len(child)
                if values > MAX_PARAMS_VALUES:
                    raise ArgumentsTooLarge(f"params hold more than {MAX_PARAMS_VALUES} JSON values")
                stack.append((child, depth + 1))
    if values > MAX_PARAMS_VALUES:
        raise ArgumentsTooLarge(f"params hold more than {MAX_PARAMS_VALUES} JSON values")


def parse_message(body: bytes) -> JsonRpcMessage:
    """Parse one JSON-RPC 2.0 message (batches are not part of MCP since 2025-06-18).

    Args:
        body: The HTTP request body, UTF-8 JSON.

    Returns:
        The classified message; ``rejection`` is set when its ``params`` break
        the depth or size limit (:func:`check_params_shape`).

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
        rejection: RequestRejected | None = None
        try:
            check_params_shape(params)
        except RequestRejected as exc:
            rejection = exc
        return JsonRpcMessage(kind, msg_id if has_id else None, method, params, raw, rejection)
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
