"""What the upstream transports share: the gateway's client identity, log-safe URLs, message decoding."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson

from gateway.errors import UpstreamProtocolError

__all__ = ["CLIENT_INFO", "loads_message", "safe_url"]

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
