"""The PEP: governed ``tools/list`` and ``tools/call`` (discovery filter, schema, OPA, routing, audit).

Order for ``tools/call`` (each step fails closed and nothing after it runs):

1. resolve the tool in the active projection (unknown -> JSON-RPC ``-32602``);
2. validate arguments against the approved ``inputSchema`` (invalid -> a tool
   result with ``isError: true`` naming the failing field, MCP 2025-11-25
   SEP-1303; OPA is not asked, the upstream never sees it);
3. ask OPA (deny, undefined, malformed or unreachable -> JSON-RPC error
   ``-32003`` with ``data.category`` and ``data.reasons``); an answer from a
   superseded policy version is re-asked, then denied (``policy_revision_stale``);
4. forward to the pooled upstream session;
5. enqueue one audit event (hashes only) — never awaited.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import anyio
import orjson
from jsonschema.exceptions import best_match
from referencing.exceptions import Unresolvable

from gateway.config import Config
from gateway.dataplane.audit import AuditShipper
from gateway.dataplane.projection import ActiveProjection, ToolEntry
from gateway.errors import GatewayError, PolicyDenied, PolicyRevisionStale, UpstreamError
from gateway.mcp.messages import INTERNAL_ERROR, INVALID_PARAMS, POLICY_DENIED, error_response, result_response
from gateway.mcp.upstream import UpstreamPool
from gateway.policy.decision import Decision, ListDecision
from gateway.policy.input import Candidate, Subject, build_discovery_input, build_input
from gateway.policy.opa import PolicyEngine

__all__ = ["STALE_WAIT", "UPSTREAM_FAILED", "CallContext", "Governor", "is_stale"]

log = logging.getLogger("gateway.pep")

UPSTREAM_FAILED = -32004
"""Implementation-defined JSON-RPC code: the upstream failed (``data.category``)."""


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
    return hashlib.sha256(orjson.dumps(value, option=orjson.OPT_SORT_KEYS)).hexdigest()


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
    """

    def __init__(self, config: Config, engine: PolicyEngine, upstreams: UpstreamPool, audit: AuditShipper) -> None:
        self._config = config
        self._engine = engine
        self._upstreams = upstreams
        self._audit = audit

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
        except GatewayError as exc:
            log.warning("tools/list denied: %s", exc.category)
            self._event(
                ctx,
                decision_id=str(uuid.uuid4()),
                action="tools/list",
                server=ctx.server,
                tool=None,
                allowed=False,
                reasons=[exc.category],
                revision=None,
                projection=projection,
                started=started,
                status="error",
                error_category=exc.category,
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
        self, projection: ActiveProjection, ctx: CallContext, msg_id: str | int | None, params: dict[str, Any]
    ) -> dict[str, Any]:
        """Run one governed ``tools/call``; returns the JSON-RPC response message."""
        started = time.perf_counter()
        name = params.get("name")
        arguments = params.get("arguments", {})
        if arguments is None:
            arguments = {}
        if not isinstance(name, str) or not isinstance(arguments, dict):
            return error_response(msg_id, INVALID_PARAMS, "tools/call needs a string name and object arguments")
        entry = projection.resolve(ctx.server, name)
        if entry is None:
            # Recorded (name only, no arguments) so reviewers see probing for unapproved tools.
            self._event(
                ctx,
                decision_id=str(uuid.uuid4()),
                action="tools/call",
                server=ctx.server,
                tool=name[:128],
                allowed=False,
                reasons=["unknown_tool"],
                revision=None,
                projection=projection,
                started=started,
                status="rejected",
                error_category="unknown_tool",
                arguments_sha256=_sha256(arguments),
            )
            return error_response(msg_id, INVALID_PARAMS, f"Unknown tool: {name}")
        server = projection.servers[entry.server]
        args_hash = _sha256(arguments)
        audit = functools.partial(
            self._event,
            ctx,
            action="tools/call",
            server=entry.server,
            tool=entry.name,
            projection=projection,
            started=started,
            arguments_sha256=args_hash,
        )

        try:
            error = best_match(entry.validator.iter_errors(arguments))
        except Unresolvable:  # e.g. "#/$defs/missing": the approved schema cannot be applied
            audit(
                decision_id=str(uuid.uuid4()),
                allowed=False,
                reasons=["invalid_tool_schema"],
                revision=None,
                status="rejected",
                error_category="invalid_tool_schema",
            )
            return error_response(
                msg_id,
                INTERNAL_ERROR,
                "The tool's approved inputSchema cannot be applied",
                {"category": "invalid_tool_schema"},
            )
        if error is not None:
            field = error.json_path
            audit(
                decision_id=str(uuid.uuid4()),
                allowed=False,
                reasons=["invalid_arguments"],
                revision=None,
                status="rejected",
                error_category="invalid_arguments",
            )
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
        try:
            decision = await self._current(projection, lambda: self._engine.decide(doc))
            if not decision.allow:
                raise PolicyDenied("denied by policy", reasons=list(decision.reasons))
        except GatewayError as exc:
            decision_id = str(uuid.uuid4())
            reasons = [exc.category]
            revision = None
            if isinstance(exc, PolicyDenied):
                decision_id = decision.decision_id or decision_id
                reasons, revision = exc.reasons, decision.revision
            audit(
                decision_id=decision_id,
                allowed=False,
                reasons=reasons,
                revision=revision,
                status="denied",
                error_category=exc.category,
            )
            message = "Denied by policy" if isinstance(exc, PolicyDenied) else "Policy decision unavailable"
            data = {"category": exc.category, "reasons": reasons, "decision_id": decision_id}
            return error_response(msg_id, POLICY_DENIED, message, data)

        decision_id = decision.decision_id or str(uuid.uuid4())
        upstream = self._upstreams.get(server.name, server.transport, server.url)
        forward = {k: v for k, v in params.items() if k != "_meta"}
        forward["name"] = entry.name
        try:
            reply = await upstream.request("tools/call", forward)
        except UpstreamError as exc:
            log.warning("upstream %s failed: %s", server.name, exc)
            audit(
                decision_id=decision_id,
                allowed=True,
                reasons=list(decision.reasons),
                revision=decision.revision,
                status="error",
                error_category=exc.category,
            )
            return error_response(
                msg_id,
                UPSTREAM_FAILED,
                "Upstream server failed",
                {"category": exc.category, "decision_id": decision_id},
            )
        result = reply.get("result")
        status = (
            "ok" if result is not None and not (isinstance(result, dict) and result.get("isError")) else "tool_error"
        )
        audit(
            decision_id=decision_id,
            allowed=True,
            reasons=list(decision.reasons),
            revision=decision.revision,
            status=status,
            result_sha256=_sha256(result if result is not None else reply.get("error")),
        )
        if result is None:
            return {"jsonrpc": "2.0", "id": msg_id, "error": reply.get("error")}
        return result_response(msg_id, result)
