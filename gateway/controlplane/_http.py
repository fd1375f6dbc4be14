"""HTTP helpers shared by the control-plane handlers: orjson bodies, errors, ETags, Prefer, input validators.

Every value a client chooses (path, query, body field) is checked by one of the
validators here before a handler uses it, so malformed input is a 400
``bad_request`` whose message names the parameter, never a database or
``int()`` error surfacing as a 500.
"""

from __future__ import annotations

import logging
import re
import uuid
import zlib
from datetime import UTC, datetime
from typing import Any, overload

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import Scope

from gateway.errors import GatewayError, PolicyRejected, RequestRejected

__all__ = [
    "MAX_BIGINT",
    "MAX_JSON_DEPTH",
    "MAX_TEXT",
    "JSONResponse",
    "check_json_text",
    "check_text",
    "error_body",
    "etag",
    "parse_etag_version",
    "parse_int",
    "parse_rfc3339",
    "parse_wait",
    "read_json",
    "request_id",
]

log = logging.getLogger(__name__)

MAX_JSON_BODY = 8 * 1024 * 1024
"""Largest accepted (decompressed) JSON body, in bytes."""
MAX_JSON_DEPTH = 200
"""Deepest accepted nesting of arrays/objects in a JSON body (the top level is 1).

orjson encodes at most 254 levels (the jsonb codec and bundle building use it);
the margin leaves room for the envelopes a stored value is wrapped in."""
MAX_TEXT = 1024
"""Longest accepted free-text query or path parameter, in characters."""
MAX_BIGINT = 2**63 - 1
"""PostgreSQL ``bigint``'s upper bound: the largest version number a client may name."""
_ETAG = re.compile(r'(?:W/)?"?p([0-9]{1,19})"?')
_WAIT = re.compile(r"(?:^|[;,\s])wait=([0-9]+)", re.IGNORECASE)
_FRACTION = re.compile(r"\.([0-9]+)")
_RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,64})?(?:[Zz]|[+-][0-9]{2}:[0-9]{2})"
)
"""RFC 3339 ``date-time`` (section 5.6), ASCII digits only; ``fromisoformat`` alone accepts more."""
_DIGITS = re.compile(r"[0-9]{1,19}")
"""ASCII decimal digits only: ``str.isdigit`` also accepts ``²`` and ``٣``, which ``int()`` refuses or reads."""


class JSONResponse(Response):
    """A JSON response rendered with orjson."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def request_id(scope: Scope) -> str:
    """Return the request id set by :class:`RequestIdMiddleware` (or a fresh one)."""
    state = scope.setdefault("state", {})
    rid = state.get("request_id")
    if not rid:
        rid = state["request_id"] = str(uuid.uuid4())
    return str(rid)


def error_body(exc: GatewayError, rid: str) -> dict[str, Any]:
    """Return the client-facing error document of ``exc``.

    Every :class:`GatewayError` raised in ``gateway.controlplane`` and ``gateway.db``
    carries a message written for clients; foreign error text (asyncpg DETAIL,
    subprocess output) only ever travels on ``__cause__`` to the operator log.
    """
    body: dict[str, Any] = {"error": exc.category, "message": str(exc), "request_id": rid}
    if isinstance(exc, PolicyRejected):
        body["errors"] = exc.errors
    return body


async def read_json(request: Request) -> Any:
    """Read and decode the body as JSON (gunzipping ``Content-Encoding: gzip``), size- and depth-bounded.

    A client that goes away before sending the whole body is logged as one INFO
    line (through the ``RequestRejected`` handler) rather than an error traceback.

    Raises:
        RequestRejected: Too large, bad gzip, not JSON, nested deeper than
            :data:`MAX_JSON_DEPTH`, or the client disconnected mid-body.
    """
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_JSON_BODY:
                raise RequestRejected(f"the body exceeds {MAX_JSON_BODY} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        raise RequestRejected(f"the client disconnected after {size} bytes of the body") from None
    raw = b"".join(chunks)
    if request.headers.get("content-encoding", "").lower() == "gzip":
        try:
            inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
            raw = inflater.decompress(raw, MAX_JSON_BODY + 1)
            if len(raw) > MAX_JSON_BODY or inflater.unconsumed_tail:
                raise RequestRejected(f"the decompressed body exceeds {MAX_JSON_BODY} bytes")
        except zlib.error as exc:
            raise RequestRejected("the body is not valid gzip") from exc
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise RequestRejected("the body is not valid JSON") from exc
    if _depth_exceeds(body, MAX_JSON_DEPTH):
        raise RequestRejected(f"the body nests arrays/objects deeper than {MAX_JSON_DEPTH} levels")
    return body


def _depth_exceeds(value: Any, limit: int) -> bool:
    """True when ``value`` nests containers deeper than ``limit`` (iterative: no recursion limit)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


@overload
def check_text(value: str, field: str, *, max_length: int = MAX_TEXT) -> str: ...
@overload
def check_text(value: str | None, field: str, *, max_length: int = MAX_TEXT) -> str | None: ...
def check_text(value: str | None, field: str, *, max_length: int = MAX_TEXT) -> str | None:
    """Return a client-chosen string (query or path parameter, body field) unchanged, or None for None.

    PostgreSQL ``text`` cannot hold U+0000, so a NUL would otherwise fail the query.

    Raises:
        RequestRejected: Longer than ``max_length`` characters or containing NUL; the message names ``field``.
    """
    if value is None:
        return None
    if len(value) > max_length or "\x00" in value:
        raise RequestRejected(f"{field} must be at most {max_length} characters, without NUL")
    return value


def check_json_text(value: Any, field: str) -> Any:
    """Return a decoded JSON value unchanged after checking no string or key in it holds U+0000.

    For values stored in ``jsonb``, which cannot hold ``\\u0000``. Iterative; the
    depth is already bounded by :func:`read_json`.

    Raises:
        RequestRejected: A string or object key contains NUL; the message names ``field``.
    """
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            if "\x00" in node:
                raise RequestRejected(f"{field} must not contain NUL (U+0000) in any string or key")
        elif isinstance(node, dict):
            stack.extend(node)
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return value


def parse_int(value: str | None, field: str, *, default: int | None = None, minimum: int = 0, maximum: int) -> int:
    """Parse a query or path parameter of ASCII decimal digits into ``minimum..maximum``.

    Args:
        value: The raw text, or None when the parameter is absent.
        field: The parameter's name, used in the error message.
        default: Returned when ``value`` is None; None makes the parameter required.

    Raises:
        RequestRejected: Absent without a default, not ASCII digits (``²`` and ``٣`` pass
            ``str.isdigit``), or out of range; the message names ``field``.
    """
    if value is None and default is not None:
        return default
    if value is None or not _DIGITS.fullmatch(value) or not minimum <= int(value) <= maximum:
        raise RequestRejected(f"{field} must be an integer between {minimum} and {maximum}")
    return int(value)


def etag(version: int) -> str:
    """Return the strong ETag of projection ``version``: ``"p<N>"`` (with the quotes)."""
    return f'"p{version}"'


def parse_etag_version(header: str | None) -> int | None:
    """Return N from an ``If-None-Match`` of ``"p<N>"`` (also ``W/"p<N>"``, ``p<N>``, lists), else None."""
    if not header:
        return None
    for part in header.split(","):
        m = _ETAG.fullmatch(part.strip())
        if m:
            return int(m.group(1))
    return None


def parse_wait(prefer: str | None, cap: float) -> float:
    """Return the long-poll wait from ``Prefer: ...;wait=<s>`` bounded by ``cap``; 0 when absent."""
    if not prefer:
        return 0.0
    m = _WAIT.search(prefer)
    return min(float(m.group(1)), cap) if m else 0.0


def parse_rfc3339(value: Any, *, field: str) -> datetime:
    """Parse an RFC 3339 ``date-time`` (``Z`` or offset; nanoseconds truncated to microseconds), as UTC.

    Source: RFC 3339 section 5.6. Years 0001..9999 after conversion to UTC
    (Python's ``datetime`` range; PostgreSQL's ``timestamptz`` is wider).

    Raises:
        RequestRejected: Not a string, not RFC 3339 (a time zone is required), or
            outside years 0001..9999 in UTC (``0001-01-01T00:00:00+01:00``); the
            message names ``field``.
    """
    if not isinstance(value, str) or len(value) > 64 or not _RFC3339.fullmatch(value.strip()):
        raise RequestRejected(f"{field} must be an RFC 3339 timestamp with a time zone (Z or an offset)")
    text = _FRACTION.sub(lambda m: "." + m.group(1)[:6].ljust(6, "0"), value.strip(), count=1)
    if text[-1:] in ("Z", "z"):
        text = text[:-1] + "+00:00"
    try:
        return datetime.fromisoformat(text).astimezone(UTC)
    except ValueError:
        raise RequestRejected(f"{field} must be an RFC 3339 timestamp with a time zone (Z or an offset)") from None
    except OverflowError:
        raise RequestRejected(f"{field} must fall within the years 0001..9999 in UTC") from None
