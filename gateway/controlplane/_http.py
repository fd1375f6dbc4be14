"""HTTP helpers shared by the control-plane handlers: orjson bodies, errors, ETags, Prefer."""

from __future__ import annotations

import logging
import re
import uuid
import zlib
from datetime import UTC, datetime
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Scope

from gateway.errors import GatewayError, PolicyRejected, RequestRejected

__all__ = [
    "JSONResponse",
    "error_body",
    "etag",
    "parse_etag_version",
    "parse_rfc3339",
    "parse_wait",
    "read_json",
    "request_id",
]

log = logging.getLogger(__name__)

MAX_JSON_BODY = 8 * 1024 * 1024
"""Largest accepted (decompressed) JSON body, in bytes."""
_ETAG = re.compile(r'^(?:W/)?"?p(\d+)"?$')
_WAIT = re.compile(r"(?:^|[;,\s])wait=(\d+)", re.IGNORECASE)
_FRACTION = re.compile(r"\.(\d+)")


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
    """Read and decode the body as JSON (gunzipping ``Content-Encoding: gzip``), size-bounded.

    Raises:
        RequestRejected: Too large, bad gzip or not JSON.
    """
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_JSON_BODY:
            raise RequestRejected(f"the body exceeds {MAX_JSON_BODY} bytes")
        chunks.append(chunk)
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
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise RequestRejected("the body is not valid JSON") from exc


def etag(version: int) -> str:
    """Return the strong ETag of projection ``version``: ``"p<N>"`` (with the quotes)."""
    return f'"p{version}"'


def parse_etag_version(header: str | None) -> int | None:
    """Return N from an ``If-None-Match`` of ``"p<N>"`` (also ``W/"p<N>"``, ``p<N>``, lists), else None."""
    if not header:
        return None
    for part in header.split(","):
        m = _ETAG.match(part.strip())
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
    """Parse an RFC 3339 timestamp (``Z`` or offset; nanoseconds truncated to microseconds).

    Raises:
        RequestRejected: Not a string, not RFC 3339, or without a time zone.
    """
    if not isinstance(value, str) or len(value) > 64:
        raise RequestRejected(f"{field} must be an RFC 3339 timestamp")
    text = _FRACTION.sub(lambda m: "." + m.group(1)[:6].ljust(6, "0"), value.strip(), count=1)
    if text[-1:] in ("Z", "z"):
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise RequestRejected(f"{field} must be an RFC 3339 timestamp") from None
    if parsed.tzinfo is None:
        raise RequestRejected(f"{field} must carry a time zone (Z or an offset)")
    return parsed.astimezone(UTC)
