"""Which governed feature method a request is, and what the endpoint advertises.

Source: MCP 2025-11-25 ``basic/lifecycle`` (capability negotiation) and MCP 2026-07-28
``server/discover``; the methods of each era are those of ``mcp_types.methods.CLIENT_REQUESTS``.
"""

from __future__ import annotations

from typing import Any

from gateway.dataplane.features import FeatureGovernor
from gateway.dataplane.governance import CallContext
from gateway.dataplane.projection import ActiveProjection
from gateway.mcp.messages import INVALID_PARAMS, METHOD_NOT_FOUND, JsonRpcMessage, error_response, result_response

__all__ = [
    "CAPABILITY_OF",
    "SUBSCRIPTION_METHODS",
    "UNSUPPORTED_METHODS",
    "advertised_capabilities",
    "offers_subscribe",
    "serve_feature",
]

CAPABILITY_OF = {
    "resources/list": "resources",
    "resources/templates/list": "resources",
    "resources/read": "resources",
    "prompts/list": "prompts",
    "prompts/get": "prompts",
    "completion/complete": "completions",
    "logging/setLevel": "logging",
}
"""The server capability each governed method needs; an endpoint that does not
advertise it answers the method ``-32601`` (not governed, not audited)."""

UNSUPPORTED_METHODS: frozenset[str] = frozenset()
"""Handshake-era methods the gateway answers ``-32601`` (never silently accepts): none now."""

SUBSCRIPTION_METHODS = frozenset({"resources/subscribe", "resources/unsubscribe"})
"""Handshake-era methods served by the endpoint with the session's listener
(:mod:`gateway.dataplane.listening`), governed by :meth:`FeatureGovernor.subscription`."""


def offers_subscribe(projection: ActiveProjection | None, server: str | None) -> bool:
    """True when a server of the endpoint declared ``resources.subscribe`` at approval."""
    if projection is None:
        return False
    servers = projection.servers.values() if server is None else [projection.servers[server]]
    return any(
        s.offers("resources") and s.capabilities["resources"].get("subscribe") is True
        for s in servers
        if server is None or s.name == server
    )


def advertised_capabilities(
    projection: ActiveProjection | None, server: str | None, *, handshake: bool
) -> dict[str, Any]:
    """The ``capabilities`` the endpoint advertises (``initialize`` result, ``server/discover``).

    ``tools`` always; ``resources``, ``prompts``, ``completions`` and, in the handshake
    era only, ``logging``, each when at least one approved server of the endpoint (every
    server on ``/mcp``, the one server on ``/mcp/{server}``) declared it at approval.
    ``listChanged`` is true (list changes are relayed to listening clients,
    :mod:`gateway.dataplane.listening`); ``resources.subscribe`` is true when a server of
    the endpoint declared it. ``logging`` is not offered to 2026-07-28 clients:
    ``logging/setLevel`` is not a method of that revision (their requests carry a log level).
    """
    caps: dict[str, Any] = {"tools": {"listChanged": True}}
    if projection is None:
        return caps
    if server is None:
        servers = list(projection.servers.values())
    else:
        servers = [projection.servers[server]] if server in projection.servers else []
    if any(s.offers("resources") for s in servers):
        caps["resources"] = {"subscribe": offers_subscribe(projection, server), "listChanged": True}
    if any(s.offers("prompts") for s in servers):
        caps["prompts"] = {"listChanged": True}
    if any(s.offers("completions") for s in servers):
        caps["completions"] = {}
    if handshake and any(s.offers("logging") for s in servers):
        caps["logging"] = {}
    return caps


async def serve_feature(
    governor: FeatureGovernor, projection: ActiveProjection, msg: JsonRpcMessage, ctx: CallContext, *, handshake: bool
) -> dict[str, Any] | None:
    """Route one client request to its governed feature method.

    Args:
        governor: The PEP.
        projection: The active projection.
        msg: The client's request.
        ctx: Caller, session and endpoint.
        handshake: True for the handshake era (2025-11-25 and older), False for 2026-07-28.

    Returns:
        The JSON-RPC response message, or None when ``msg.method`` is not one of
        :data:`CAPABILITY_OF` in this era (``logging/setLevel`` is handshake-era only).
        A method whose capability the endpoint does not advertise, and
        ``resources/subscribe``/``resources/unsubscribe`` (handshake era), get ``-32601``
        without being governed.
    """
    method = str(msg.method)
    if handshake and method in UNSUPPORTED_METHODS:
        message = f"{method} is not supported by this gateway yet"
        return error_response(msg.id, METHOD_NOT_FOUND, message)
    capability = CAPABILITY_OF.get(method)
    if capability is None or (method == "logging/setLevel" and not handshake):
        return None
    if capability not in advertised_capabilities(projection, ctx.server, handshake=handshake):
        return error_response(msg.id, METHOD_NOT_FOUND, f"Method not found: {method}")
    params, rejection = msg.params, msg.rejection
    if method in ("resources/list", "resources/templates/list"):
        if rejection is not None:
            return error_response(msg.id, INVALID_PARAMS, "Invalid params", {"category": rejection.category})
        return await governor.list_resources(projection, ctx, msg.id, templates=method != "resources/list")
    if method == "prompts/list":
        if rejection is not None:
            return error_response(msg.id, INVALID_PARAMS, "Invalid params", {"category": rejection.category})
        return result_response(msg.id, {"prompts": await governor.list_prompts(projection, ctx)})
    handlers = {
        "resources/read": governor.read_resource,
        "prompts/get": governor.get_prompt,
        "completion/complete": governor.complete,
        "logging/setLevel": governor.set_logging_level,
    }
    return await handlers[method](projection, ctx, msg.id, params, rejection=rejection)
