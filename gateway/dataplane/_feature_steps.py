"""The shared steps of every governed feature request (check, decide, forward, filter, audit).

:class:`FeatureSteps` extends the tools PEP (:class:`~gateway.dataplane.governance.Governor`)
with the steps :class:`~gateway.dataplane.features.FeatureGovernor` composes per method.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from gateway.dataplane.credentials import choose, credential_input, for_transport
from gateway.dataplane.governance import (
    MRTR_PARAMS,
    UPSTREAM_FAILED,
    CallContext,
    Governor,
    _is_error_object,
    _relay_sha256,
    _Trace,
    mrtr_params_valid,
)
from gateway.dataplane.namespacing import namespace_uri, split_uri
from gateway.dataplane.projection import SEPARATOR, ActiveProjection, ServerEntry
from gateway.errors import (
    CredentialUnavailable,
    GatewayError,
    RequestRejected,
    UnexpectedParam,
    UpstreamError,
    UpstreamProtocolError,
)
from gateway.mcp.credential import UpstreamCredential
from gateway.mcp.messages import MODERN_VERSIONS, error_response, result_response
from gateway.policy.input import Candidate, build_discovery_input, build_input

__all__ = ["MAX_NAME", "FeatureSteps", "servers_offering"]

log = logging.getLogger("gateway.pep")

_PARAMS = {
    "resources/read": frozenset({"uri", "_meta", *MRTR_PARAMS}),
    "prompts/get": frozenset({"name", "arguments", "_meta", *MRTR_PARAMS}),
    "completion/complete": frozenset({"ref", "argument", "context", "_meta"}),
    "logging/setLevel": frozenset({"level", "_meta"}),
    "ping": frozenset({"_meta"}),
    "resources/subscribe": frozenset({"uri", "_meta"}),
    "resources/unsubscribe": frozenset({"uri", "_meta"}),
}
MAX_NAME = 512
"""Characters of a client-chosen name or URI kept in the audit event."""


def servers_offering(projection: ActiveProjection, ctx: CallContext, capability: str) -> list[ServerEntry]:
    """The endpoint's servers that declared ``capability``, sorted by name."""
    if ctx.server is None:
        candidates = [projection.servers[name] for name in sorted(projection.servers)]
    else:
        candidates = [projection.servers[ctx.server]] if ctx.server in projection.servers else []
    return [s for s in candidates if s.offers(capability)]


class FeatureSteps(Governor):
    """The tools PEP plus the steps shared by the resource, prompt, completion and logging methods."""

    async def _governed(
        self,
        projection: ActiveProjection,
        ctx: CallContext,
        action: str,
        run: Callable[[_Trace], Awaitable[dict[str, Any]]],
    ) -> dict[str, Any]:
        trace = _Trace(started=time.perf_counter(), server=ctx.server, action=action)
        try:
            return await run(trace)
        except BaseException as exc:
            if not trace.audited:
                category = "internal_error" if isinstance(exc, Exception) else "cancelled"
                log.error("%s failed unexpectedly: %s (%s)", action, category, type(exc).__name__)
                self._emit(projection, ctx, trace, status="error", error_category=category, reasons=[category])
            raise

    def _checked(
        self,
        projection: ActiveProjection,
        ctx: CallContext,
        trace: _Trace,
        msg_id: str | int | None,
        params: dict[str, Any],
        rejection: RequestRejected | None,
    ) -> dict[str, Any] | None:
        """Refuse params beyond the parser's limits or with an unexpected key (``-32602``, audited)."""
        if rejection is not None:
            return self._reject(projection, ctx, trace, msg_id, rejection.category, "Invalid params")
        accepted = _PARAMS[trace.action]
        if ctx.protocol_version not in MODERN_VERSIONS:  # MRTR retries are a 2026-07-28 client's
            accepted = accepted - set(MRTR_PARAMS)
        unexpected = [key for key in params if key not in accepted]
        if unexpected:
            key = min(unexpected)[:64]
            names = ", ".join(sorted(accepted))
            message = f"Unsupported {trace.action} params key {key!r} (accepted: {names})"
            return self._reject(projection, ctx, trace, msg_id, UnexpectedParam.category, message)
        if not mrtr_params_valid(params):
            message = "inputResponses must map keys to result objects and requestState must be a string"
            return self._reject(projection, ctx, trace, msg_id, RequestRejected.category, message)
        return None

    def _input(
        self, projection: ActiveProjection, ctx: CallContext, action: str, server: ServerEntry | None, **kw: Any
    ) -> dict[str, Any]:
        bindings = server.bindings if server is not None else ()
        required = server is not None and server.requires_credential
        return build_input(
            tenant=self._config.tenant,
            environment=self._config.environment,
            action=action,
            subject=ctx.subject,
            server=server.name if server else None,
            transport=server.transport if server else None,
            session_id=ctx.session_id,
            protocol_version=ctx.protocol_version,
            projection_version=projection.version,
            needs_credential=required,
            credential=credential_input(choose(bindings, ctx.subject)) if required else None,
            **kw,
        )

    async def _material(self, server: ServerEntry, ctx: CallContext) -> UpstreamCredential | None:
        """The caller's credential for ``server`` outside a decision of its own (the servers a
        list or ``logging/setLevel`` fans out to).

        Raises:
            CredentialUnavailable: The server needs one and none is bound for the caller, or
                it could not be resolved.
        """
        if not server.requires_credential:
            return None
        chosen = choose(server.bindings, ctx.subject)
        if chosen is None or self._broker is None:
            raise CredentialUnavailable(f"no credential of {server.name} for this caller")
        return for_transport(
            await self._broker.resolve(server.name, chosen, ctx.subject), server.name, server.transport
        )

    async def _exchange(
        self,
        projection: ActiveProjection,
        ctx: CallContext,
        server: ServerEntry,
        method: str,
        params: dict[str, Any],
        credential: UpstreamCredential | None,
    ) -> tuple[dict[str, Any], bool]:
        """One upstream request on the caller's session (with ``credential``): ``(result
        object or JSON-RPC error object, is_error)``.

        What the upstream sends meanwhile is relayed to the caller (:meth:`Governor.relay`).

        Raises:
            UpstreamError: Transport failure, or an answer that is neither.
        """
        upstream = self._upstreams.get(server.name, server.transport, server.url, ctx.caller, credential)
        reply = await self.relay(upstream, method, params, self.channel(projection, ctx, server.name), ctx)
        result, error_obj = reply.get("result"), reply.get("error")
        if isinstance(result, dict):
            return result, False
        if "result" not in reply and isinstance(error_obj, dict) and _is_error_object(error_obj):
            return error_obj, True
        raise UpstreamProtocolError(f"upstream {server.name} answered neither a result object nor an error")

    async def _forward(
        self,
        projection: ActiveProjection,
        ctx: CallContext,
        trace: _Trace,
        msg_id: str | int | None,
        server: ServerEntry,
        method: str,
        params: dict[str, Any],
    ) -> dict[str, Any]:
        """Forward an allowed request with the caller's credential, audit its outcome, return the
        response message to relay."""
        chosen = choose(server.bindings, ctx.subject) if server.bindings else None
        credential, refused = await self._credential(projection, ctx, trace, msg_id, server, chosen)
        if refused is not None:
            return refused
        try:
            payload, is_error = await self._exchange(projection, ctx, server, method, params, credential)
            try:
                result_hash = _relay_sha256(payload)
            except TypeError as exc:  # orjson.JSONEncodeError: nested deeper than it can encode
                raise UpstreamProtocolError(f"upstream {server.name} answered a result that cannot be relayed") from exc
        except UpstreamError as exc:
            log.warning("upstream %s failed: %s", server.name, exc)
            self._emit(projection, ctx, trace, status="error", error_category=exc.category)
            data = {"category": exc.category, "decision_id": trace.decision_id}
            return error_response(msg_id, UPSTREAM_FAILED, "Upstream server failed", data)
        self._emit(projection, ctx, trace, status="tool_error" if is_error else "ok", result_sha256=result_hash)
        if is_error:
            return {"jsonrpc": "2.0", "id": msg_id, "error": payload}
        return result_response(msg_id, payload)

    def _resolve_uri(self, projection: ActiveProjection, ctx: CallContext, uri: str) -> tuple[ServerEntry, str] | None:
        """The server a (namespaced on ``/mcp``) resource URI or template belongs to, and its original form."""
        if ctx.server is not None:
            server = projection.servers.get(ctx.server)
            return (server, uri) if server is not None and server.offers("resources") else None
        split = split_uri(uri)
        if split is None:
            return None
        server = projection.servers.get(split[0])
        return (server, split[1]) if server is not None and server.offers("resources") else None

    def _key(self, ctx: CallContext, server: str, name: str, *, uri: bool) -> str:
        if ctx.server is not None:
            return name
        return namespace_uri(server, name) if uri else f"{server}{SEPARATOR}{name}"

    async def _filter(
        self,
        projection: ActiveProjection,
        ctx: CallContext,
        action: str,
        offered: list[tuple[Candidate, dict[str, Any]]],
        *,
        started: float,
        failure: str | None = None,
    ) -> list[dict[str, Any]]:
        """One ``gateway_runtime.main.list`` query over ``offered``; audit it; the allowed items.

        ``failure`` is the category of an upstream that could not be listed (audited as
        ``error`` while the others are still served). OPA failing lists nothing.
        """
        listed_allowed: frozenset[str] = frozenset()
        decision_id, revision = None, None
        if offered:
            doc = build_discovery_input(
                tenant=self._config.tenant,
                environment=self._config.environment,
                subject=ctx.subject,
                candidates=[c for c, _ in offered],
                session_id=ctx.session_id,
                protocol_version=ctx.protocol_version,
                projection_version=projection.version,
                action=action,
            )
            try:
                listed = await self._current(projection, lambda: self._engine.visible(doc))
            except Exception as exc:  # an unexpected failure lists nothing too, and is audited as internal_error
                category = exc.category if isinstance(exc, GatewayError) else "internal_error"
                log.warning("%s denied: %s (%s)", action, category, type(exc).__name__)
                self._event(
                    ctx,
                    decision_id=str(uuid.uuid4()),
                    action=action,
                    server=ctx.server,
                    tool=None,
                    allowed=False,
                    reasons=[category],
                    revision=None,
                    projection=projection,
                    started=started,
                    status="error",
                    error_category=category,
                )
                return []
            listed_allowed, decision_id, revision = listed.allowed, listed.decision_id, listed.revision
        items = [item for c, item in offered if c.key in listed_allowed]
        self._event(
            ctx,
            decision_id=decision_id or str(uuid.uuid4()),
            action=action,
            server=ctx.server,
            tool=None,
            allowed=True,
            reasons=[f"listed:{len(items)}/{len(offered)}"],
            revision=revision,
            projection=projection,
            started=started,
            status="error" if failure else "ok",
            error_category=failure,
        )
        return items
