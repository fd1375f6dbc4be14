"""The PEP: governed ``tools/list`` and ``tools/call`` (discovery filter, schema, OPA, routing, audit).

Order for ``tools/call`` (each step fails closed and nothing after it runs):

0. refuse malformed params with ``-32602``: nested or sized beyond the parser's
   limits (``arguments_too_deep``/``arguments_too_large``), a key other than
   :data:`CALL_PARAMS` (``unexpected_param``), a name that is not a string or
   arguments that are not an object (``bad_request``);
1. resolve the tool in the active projection (unknown -> JSON-RPC ``-32602``); a
   drifted tool (its upstream definition changed since approval) -> ``-32602``
   ``tool_drifted``;
2. validate arguments against the approved ``inputSchema``, closed to argument keys
   it does not declare (:func:`~gateway.dataplane.projection.closed_schema`) (invalid -> a tool
   result with ``isError: true`` naming the failing field, MCP 2025-11-25
   SEP-1303; OPA is not asked, the upstream never sees it);
3. ask OPA (deny, undefined, malformed or unreachable -> JSON-RPC error
   ``-32003`` with ``data.category`` and ``data.reasons``); an answer from a
   superseded policy version is re-asked, then denied (``policy_revision_stale``);
4. forward ``name`` and ``arguments`` to the pooled upstream session; an answer
   that is neither a result object nor a JSON-RPC error object, or that is nested
   too deep to encode, is ``-32004`` ``upstream_protocol_error`` (audited
   ``allowed``, status ``error``: the upstream did run the call);
5. enqueue one audit event (hashes only) — never awaited. Exactly one event per
   call, whatever happens: an unexpected exception is audited (``internal_error``)
   before it propagates.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import anyio
import orjson
from jsonschema.exceptions import best_match
from referencing.exceptions import Unresolvable

from gateway.apiadapter.binding import API_META
from gateway.apiadapter.upstream import ApiPool
from gateway.config import Config
from gateway.dataplane.audit import AuditShipper
from gateway.dataplane.credentials import (
    BindingRef,
    CredentialResolver,
    NoCredential,
    choose,
    credential_input,
    for_transport,
    obligated,
)
from gateway.dataplane.drift import DriftWatch
from gateway.dataplane.namespacing import namespace_content
from gateway.dataplane.projection import ActiveProjection, ServerEntry, ToolEntry
from gateway.dataplane.relay import GovernedChannel, settle_input_required
from gateway.errors import (
    ArgumentsTooDeep,
    ArgumentsTooLarge,
    CredentialNotConnected,
    CredentialUnavailable,
    GatewayError,
    PolicyDenied,
    PolicyRevisionStale,
    PolicyUnavailable,
    RequestRejected,
    UnexpectedParam,
    UnknownServer,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamUnavailable,
)
from gateway.mcp.channel import ClientChannel
from gateway.mcp.credential import UpstreamCredential
from gateway.mcp.messages import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    MAX_PARAMS_DEPTH,
    MAX_PARAMS_VALUES,
    MODERN_VERSIONS,
    POLICY_DENIED,
    error_response,
    result_response,
)
from gateway.mcp.upstream import Upstream, UpstreamCaller, UpstreamPool, caller_capabilities
from gateway.observability.context import note_governed
from gateway.observability.metrics import DataPlaneMetrics
from gateway.observability.tracing import DISABLED, Tracing
from gateway.policy.decision import Decision, ListDecision
from gateway.policy.input import Candidate, Subject, build_discovery_input, build_input
from gateway.policy.opa import PolicyEngine

__all__ = [
    "CALL_PARAMS",
    "STALE_WAIT",
    "TOOL_DRIFTED",
    "UPSTREAM_FAILED",
    "CallContext",
    "Governor",
    "client_request_arguments",
    "is_stale",
    "mrtr_params_valid",
    "relayed_params",
]

log = logging.getLogger("gateway.pep")

UPSTREAM_FAILED = -32004
"""Implementation-defined JSON-RPC code: the upstream failed (``data.category``)."""

TOOL_DRIFTED = "tool_drifted"
"""``data.category`` of the ``-32602`` refusing a call to a drifted tool (:mod:`gateway.dataplane.drift`)."""

MRTR_PARAMS = ("inputResponses", "requestState")
"""Params a 2026-07-28 client retries an ``input_required`` request with."""

CALL_PARAMS = frozenset({"name", "arguments", "_meta", *MRTR_PARAMS})
"""The ``tools/call`` ``params`` keys a client may send. ``name`` and ``arguments`` are
forwarded; of ``_meta`` only ``progressToken`` is (:func:`relayed_params`); MRTR's
``inputResponses``/``requestState`` only from a 2026-07-28 client, answering input
requests that policy allowed. Anything else — the experimental ``task`` (2025-11-25;
the gateway does not advertise ``tasks``) or an unknown key — is refused with
``-32602``: policy never sees it, so it must not reach the upstream either."""


RELAYED_META = ("progressToken", "io.modelcontextprotocol/logLevel")
"""``_meta`` keys forwarded when the client has a response stream: the progress token
(MCP 2025-11-25 ``basic/utilities/progress``) and the 2026-07-28 per-request log level
(``server/utilities/logging``); the rest of ``_meta`` stays with the gateway."""


def mrtr_params_valid(params: dict[str, Any]) -> bool:
    """``inputResponses`` (when present) maps keys to result objects and ``requestState`` is a
    string: the shapes of MCP 2026-07-28 ``InputResponseRequestParams``."""
    responses, state = params.get("inputResponses"), params.get("requestState")
    if "inputResponses" in params and not (
        isinstance(responses, dict) and all(isinstance(v, dict) for v in responses.values())
    ):
        return False
    return "requestState" not in params or isinstance(state, str)


def relayed_params(params: dict[str, Any], ctx: CallContext) -> dict[str, Any]:
    """The params forwarded besides the request's own: the :data:`RELAYED_META` of ``_meta``
    when the client can receive what they ask for, and a 2026-07-28 client's ``inputResponses`` and
    ``requestState`` (MCP 2026-07-28 ``basic/patterns/mrtr``; opaque to the gateway)."""
    out: dict[str, Any] = {}
    meta = params.get("_meta")
    if ctx.client is not None and isinstance(meta, dict):
        kept = {key: meta[key] for key in RELAYED_META if key in meta}
        if kept:
            out["_meta"] = kept
    if ctx.client is not None and ctx.log_level is not None:
        out.setdefault("_meta", {}).setdefault("io.modelcontextprotocol/logLevel", ctx.log_level)
    if ctx.protocol_version in MODERN_VERSIONS:
        out.update((key, params[key]) for key in MRTR_PARAMS if key in params)
    return out


_REJECTION_MESSAGES = {
    ArgumentsTooDeep.category: f"Arguments nest deeper than {MAX_PARAMS_DEPTH} levels",
    ArgumentsTooLarge.category: f"Arguments hold more than {MAX_PARAMS_VALUES} JSON values",
}

STALE_WAIT = 1.0
"""Seconds a call waits for OPA to activate the policy version the data plane already routes with."""

_R = TypeVar("_R", Decision, ListDecision)
_REVISION = re.compile(r"^p(?P<projection>[0-9]+)-pv(?P<policy>[0-9]+)$")


def is_stale(revision: str | None, projection: ActiveProjection) -> bool:
    """True when OPA's bundle ``revision`` (``p<N>-pv<P>``) carries another policy
    version than ``projection`` and is not newer than it; unparseable is stale (fail closed)."""
    match = _REVISION.match(revision or "")
    if match is None:
        return True
    if int(match["policy"]) == (projection.policy_version or 0):
        return False
    return int(match["projection"]) <= projection.version


def _sha256(value: Any) -> str:
    """SHA-256 (hex) of ``value`` as canonical JSON (orjson, keys sorted)."""
    return hashlib.sha256(orjson.dumps(value, option=orjson.OPT_SORT_KEYS)).hexdigest()


def _relay_sha256(value: Any) -> str:
    """:func:`_sha256` of a value the gateway is about to relay inside a JSON-RPC response.

    The value is encoded one level down (``{"v": value}``, then the ``{"v":`` and ``}``
    bytes are cut off, leaving exactly ``_sha256``'s input), so a value that hashes here
    also fits in the response message one level below its top: orjson refuses to encode
    more than 254 levels. Same cost as :func:`_sha256`.

    Raises:
        TypeError: ``orjson.JSONEncodeError``, the value cannot be encoded (too deep).
    """
    blob = orjson.dumps({"v": value}, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(memoryview(blob)[5:-1]).hexdigest()


_POLICY_ARGUMENTS = {
    "sampling/createMessage": ("maxTokens", "includeContext"),
    "elicitation/create": ("mode",),
    "roots/list": (),
}


def client_request_arguments(method: str, params: dict[str, Any]) -> dict[str, Any]:
    """What policy sees (``input.arguments``) of an upstream's request of the client.

    ``sampling/createMessage``: ``maxTokens`` and ``includeContext``; ``elicitation/create``:
    ``mode`` (``"form"`` when absent, MCP 2025-11-25 ``client/elicitation``); ``roots/list``:
    nothing. Never the messages, the elicitation text or its schema.
    """
    kept = {key: params[key] for key in _POLICY_ARGUMENTS.get(method, ()) if key in params}
    if method == "elicitation/create":
        kept.setdefault("mode", "form")
    return kept


@dataclass(frozen=True, slots=True)
class CallContext:
    """Who is asking, on which session and endpoint.

    Attributes:
        subject: The verified caller.
        session_id: Legacy ``Mcp-Session-Id`` (None for stateless 2026-07-28 requests).
        protocol_version: The client's negotiated revision.
        server: ``None`` on the aggregated ``/mcp`` endpoint, else the server of ``/mcp/{server}``.
        client: Where the upstream's messages about this request go (progress, log
            messages, and its requests of the client): the client's response stream;
            None when nothing can be relayed.
        client_capabilities: What the client declared (``initialize`` ``capabilities``, or
            the 2026-07-28 ``clientCapabilities``): a relayed request needs its capability.
        can_ask: True when the client can be sent a request mid-call (handshake era);
            a 2026-07-28 client is asked through ``input_required`` results instead.
        log_level: The level a handshake-era client set with ``logging/setLevel``: sent to
            the upstream as the request's ``io.modelcontextprotocol/logLevel``, which a
            2026-07-28 upstream needs before it sends log messages (and others ignore).
    """

    subject: Subject
    session_id: str | None
    protocol_version: str
    server: str | None
    client: ClientChannel | None = None
    client_capabilities: dict[str, Any] = field(default_factory=dict)
    can_ask: bool = False
    log_level: str | None = None

    @property
    def caller(self) -> UpstreamCaller:
        """The key of this caller's own upstream sessions (:class:`~gateway.mcp.upstream.UpstreamPool`)."""
        return UpstreamCaller(self.subject.issuer, self.subject.sub, caller_capabilities(self.client_capabilities))


class Governor:
    """Runs governed MCP operations against the active projection.

    Args:
        config: Tenant/environment and data-plane id.
        engine: The PDP (OPA sidecar).
        upstreams: Pooled upstream sessions.
        audit: The audit shipper.
        drift: The drift verdicts (:mod:`gateway.dataplane.drift`); None: no tool is ever drifted.
        metrics: Decision and upstream latencies (:mod:`gateway.observability.metrics`); None: none.
        tracing: The ``gateway.validation``, ``gateway.decision`` and ``gateway.upstream`` spans
            (:mod:`gateway.observability.tracing`; off by default, at the cost of one boolean check).
    """

    def __init__(
        self,
        config: Config,
        engine: PolicyEngine,
        upstreams: UpstreamPool,
        audit: AuditShipper,
        *,
        drift: DriftWatch | None = None,
        broker: CredentialResolver | None = None,
        metrics: DataPlaneMetrics | None = None,
        tracing: Tracing = DISABLED,
        apis: ApiPool | None = None,
    ) -> None:
        self._config = config
        self._engine = engine
        self._upstreams = upstreams
        self._apis = apis
        self._audit = audit
        self._drift = drift
        self._broker = broker
        self._metrics = metrics
        self._tracing = tracing

    def _drifted(self, entry: ToolEntry) -> bool:
        return self._drift is not None and self._drift.is_drifted(entry)

    def _event(
        self,
        ctx: CallContext,
        *,
        decision_id: str,
        action: str,
        server: str | None,
        tool: str | None,
        allowed: bool,
        reasons: list[str],
        revision: str | None,
        projection: ActiveProjection,
        started: float,
        status: str,
        error_category: str | None = None,
        arguments_sha256: str | None = None,
        result_sha256: str | None = None,
    ) -> None:
        self._audit.emit(
            {
                "decision_id": decision_id,
                "timestamp": datetime.now(UTC).isoformat(),
                "tenant": self._config.tenant,
                "environment": self._config.environment,
                "dataplane_id": self._config.data_plane.id,
                "subject": ctx.subject.sub,
                "client_id": ctx.subject.client_id,
                "action": action,
                "server": server,
                "tool": tool,
                "allowed": allowed,
                "reasons": reasons,
                "policy_revision": revision,
                "projection_version": projection.version,
                "latency_ms": round((time.perf_counter() - started) * 1000, 3),
                "status": status,
                "error_category": error_category,
                "arguments_sha256": arguments_sha256,
                "result_sha256": result_sha256,
                "session_id": ctx.session_id,
                "protocol_version": ctx.protocol_version,
            }
        )
        note_governed(
            decision_id=decision_id, server=server, tool=tool, status=status, protocol_version=ctx.protocol_version
        )

    async def _current(
        self, projection: ActiveProjection, ask: Callable[[], Awaitable[_R]], *, query: str = "call"
    ) -> _R:
        """Ask OPA until it answers from the data plane's policy version (or a newer projection).

        During a rollout the data plane and OPA pick up a projection independently;
        an answer from an *older* projection with a *different* policy version would
        apply a superseded policy, so it is re-asked for up to ``STALE_WAIT`` seconds
        (OPA usually catches up in tens of milliseconds), then denied.

        Raises:
            PolicyRevisionStale: OPA stayed on the older policy version.

        Each query is timed (``gateway_opa_decision_duration_seconds``); the whole is the
        ``gateway.decision`` span, with the decision id, bundle revision and verdict.
        """
        with self._tracing.span("gateway.decision") as span:
            deadline = time.monotonic() + STALE_WAIT
            while True:
                answer = await self._ask(ask, query)
                if not is_stale(answer.revision, projection):
                    if span.is_recording():
                        _decision_attributes(span, answer)
                    return answer
                if time.monotonic() >= deadline:
                    raise PolicyRevisionStale(
                        f"OPA decided with {answer.revision}, data plane is on {projection.revision}"
                    )
                await anyio.sleep(0.02)

    async def _ask(self, ask: Callable[[], Awaitable[_R]], query: str) -> _R:
        """One decision query, timed for the metrics: ``list`` for a discovery filter, else ``call``
        (by the answer; ``query`` names a query that failed)."""
        metrics = self._metrics
        if metrics is None:
            return await ask()
        started = time.perf_counter()
        try:
            answer = await ask()
        except GatewayError as exc:
            outcome = "unavailable" if isinstance(exc, PolicyUnavailable) else "invalid"
            metrics.observe_decision(query, time.perf_counter() - started, outcome=outcome)
            raise
        query = "list" if isinstance(answer, ListDecision) else "call"
        metrics.observe_decision(query, time.perf_counter() - started)
        return answer

    def _visible_candidates(self, projection: ActiveProjection, ctx: CallContext) -> list[tuple[Candidate, ToolEntry]]:
        if ctx.server is None:
            items = sorted(projection.aggregated.items())
        else:
            srv = projection.servers.get(ctx.server)
            items = sorted(srv.tools.items()) if srv else []
        out = []
        for key, entry in items:
            if self._drifted(entry):  # hidden until re-approved
                continue
            transport = projection.servers[entry.server].transport
            out.append((Candidate(key, entry.server, transport, entry.name, entry.annotations), entry))
        return out

    async def list_tools(self, projection: ActiveProjection, ctx: CallContext) -> list[dict[str, Any]]:
        """Return the approved tools this caller may use, in one OPA query.

        Returns:
            Wire tool definitions (names prefixed ``<server>__`` on ``/mcp``),
            sorted by name. Empty when OPA is unavailable (fail closed).
        """
        started = time.perf_counter()
        candidates = self._visible_candidates(projection, ctx)
        if not candidates:
            return []
        doc = build_discovery_input(
            tenant=self._config.tenant,
            environment=self._config.environment,
            subject=ctx.subject,
            candidates=[c for c, _ in candidates],
            session_id=ctx.session_id,
            protocol_version=ctx.protocol_version,
            projection_version=projection.version,
        )
        try:
            listed = await self._current(projection, lambda: self._engine.visible(doc), query="list")
        except Exception as exc:  # an unexpected failure lists nothing too, and is audited as internal_error
            category = exc.category if isinstance(exc, GatewayError) else "internal_error"
            log.warning("tools/list denied: %s (%s)", category, type(exc).__name__)
            self._event(
                ctx,
                decision_id=str(uuid.uuid4()),
                action="tools/list",
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
        tools = [{**entry.wire, "name": c.key} for c, entry in candidates if c.key in listed.allowed]
        self._event(
            ctx,
            decision_id=listed.decision_id or str(uuid.uuid4()),
            action="tools/list",
            server=ctx.server,
            tool=None,
            allowed=True,
            reasons=[f"listed:{len(tools)}/{len(candidates)}"],
            revision=listed.revision,
            projection=projection,
            started=started,
            status="ok",
        )
        return tools

    async def call_tool(
        self,
        projection: ActiveProjection,
        ctx: CallContext,
        msg_id: str | int | None,
        params: dict[str, Any],
        *,
        rejection: RequestRejected | None = None,
    ) -> dict[str, Any]:
        """Run one governed ``tools/call``; returns the JSON-RPC response message.

        Args:
            projection: The routing table the call is resolved in.
            ctx: Caller, session and endpoint.
            msg_id: The client's JSON-RPC id, echoed in the response.
            params: The client's ``params``: ``name``, ``arguments`` and ``_meta``
                (MCP 2025-11-25 / 2026-07-28 ``CallToolRequestParams``); any other key is
                refused with ``-32602`` (:class:`~gateway.errors.UnexpectedParam`).
                Only ``name`` and ``arguments`` — exactly what policy saw — are forwarded.
            rejection: The parser's verdict on ``params`` (too deep or too large,
                :attr:`~gateway.mcp.messages.JsonRpcMessage.rejection`); when set the
                call is refused with ``-32602`` and audited as ``rejected``.

        Every outcome emits exactly one audit event, unexpected exceptions and
        cancellation included (status ``error``, category ``internal_error`` or
        ``cancelled``); the exception is then re-raised for the endpoint to map.
        """
        trace = _Trace(started=time.perf_counter(), server=ctx.server)
        try:
            return await self._call_tool(projection, ctx, msg_id, params, rejection, trace)
        except BaseException as exc:
            if not trace.audited:
                category = "internal_error" if isinstance(exc, Exception) else "cancelled"
                log.error("tools/call failed unexpectedly: %s (%s)", category, type(exc).__name__)
                self._emit(projection, ctx, trace, status="error", error_category=category, reasons=[category])
            raise

    def _emit(
        self,
        projection: ActiveProjection,
        ctx: CallContext,
        trace: _Trace,
        *,
        status: str,
        error_category: str | None = None,
        reasons: list[str] | None = None,
        result_sha256: str | None = None,
    ) -> None:
        if trace.decision_id is None:
            trace.decision_id = str(uuid.uuid4())
        self._event(
            ctx,
            decision_id=trace.decision_id,
            action=trace.action,
            server=trace.server,
            tool=trace.tool,
            allowed=trace.allowed,
            reasons=trace.reasons if reasons is None else reasons,
            revision=trace.revision,
            projection=projection,
            started=trace.started,
            status=status,
            error_category=error_category,
            arguments_sha256=trace.arguments_sha256,
            result_sha256=result_sha256,
        )
        trace.audited = True

    async def _decide(
        self,
        projection: ActiveProjection,
        ctx: CallContext,
        trace: _Trace,
        msg_id: str | int | None,
        doc: dict[str, Any],
    ) -> dict[str, Any] | None:
        """Ask OPA; on anything but allow, audit ``denied`` and return the ``-32003`` response."""
        try:
            decision = await self._current(projection, lambda: self._engine.decide(doc))
            if not decision.allow:
                raise PolicyDenied("denied by policy", reasons=list(decision.reasons))
        except GatewayError as exc:
            reasons = [exc.category]
            if isinstance(exc, PolicyDenied):
                trace.decision_id = decision.decision_id
                reasons, trace.revision = exc.reasons, decision.revision
            self._emit(projection, ctx, trace, status="denied", error_category=exc.category, reasons=reasons)
            message = "Denied by policy" if isinstance(exc, PolicyDenied) else "Policy decision unavailable"
            data = {"category": exc.category, "reasons": reasons, "decision_id": trace.decision_id}
            return error_response(msg_id, POLICY_DENIED, message, data)
        trace.decision_id = decision.decision_id or str(uuid.uuid4())
        trace.allowed, trace.reasons, trace.revision = True, list(decision.reasons), decision.revision
        trace.obligations = decision.obligations
        return None

    async def _credential(
        self,
        projection: ActiveProjection,
        ctx: CallContext,
        trace: _Trace,
        msg_id: str | int | None,
        server: ServerEntry,
        chosen: BindingRef | None,
    ) -> tuple[UpstreamCredential | None, dict[str, Any] | None]:
        """The credential an allowed request goes upstream with (:mod:`gateway.dataplane.credentials`).

        Returns:
            ``(material, None)`` (material None for a server that requires none), or ``(None,
            response)``: ``-32003`` ``credential_required``/``credential_obligation`` (audited
            ``denied``: nothing is sent unauthenticated); ``credential_not_connected`` (audited
            ``rejected``), answered by :func:`_not_connected` with the caller's connect URL; or
            ``-32002``-style upstream failure ``credential_unavailable`` (audited ``error``).
        """
        try:
            if not server.requires_credential:
                if trace.obligations.get("credential") is not None:
                    raise NoCredential(
                        "credential_obligation", "The policy's credential obligation names no credential of this server"
                    )
                return None, None
            binding = obligated(server.bindings, trace.obligations, chosen)
            if self._broker is None:
                raise CredentialUnavailable("no credential broker on this data plane")
            material = await self._broker.resolve(server.name, binding, ctx.subject)
            return for_transport(material, server.name, server.transport), None
        except NoCredential as exc:
            self._emit(projection, ctx, trace, status="denied", error_category=exc.category, reasons=[exc.category])
            data = {"category": exc.category, "reasons": [exc.category], "decision_id": trace.decision_id}
            return None, error_response(msg_id, POLICY_DENIED, str(exc), data)
        except CredentialNotConnected as exc:
            self._emit(projection, ctx, trace, status="rejected", error_category=exc.category, reasons=[exc.category])
            return None, _not_connected(msg_id, ctx, trace, server.name, exc.connect_url)
        except CredentialUnavailable as exc:
            log.warning("upstream %s: %s", server.name, exc)
            self._emit(projection, ctx, trace, status="error", error_category=exc.category)
            data = {"category": exc.category, "decision_id": trace.decision_id}
            return None, error_response(msg_id, UPSTREAM_FAILED, "Upstream credential unavailable", data)

    async def govern_client_request(
        self,
        projection: ActiveProjection,
        ctx: CallContext,
        server: str,
        tool: ToolEntry | None,
        method: str,
        params: dict[str, Any],
        ask: Callable[[], Awaitable[dict[str, Any]]],
    ) -> dict[str, Any]:
        """Decide, relay and audit one request an upstream makes of the caller's client.

        Args:
            server: The asking upstream.
            tool: The tool whose ``tools/call`` the request belongs to (``input.tool``), if any.
            method: ``sampling/createMessage``, ``elicitation/create`` or ``roots/list``.
            params: The upstream's params; policy sees only :func:`client_request_arguments`
                of them, the audit event only their hash.
            ask: Sends the request to the client; returns ``{"result"}`` or ``{"error"}``.

        Returns:
            What to answer the upstream: the client's ``{"result": ...}`` or ``{"error": ...}``,
            or ``-32003`` (``data.category``, ``reasons``, ``decision_id``) when policy refused.
            Exactly one audit event (``action`` = ``method``): ``denied``, ``ok``,
            ``tool_error`` (the client answered an error) or ``error``.
        """
        trace = _client_request_trace(server, tool, method, params)
        entry = projection.servers.get(server)
        try:
            doc = build_input(
                tenant=self._config.tenant,
                environment=self._config.environment,
                action=method,
                subject=ctx.subject,
                server=server,
                transport=entry.transport if entry is not None else None,
                tool=trace.tool,
                annotations=tool.annotations if tool is not None else None,
                arguments=client_request_arguments(method, params),
                session_id=ctx.session_id,
                protocol_version=ctx.protocol_version,
                projection_version=projection.version,
            )
            denied = await self._decide(projection, ctx, trace, None, doc)
            if denied is not None:
                return {"error": denied["error"]}
            reply = await ask()
            error = reply.get("error")
            status = "tool_error" if isinstance(error, dict) else "ok"
            category = (
                error.get("data", {}).get("category")
                if isinstance(error, dict) and isinstance(error.get("data"), dict)
                else None
            )
            self._emit(
                projection,
                ctx,
                trace,
                status="error" if category else status,
                error_category=category,
                result_sha256=_sha256(reply),
            )
            return reply
        except BaseException as exc:
            if not trace.audited:
                category = "internal_error" if isinstance(exc, Exception) else "cancelled"
                self._emit(projection, ctx, trace, status="error", error_category=category, reasons=[category])
            raise

    def channel(
        self, projection: ActiveProjection, ctx: CallContext, server: str, tool: ToolEntry | None = None
    ) -> GovernedChannel:
        """The governed way from ``server`` to this request's client (:mod:`gateway.dataplane.relay`)."""
        drift = self._drift
        return GovernedChannel(
            self, projection, ctx, server, tool, on_list_changed=drift.request_check if drift is not None else None
        )

    async def relay(
        self,
        upstream: Upstream,
        method: str,
        params: dict[str, Any],
        channel: GovernedChannel,
        ctx: CallContext,
    ) -> dict[str, Any]:
        """Send one request upstream with its channel; settle ``input_required`` for a client that cannot.

        A 2026-07-28 client gets an ``input_required`` result as is, after policy allowed
        each of its input requests (:meth:`GovernedChannel.check_input_requests`); any other
        client gets the complete result (:func:`~gateway.dataplane.relay.settle_input_required`).

        The whole exchange is timed (``gateway_upstream_duration_seconds``) and is the
        ``gateway.upstream`` span (server, transport, method).
        """
        server, transport = channel.server, channel.transport
        attributes = {"gateway.server": server, "gateway.transport": transport, "mcp.method.name": method}
        started = time.perf_counter()
        try:
            with self._tracing.span("gateway.upstream", attributes, client=True):
                return await self._relay(upstream, method, params, channel, ctx)
        finally:
            if self._metrics is not None:
                self._metrics.observe_upstream(server, transport, time.perf_counter() - started)

    async def _relay(
        self,
        upstream: Upstream,
        method: str,
        params: dict[str, Any],
        channel: GovernedChannel,
        ctx: CallContext,
    ) -> dict[str, Any]:
        reply = await upstream.request(method, params, channel)
        result = reply.get("result")
        if not isinstance(result, dict) or result.get("resultType") != "input_required":
            return reply
        if ctx.protocol_version in MODERN_VERSIONS:
            refusal = await channel.check_input_requests(result)
            return reply if refusal is None else {"jsonrpc": "2.0", "id": reply.get("id"), "error": refusal}

        async def resend(extra: dict[str, Any]) -> dict[str, Any]:
            return await upstream.request(method, {**params, **extra}, channel)

        return await settle_input_required(reply, channel, resend)

    def refuse_client_request(
        self,
        projection: ActiveProjection,
        ctx: CallContext,
        server: str,
        tool: ToolEntry | None,
        method: str,
        params: dict[str, Any],
        error: dict[str, Any],
    ) -> dict[str, Any]:
        """Audit an upstream's request of the client refused before policy (``rejected``, with
        ``error.data.category``) and return ``{"error": error}`` for the upstream."""
        trace = _client_request_trace(server, tool, method, params)
        data = error.get("data")
        category = str(data.get("category")) if isinstance(data, dict) else "refused"
        self._emit(projection, ctx, trace, status="rejected", error_category=category, reasons=[category])
        return {"error": error}

    def _reject(
        self,
        projection: ActiveProjection,
        ctx: CallContext,
        trace: _Trace,
        msg_id: str | int | None,
        category: str,
        message: str,
    ) -> dict[str, Any]:
        """Audit a refused call (``rejected``, nothing asked or forwarded) and answer ``-32602``."""
        self._emit(projection, ctx, trace, status="rejected", error_category=category, reasons=[category])
        return error_response(msg_id, INVALID_PARAMS, message, {"category": category})

    async def _call_tool(
        self,
        projection: ActiveProjection,
        ctx: CallContext,
        msg_id: str | int | None,
        params: dict[str, Any],
        rejection: RequestRejected | None,
        trace: _Trace,
    ) -> dict[str, Any]:
        name = params.get("name")
        if isinstance(name, str):
            # Recorded (name only, never arguments) so reviewers see probing and malformed calls.
            trace.tool = name[:128]
        if rejection is not None:
            message = _REJECTION_MESSAGES.get(rejection.category, "Invalid params")
            return self._reject(projection, ctx, trace, msg_id, rejection.category, message)
        modern = ctx.protocol_version in MODERN_VERSIONS
        unexpected = [key for key in params if key not in CALL_PARAMS or (key in MRTR_PARAMS and not modern)]
        if unexpected:
            key = min(unexpected)[:64]
            accepted = "name, arguments, _meta" + (", inputResponses, requestState" if modern else "")
            message = f"Unsupported tools/call params key {key!r} (accepted: {accepted})"
            return self._reject(projection, ctx, trace, msg_id, UnexpectedParam.category, message)
        arguments = params.get("arguments", {})
        if arguments is None:
            arguments = {}
        if not isinstance(name, str) or not isinstance(arguments, dict):
            message = "tools/call needs a string name and object arguments"
            return self._reject(projection, ctx, trace, msg_id, RequestRejected.category, message)
        if not mrtr_params_valid(params):
            message = "inputResponses must map keys to result objects and requestState must be a string"
            return self._reject(projection, ctx, trace, msg_id, RequestRejected.category, message)
        trace.arguments_sha256 = _sha256(arguments)
        entry = projection.resolve(ctx.server, name)
        if entry is None:
            return self._reject(projection, ctx, trace, msg_id, "unknown_tool", f"Unknown tool: {name}")
        server = projection.servers[entry.server]
        trace.server, trace.tool = entry.server, entry.name
        if self._drifted(entry):
            message = f"Tool {name!r} changed upstream since it was approved; refused until it is re-approved"
            return self._reject(projection, ctx, trace, msg_id, TOOL_DRIFTED, message)

        try:
            with self._tracing.span("gateway.validation"):
                error = best_match(entry.validator.iter_errors(arguments))
        except Unresolvable:  # e.g. "#/$defs/missing": the approved schema cannot be applied
            category = "invalid_tool_schema"
            self._emit(projection, ctx, trace, status="rejected", error_category=category, reasons=[category])
            message = "The tool's approved inputSchema cannot be applied"
            return error_response(msg_id, INTERNAL_ERROR, message, {"category": category})
        if error is not None:
            field = error.json_path
            category = "invalid_arguments"
            self._emit(projection, ctx, trace, status="rejected", error_category=category, reasons=[category])
            text = f"Invalid arguments for tool {name!r}: {field}: {error.message}"
            return result_response(msg_id, {"content": [{"type": "text", "text": text}], "isError": True})

        chosen = choose(server.bindings, ctx.subject) if server.bindings else None
        doc = build_input(
            tenant=self._config.tenant,
            environment=self._config.environment,
            action="tools/call",
            subject=ctx.subject,
            server=entry.server,
            transport=server.transport,
            tool=entry.name,
            annotations=entry.annotations,
            arguments=arguments,
            session_id=ctx.session_id,
            protocol_version=ctx.protocol_version,
            projection_version=projection.version,
            needs_credential=server.requires_credential,
            credential=credential_input(chosen),
        )
        denied = await self._decide(projection, ctx, trace, msg_id, doc)
        if denied is not None:
            return denied
        credential, refused = await self._credential(projection, ctx, trace, msg_id, server, chosen)
        if refused is not None:
            return refused
        channel = self.channel(projection, ctx, server.name, entry)
        forwarded = {"name": entry.name, "arguments": arguments, **relayed_params(params, ctx)}
        try:
            upstream = self._upstream_for(server, ctx, credential)
            reply = await self.relay(upstream, "tools/call", forwarded, channel, ctx)
            result, error_obj = reply.get("result"), reply.get("error")
            if isinstance(result, dict):
                payload: Any = result
                status = "tool_error" if result.get("isError") else "ok"
            elif "result" not in reply and _is_error_object(error_obj):
                payload, status = error_obj, "tool_error"
            else:
                raise UpstreamProtocolError(f"upstream {server.name} answered neither a result object nor an error")
            try:
                result_hash = _relay_sha256(payload)
            except TypeError as exc:  # orjson.JSONEncodeError: nested deeper than it can encode
                raise UpstreamProtocolError(f"upstream {server.name} answered a result that cannot be relayed") from exc
        except UpstreamError as exc:
            log.warning("upstream %s failed: %s", server.name, exc)
            self._emit(projection, ctx, trace, status="error", error_category=exc.category)
            data = {"category": exc.category, "decision_id": trace.decision_id}
            return error_response(msg_id, UPSTREAM_FAILED, "Upstream server failed", data)
        api_error = (
            api_category(result)
            if server.api is not None and status == "tool_error" and isinstance(result, dict)
            else None
        )
        self._emit(projection, ctx, trace, status=status, error_category=api_error, result_sha256=result_hash)
        if isinstance(result, dict):
            if ctx.server is None and isinstance(result.get("content"), list):
                # resource_link / embedded resource URIs, so the client can read them through /mcp
                result["content"] = [namespace_content(block, entry.server) for block in result["content"]]
            return result_response(msg_id, result)
        return {"jsonrpc": "2.0", "id": msg_id, "error": error_obj}

    def _upstream_for(self, server: ServerEntry, ctx: CallContext, credential: UpstreamCredential | None) -> Upstream:
        """The upstream a tool call goes to: the API-to-MCP adapter for an API source
        (:mod:`gateway.apiadapter.upstream`), else the caller's pooled MCP session."""
        if server.api is not None:
            if self._apis is None:
                raise UpstreamUnavailable(f"API source {server.name}: no API adapter on this data plane")
            try:
                return self._apis.get(server.name, credential)
            except UnknownServer:  # the source left the projection since this call resolved it
                raise UpstreamUnavailable(f"API source {server.name} is no longer served") from None
        return self._upstreams.get(server.name, server.transport, server.url, ctx.caller, credential)


def api_category(result: Mapping[str, Any]) -> str | None:
    """The safe category an API source's tool error carries (``_meta["mcp-opa-gateway/http"]
    ["category"]``, set by :mod:`gateway.apiadapter.response`), for its audit event: e.g.
    ``api_not_found``, ``upstream_response_too_large``; None when absent or not a short token."""
    meta = result.get("_meta")
    http = meta.get(API_META) if isinstance(meta, Mapping) else None
    category = http.get("category") if isinstance(http, Mapping) else None
    if isinstance(category, str) and 0 < len(category) <= 64 and category.replace("_", "").isalnum():
        return category
    return None


@dataclass(slots=True)
class _Trace:
    """What one governed request (a ``tools/call`` unless ``action`` says otherwise) has
    established so far: the fields of its one audit event. ``tool`` is the name the request
    concerns: a tool or prompt name, or a resource URI."""

    started: float
    server: str | None
    tool: str | None = None
    action: str = "tools/call"
    arguments_sha256: str | None = None
    decision_id: str | None = None
    allowed: bool = False
    reasons: list[str] = field(default_factory=list)
    revision: str | None = None
    audited: bool = False
    obligations: Mapping[str, Any] = field(default_factory=dict)


def _decision_attributes(span: Any, answer: Decision | ListDecision) -> None:
    """The ``gateway.decision`` span's attributes: decision id, bundle revision, verdict."""
    if answer.decision_id:
        span.set_attribute("gateway.decision_id", answer.decision_id)
    if answer.revision:
        span.set_attribute("gateway.bundle_revision", answer.revision)
    if isinstance(answer, Decision):
        span.set_attribute("gateway.allow", bool(answer.allow))
    else:
        span.set_attribute("gateway.allowed_count", len(answer.allowed))


def _client_request_trace(server: str, tool: ToolEntry | None, method: str, params: dict[str, Any]) -> _Trace:
    """The trace of an upstream's request of the client (``action`` = its method)."""
    trace = _Trace(started=time.perf_counter(), server=server, action=method)
    trace.tool = tool.name if tool is not None else None
    trace.arguments_sha256 = _sha256(params)
    return trace


URL_ELICITATION_REQUIRED = -32042
"""MCP 2025-11-25 ``URLElicitationRequiredError`` (SEP-1036); removed in 2026-07-28."""


def _not_connected(msg_id: str | int | None, ctx: CallContext, trace: _Trace, server: str, url: str) -> dict[str, Any]:
    """The answer to a caller who has not connected their ``server`` account (credential kind
    ``oauth_authorization_code``); ``url`` is their single-use connect link.

    * A handshake-era client that declared URL-mode elicitation (``capabilities.elicitation.url``,
      MCP 2025-11-25): JSON-RPC ``-32042`` with ``data = {"elicitations": [{"mode": "url",
      "elicitationId", "url", "message"}]}``.
    * Otherwise ``tools/call``: a tool error result (``isError: true``) whose text carries the
      link, so the model can relay it; other methods: ``-32003`` with ``data = {"category":
      "credential_not_connected", "connect_url"}``.
    """
    message = f"Connect your {server} account to use this tool: {url} , then retry."
    elicitation = ctx.client_capabilities.get("elicitation")
    if ctx.protocol_version not in MODERN_VERSIONS and isinstance(elicitation, dict) and "url" in elicitation:
        item = {
            "mode": "url",
            "elicitationId": str(uuid.uuid4()),
            "url": url,
            "message": f"Connect your {server} account to use this tool.",
        }
        return error_response(msg_id, URL_ELICITATION_REQUIRED, message, {"elicitations": [item]})
    if trace.action == "tools/call":
        return result_response(msg_id, {"content": [{"type": "text", "text": message}], "isError": True})
    data = {"category": CredentialNotConnected.category, "connect_url": url}
    return error_response(msg_id, POLICY_DENIED, message, data)


def _is_error_object(value: Any) -> bool:
    """A JSON-RPC 2.0 error object (§5.1): ``code`` an integer, ``message`` a string."""
    return isinstance(value, dict) and type(value.get("code")) is int and isinstance(value.get("message"), str)
