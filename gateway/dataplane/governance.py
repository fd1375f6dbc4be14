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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import anyio
import orjson
from jsonschema.exceptions import best_match
from referencing.exceptions import Unresolvable

from gateway.config import Config
from gateway.dataplane.audit import AuditShipper
from gateway.dataplane.drift import DriftWatch
from gateway.dataplane.namespacing import namespace_content
from gateway.dataplane.projection import ActiveProjection, ToolEntry
from gateway.errors import (
    ArgumentsTooDeep,
    ArgumentsTooLarge,
    GatewayError,
    PolicyDenied,
    PolicyRevisionStale,
    RequestRejected,
    UnexpectedParam,
    UpstreamError,
    UpstreamProtocolError,
)
from gateway.mcp.messages import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    MAX_PARAMS_DEPTH,
    MAX_PARAMS_VALUES,
    POLICY_DENIED,
    error_response,
    result_response,
)
from gateway.mcp.upstream import UpstreamPool
from gateway.policy.decision import Decision, ListDecision
from gateway.policy.input import Candidate, Subject, build_discovery_input, build_input
from gateway.policy.opa import PolicyEngine

__all__ = ["CALL_PARAMS", "STALE_WAIT", "TOOL_DRIFTED", "UPSTREAM_FAILED", "CallContext", "Governor", "is_stale"]

log = logging.getLogger("gateway.pep")

UPSTREAM_FAILED = -32004
"""Implementation-defined JSON-RPC code: the upstream failed (``data.category``)."""

TOOL_DRIFTED = "tool_drifted"
"""``data.category`` of the ``-32602`` refusing a call to a drifted tool (:mod:`gateway.dataplane.drift`)."""

CALL_PARAMS = frozenset({"name", "arguments", "_meta"})
"""The ``tools/call`` ``params`` keys a client may send. ``_meta`` is consumed (never
forwarded); ``name`` and ``arguments`` are forwarded. Anything else — the
experimental ``task`` (2025-11-25; the gateway does not advertise ``tasks``), MRTR's
``inputResponses``/``requestState`` (2026-07-28) or an unknown key — is refused with
``-32602``: policy never sees it, so it must not reach the upstream either."""

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


@dataclass(frozen=True, slots=True)
class CallContext:
    """Who is asking, on which session and endpoint.

    Attributes:
        subject: The verified caller.
        session_id: Legacy ``Mcp-Session-Id`` (None for stateless 2026-07-28 requests).
        protocol_version: The client's negotiated revision.
        server: ``None`` on the aggregated ``/mcp`` endpoint, else the server of ``/mcp/{server}``.
    """

    subject: Subject
    session_id: str | None
    protocol_version: str
    server: str | None


class Governor:
    """Runs governed MCP operations against the active projection.

    Args:
        config: Tenant/environment and data-plane id.
        engine: The PDP (OPA sidecar).
        upstreams: Pooled upstream sessions.
        audit: The audit shipper.
        drift: The drift verdicts (:mod:`gateway.dataplane.drift`); None: no tool is ever drifted.
    """

    def __init__(
        self,
        config: Config,
        engine: PolicyEngine,
        upstreams: UpstreamPool,
        audit: AuditShipper,
        *,
        drift: DriftWatch | None = None,
    ) -> None:
        self._config = config
        self._engine = engine
        self._upstreams = upstreams
        self._audit = audit
        self._drift = drift

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

    async def _current(self, projection: ActiveProjection, ask: Callable[[], Awaitable[_R]]) -> _R:
        """Ask OPA until it answers from the data plane's policy version (or a newer projection).

        During a rollout the data plane and OPA pick up a projection independently;
        an answer from an *older* projection with a *different* policy version would
        apply a superseded policy, so it is re-asked for up to ``STALE_WAIT`` seconds
        (OPA usually catches up in tens of milliseconds), then denied.

        Raises:
            PolicyRevisionStale: OPA stayed on the older policy version.
        """
        deadline = time.monotonic() + STALE_WAIT
        while True:
            answer = await ask()
            if not is_stale(answer.revision, projection):
                return answer
            if time.monotonic() >= deadline:
                raise PolicyRevisionStale(f"OPA decided with {answer.revision}, data plane is on {projection.revision}")
            await anyio.sleep(0.02)

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
            listed = await self._current(projection, lambda: self._engine.visible(doc))
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
        return None

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
        unexpected = [key for key in params if key not in CALL_PARAMS]
        if unexpected:
            key = min(unexpected)[:64]
            message = f"Unsupported tools/call params key {key!r} (accepted: name, arguments, _meta)"
            return self._reject(projection, ctx, trace, msg_id, UnexpectedParam.category, message)
        arguments = params.get("arguments", {})
        if arguments is None:
            arguments = {}
        if not isinstance(name, str) or not isinstance(arguments, dict):
            message = "tools/call needs a string name and object arguments"
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
        )
        denied = await self._decide(projection, ctx, trace, msg_id, doc)
        if denied is not None:
            return denied
        upstream = self._upstreams.get(server.name, server.transport, server.url)
        try:
            reply = await upstream.request("tools/call", {"name": entry.name, "arguments": arguments})
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
        self._emit(projection, ctx, trace, status=status, result_sha256=result_hash)
        if isinstance(result, dict):
            if ctx.server is None and isinstance(result.get("content"), list):
                # resource_link / embedded resource URIs, so the client can read them through /mcp
                result["content"] = [namespace_content(block, entry.server) for block in result["content"]]
            return result_response(msg_id, result)
        return {"jsonrpc": "2.0", "id": msg_id, "error": error_obj}


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


def _is_error_object(value: Any) -> bool:
    """A JSON-RPC 2.0 error object (§5.1): ``code`` an integer, ``message`` a string."""
    return isinstance(value, dict) and type(value.get("code")) is int and isinstance(value.get("message"), str)
