"""An API's HTTP response turned into an MCP ``CallToolResult`` (pure: no I/O).

Success (2xx):

* a JSON body (``application/json`` or ``+json``) becomes ``structuredContent`` — the JSON
  object itself, or ``{"result": <json>}`` when the operation documents a non-object
  (:attr:`~gateway.apiadapter.binding.Output.wrapped`) — plus the same JSON, compact, in a
  text block (MCP 2025-11-25 ``server/tools`` "Structured Content": a tool returning
  structured content SHOULD also return it serialised in a ``TextContent`` block). When the
  tool has an ``outputSchema`` the structured content must match it ("Output Schema":
  results MUST conform), else the call is a tool error ``upstream_response_invalid`` naming
  the JSON path only (never a value); so is a body that is not JSON at all;
* ``text/*`` becomes a text block, ``image/*`` an image block (base64), anything else an
  embedded resource with a base64 ``blob``; an empty body becomes the text ``HTTP <status>``.

Anything else is a tool error (``isError: true``) with a safe category: a redirect that was
not followed ``upstream_redirect``; 400/422 ``api_bad_request``, 401 ``api_unauthorized``,
403 ``api_forbidden``, 404 ``api_not_found``, 409 ``api_conflict``, 429 ``api_rate_limited``,
other 4xx ``api_client_error``, 5xx ``api_server_error``. Its text is ``HTTP <status>
<reason>`` and, for a text or JSON body, at most :data:`EXCERPT_CHARS` characters of it.

Every result carries ``_meta["mcp-opa-gateway/http"] = {"status": <int or null>,
"category": <str or null>}``: the data plane records the category in the audit event.

**Brokered secrets are never handed back.** An API that echoes its request (a debugging
endpoint, an error quoting the query) would show the agent the credential the gateway added:
before anything else, every form of every credential value (:func:`secret_forms`) is replaced
in the body bytes by :data:`REDACTED`, so structured content, text, excerpts, images and blobs
never carry it. Values shorter than :data:`MIN_SECRET_CHARS` characters are left alone.

A ``charset`` parameter is used only when it names a text encoding that decodes bytes
(``base64``, ``hex``, ``zlib``, ``idna``, ``punycode``, ... are not: UTF-8 then).
"""

from __future__ import annotations

import base64
import codecs
import http
import json
import re
from collections.abc import Iterable, Sequence
from typing import Any, Protocol
from urllib.parse import quote, quote_plus

import orjson
from jsonschema.exceptions import best_match

from gateway.apiadapter.binding import Operation

__all__ = [
    "EXCERPT_CHARS",
    "META_KEY",
    "MIN_SECRET_CHARS",
    "REDACTED",
    "OutputValidator",
    "error_category",
    "media_type",
    "redact",
    "secret_forms",
    "to_result",
    "tool_error",
]

META_KEY = "mcp-opa-gateway/http"
"""The ``_meta`` key of every adapter result: ``{"status": int | None, "category": str | None}``."""
EXCERPT_CHARS = 2000
"""Most characters of an error response's body quoted in the tool error."""
REDACTED = "[redacted]"
"""What replaces a brokered secret in an API's response (valid inside a JSON string)."""
MIN_SECRET_CHARS = 4
"""Shorter credential values are not redacted: replacing every ``abc`` of a body would garble
it, and a value that short protects nothing."""

# Codecs that are "text encodings" to Python but do not decode a body's bytes (or not with
# errors="replace"): a charset naming one is ignored.
_NOT_CHARSETS = frozenset({"idna", "punycode", "undefined", "unicode-escape", "raw-unicode-escape"})
_PERCENT = re.compile(rb"%[0-9A-F]{2}")

_CATEGORIES = {
    400: "api_bad_request",
    422: "api_bad_request",
    401: "api_unauthorized",
    403: "api_forbidden",
    404: "api_not_found",
    409: "api_conflict",
    429: "api_rate_limited",
}


class OutputValidator(Protocol):
    """A compiled JSON Schema validator (``jsonschema``'s ``Validator``): only ``iter_errors`` is used."""

    def iter_errors(self, instance: Any) -> Iterable[Any]: ...


def media_type(content_type: str | None) -> str | None:
    """The lower-case ``type/subtype`` of a ``Content-Type`` value (parameters dropped), or None."""
    if not content_type:
        return None
    base = content_type.split(";", 1)[0].strip().lower()
    return base or None


def _is_json(media: str | None) -> bool:
    return media is not None and (media == "application/json" or media.endswith("+json"))


def _charset(content_type: str | None) -> str:
    """The codec of a ``Content-Type``'s ``charset`` when it is a text encoding that decodes
    bytes, else ``utf-8``."""
    for part in (content_type or "").split(";")[1:]:
        key, _, value = part.partition("=")
        if key.strip().lower() == "charset":
            name = value.strip().strip('"')
            try:
                info = codecs.lookup(name)
            except LookupError:
                break
            if getattr(info, "_is_text_encoding", True) and info.name not in _NOT_CHARSETS:
                return info.name
            break
    return "utf-8"


def _in_charset(text: str, charset: str) -> list[bytes]:
    """``text`` encoded as a body in ``charset`` would hold it (both byte orders, no BOM, for
    UTF-16/32); nothing when it cannot be encoded."""
    names = [charset + "-le", charset + "-be"] if charset in ("utf-16", "utf-32") else [charset]
    out: list[bytes] = []
    for name in names:
        try:
            out.append(text.encode(name))
        except (UnicodeError, LookupError):
            continue
    return out


def secret_forms(values: Iterable[str], content_type: str | None = None) -> tuple[tuple[bytes, bytes], ...]:
    """Every way a credential value may appear in a response body, each with its replacement.

    Args:
        values: The credential's header and query values (for a value ``<scheme> <token>``,
            such as ``Bearer abc...``, the token alone counts too).
        content_type: The response's ``Content-Type``: a body in another charset than UTF-8
            is searched in that charset too.

    Returns:
        ``(needle, replacement)`` byte pairs, longest needle first: each value raw,
        percent-encoded (``quote`` with and without ``/``, ``quote_plus``; upper- and
        lower-case hex) and JSON-escaped (minimal, ``\\uXXXX`` for non-ASCII, ``\\/``), in
        UTF-8 and in the body's charset; the replacement is :data:`REDACTED` in the same
        encoding. Values shorter than :data:`MIN_SECRET_CHARS` characters are skipped.
    """
    charset = _charset(content_type)
    texts: set[str] = set()
    for value in values:
        candidates = {value}
        _, space, token = value.strip().partition(" ")
        if space:
            candidates.add(token.strip())
        for secret in candidates:
            if len(secret) < MIN_SECRET_CHARS:
                continue
            encoded = {secret, quote(secret, safe=""), quote(secret), quote_plus(secret, safe="")}
            for form in list(encoded):
                encoded.add(_PERCENT.sub(lambda m: m.group(0).lower(), form.encode()).decode())
            for form in list(encoded):
                for escaped in (orjson.dumps(form).decode()[1:-1], json.dumps(form)[1:-1]):
                    encoded.add(escaped)
                    encoded.add(escaped.replace("/", "\\/"))
            texts.update(encoded)
    pairs: dict[bytes, bytes] = {}
    for text in texts:
        pairs[text.encode()] = REDACTED.encode()
        if charset != "utf-8":
            for needle, replacement in zip(_in_charset(text, charset), _in_charset(REDACTED, charset), strict=False):
                pairs[needle] = replacement
    return tuple(sorted(((k, v) for k, v in pairs.items() if k), key=lambda kv: -len(kv[0])))


def redact(body: bytes, forms: Sequence[tuple[bytes, bytes]]) -> bytes:
    """``body`` with every needle of ``forms`` (:func:`secret_forms`, longest first) replaced."""
    for needle, replacement in forms:
        if needle in body:
            body = body.replace(needle, replacement)
    return body


def error_category(status: int) -> str:
    """The safe category of a non-2xx HTTP status (see the module docstring)."""
    if 300 <= status < 400:
        return "upstream_redirect"
    if status in _CATEGORIES:
        return _CATEGORIES[status]
    if 400 <= status < 500:
        return "api_client_error"
    if 500 <= status < 600:
        return "api_server_error"
    return "upstream_response_invalid"


def _meta(status: int | None, category: str | None) -> dict[str, Any]:
    return {META_KEY: {"status": status, "category": category}}


def tool_error(text: str, category: str, *, status: int | None = None) -> dict[str, Any]:
    """A ``CallToolResult`` with ``isError: true``, one text block and the ``_meta`` above.

    Args:
        text: Safe text for the agent (no credential, no URL query).
        category: The safe category recorded in the audit event.
        status: The HTTP status that caused it, or None when nothing was answered.
    """
    return {"content": [{"type": "text", "text": text}], "isError": True, "_meta": _meta(status, category)}


def _reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return ""


def _excerpt(content_type: str | None, body: bytes) -> str:
    media = media_type(content_type)
    if not body or media is None or not (media.startswith("text/") or _is_json(media)):
        return ""
    text = body[: EXCERPT_CHARS * 4].decode(_charset(content_type), errors="replace").strip()
    return text if len(text) <= EXCERPT_CHARS else text[: EXCERPT_CHARS - 1] + "…"


def _error(op: Operation, status: int, content_type: str | None, body: bytes) -> tuple[dict[str, Any], str]:
    category = error_category(status)
    text = f"HTTP {status} {_reason(status)}".rstrip()
    if category == "upstream_redirect":
        text += ": the API answered with a redirect, which was not followed"
    excerpt = _excerpt(content_type, body)
    if excerpt:
        text += f": {excerpt}"
    return tool_error(text, category, status=status), category


def _invalid(status: int, text: str) -> tuple[dict[str, Any], str]:
    category = "upstream_response_invalid"
    return tool_error(text, category, status=status), category


def _json_result(
    op: Operation, status: int, body: bytes, output_validator: OutputValidator | None
) -> tuple[dict[str, Any], str | None]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return _invalid(status, f"HTTP {status}: the API's response is not valid JSON")
    structured: dict[str, Any] | None = None
    if op.output.wrapped:
        structured = {"result": data}
    elif isinstance(data, dict):
        structured = data
    if op.output.schema:
        if structured is None:
            return _invalid(status, f"HTTP {status}: the API's response does not match the tool's outputSchema at $")
        if output_validator is not None:
            error = best_match(output_validator.iter_errors(structured))
            if error is not None:
                path = getattr(error, "json_path", "$")
                return _invalid(
                    status, f"HTTP {status}: the API's response does not match the tool's outputSchema at {path}"
                )
    result: dict[str, Any] = {"content": [{"type": "text", "text": orjson.dumps(data).decode()}]}
    if structured is not None:
        result["structuredContent"] = structured
    result["_meta"] = _meta(status, None)
    return result, None


def to_result(
    op: Operation,
    *,
    status: int,
    content_type: str | None,
    body: bytes,
    url_for_blob: str,
    output_validator: OutputValidator | None,
    secrets: Sequence[tuple[bytes, bytes]] = (),
) -> tuple[dict[str, Any], str | None]:
    """The ``CallToolResult`` of one API response, and its safe category (None on success).

    CPU-bound (JSON decoding and ``outputSchema`` validation of up to the source's
    ``max_response_bytes``): a caller on an event loop runs it in a worker thread for large
    bodies.

    Args:
        op: The operation called (its :attr:`~gateway.apiadapter.binding.Operation.output`).
        status: The final HTTP status (redirects are never followed here).
        content_type: The response's ``Content-Type`` header, or None.
        body: The whole (already size-capped, decoded) body.
        url_for_blob: The ``uri`` of an embedded resource block: the request URL without
            its query (a credential may be in the query).
        output_validator: The compiled validator of the tool's ``outputSchema``, or None.
        secrets: :func:`secret_forms` of the brokered credential: replaced in ``body`` first.

    Returns:
        ``(result, category)``: ``result`` is a ``CallToolResult`` dict (``content``, maybe
        ``structuredContent``, ``isError`` on errors, ``_meta``), ``category`` as in the
        module docstring.

    Raises:
        RecursionError: JSON nested deeper than validation can follow.
        orjson.JSONEncodeError: JSON nested deeper than 254 levels (it is re-serialised).
        ValueError, UnicodeError, LookupError: Not expected; the caller treats these, like the
            two above, as a response that cannot be mapped (``upstream_response_invalid``).
    """
    if secrets:
        body = redact(body, secrets)
    if not 200 <= status < 300:
        return _error(op, status, content_type, body)
    media = media_type(content_type)
    if _is_json(media) and body.strip():
        return _json_result(op, status, body, output_validator)
    if op.output.schema:
        return _invalid(
            status, f"HTTP {status}: the API answered without a JSON body, but the tool has an outputSchema"
        )
    block: dict[str, Any]
    if not body or (_is_json(media) and not body.strip()):
        block = {"type": "text", "text": f"HTTP {status}"}
    elif media is not None and media.startswith("text/"):
        block = {"type": "text", "text": body.decode(_charset(content_type), errors="replace")}
    elif media is not None and media.startswith("image/"):
        block = {"type": "image", "data": base64.b64encode(body).decode("ascii"), "mimeType": media}
    else:
        block = {
            "type": "resource",
            "resource": {
                "uri": url_for_blob,
                "mimeType": media or "application/octet-stream",
                "blob": base64.b64encode(body).decode("ascii"),
            },
        }
    return {"content": [block], "_meta": _meta(status, None)}, None
