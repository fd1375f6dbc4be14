"""Names and URIs on the aggregated ``/mcp`` endpoint (pure, no I/O).

Several upstreams share one ``/mcp``, so what they publish is namespaced there;
``/mcp/{server}`` serves every name and URI exactly as the upstream publishes it.

* Tools and prompts are ``<server>__<name>`` (server names never contain ``__``,
  so the split is unambiguous).
* Resource URIs and URI templates are ``mcp-gw://<server>/<original>``: the
  upstream's URI is appended **verbatim**, not percent-encoded. The gateway maps
  back by cutting the prefix, so the round trip is exact, and a client that
  expands a namespaced RFC 6570 template (``mcp-gw://demo/demo://weather/{city}``
  -> ``mcp-gw://demo/demo://weather/Paris``) gets exactly the URI the upstream
  would have seen from expanding its own template, escapes included; encoding the
  original would mix the client's escapes with the gateway's. Server names are
  ``[a-z0-9_-]`` (a valid URI authority) and never contain ``/``.

Source: MCP 2025-11-25 ``server/resources`` (URIs are opaque to clients; templates
are RFC 6570) and ``server/prompts``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = [
    "URI_PREFIX",
    "namespace_content",
    "namespace_contents",
    "namespace_messages",
    "namespace_uri",
    "split_uri",
]

URI_PREFIX = "mcp-gw://"
"""Scheme and ``//`` of a namespaced resource URI: ``mcp-gw://<server>/<original URI>``."""


def namespace_uri(server: str, uri: str) -> str:
    """``mcp-gw://<server>/<uri>`` (``uri`` appended verbatim)."""
    return f"{URI_PREFIX}{server}/{uri}"


def split_uri(uri: str) -> tuple[str, str] | None:
    """Invert :func:`namespace_uri`.

    Returns:
        ``(server, original URI)``, or None when ``uri`` is not of the form
        ``mcp-gw://<server>/<original>`` with a non-empty server and original.
    """
    if not uri.startswith(URI_PREFIX):
        return None
    server, slash, original = uri[len(URI_PREFIX) :].partition("/")
    if not server or not slash or not original:
        return None
    return server, original


def namespace_contents(contents: Any, server: str) -> Any:
    """``resources/read`` ``contents`` with each ``uri`` namespaced (anything else unchanged)."""
    if not isinstance(contents, list):
        return contents
    return [
        {**item, "uri": namespace_uri(server, item["uri"])}
        if isinstance(item, Mapping) and isinstance(item.get("uri"), str)
        else item
        for item in contents
    ]


def namespace_content(block: Any, server: str) -> Any:
    """One content block with the URI a client could read namespaced.

    ``resource_link`` blocks carry ``uri``; embedded ``resource`` blocks carry
    ``resource.uri``. Other blocks are returned unchanged.
    """
    if not isinstance(block, Mapping):
        return block
    kind = block.get("type")
    if kind == "resource_link" and isinstance(block.get("uri"), str):
        return {**block, "uri": namespace_uri(server, block["uri"])}
    resource = block.get("resource")
    if kind == "resource" and isinstance(resource, Mapping) and isinstance(resource.get("uri"), str):
        return {**block, "resource": {**resource, "uri": namespace_uri(server, resource["uri"])}}
    return block


def namespace_messages(messages: Any, server: str) -> Any:
    """``prompts/get`` ``messages`` with the resource URIs of their content namespaced.

    A message's ``content`` is one content block (or, leniently, a list of them).
    """
    if not isinstance(messages, list):
        return messages
    out = []
    for message in messages:
        if isinstance(message, Mapping) and "content" in message:
            content = message["content"]
            if isinstance(content, list):
                content = [namespace_content(block, server) for block in content]
            else:
                content = namespace_content(content, server)
            message = {**message, "content": content}
        out.append(message)
    return out
