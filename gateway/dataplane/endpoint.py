"""The client-facing MCP streamable-HTTP endpoint, both protocol eras on one URL.

* 2026-07-28 (modern, stateless): POST only; every request carries the
  ``_meta`` envelope and ``MCP-Protocol-Version``/``Mcp-Method``/``Mcp-Name``
  headers, validated with the SDK's ``classify_inbound_request`` ladder
  (400 ``-32020`` header mismatch, also for a routing header sent more than once;
  400 ``-32022`` unsupported version, ``data: {"supported": [...], "requested"}``;
  404 ``-32601`` unknown method); ``server/discover`` is implemented; cacheable
  results carry ``cacheScope: "private"`` (what a caller sees is filtered per
  caller) and at most the upstreams' ``ttlMs``; an upstream's JSON-RPC error relayed
  as is keeps the HTTP status its code maps to (``-32021`` is 400); ``Mcp-Param-*``
  headers of a ``tools/call`` are checked against the pinned schema's ``x-mcp-header``
  arguments (400 ``-32020``, SEP-2243). A request with the
  envelope and a version header the gateway does not serve is a modern one (as the
  SDK routes it). Source: MCP 2026-07-28 ``basic/transports/streamable-http``,
  ``basic/versioning``, ``server/discover``, ``server/utilities/caching``.
* 2025-03-26 .. 2025-11-25 (legacy): ``initialize`` opens a session bound to
  the caller; ``Mcp-Session-Id`` is required afterwards (400 missing, 404
  unknown/expired/other caller's); an ``MCP-Protocol-Version`` header naming no
  handshake-era version is 400 with ``-32022`` ``{"supported": <handshake versions>,
  "requested"}``; ``DELETE`` ends it; ``GET`` opens the session's stream of
  notifications, or with ``Last-Event-ID`` resumes a request's stream
  (:mod:`gateway.dataplane.resumable`). Source: MCP 2025-11-25 ``basic/transports``.

Governed methods: ``tools/list``, ``tools/call`` (:mod:`gateway.dataplane.governance`),
``resources/list``, ``resources/templates/list``, ``resources/read``,
``prompts/list``, ``prompts/get``, ``completion/complete`` and, handshake era only,
``logging/setLevel`` (:mod:`gateway.dataplane.features`), each only where the
endpoint advertises its capability; ``ping`` (handshake era) is decided and audited, then
answered by the gateway.
A request is answered with one ``application/json`` body unless something is relayed
before its response (progress, log messages, requests of the client): then with an SSE
stream (:mod:`gateway.dataplane.relay`; resumable in the handshake era). Every request is
authenticated first (401 + ``WWW-Authenticate`` with ``resource_metadata``).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import anyio
import orjson
from mcp.shared.inbound import (
    ERROR_CODE_HTTP_STATUS,
    InboundLadderRejection,
    classify_inbound_request,
    find_duplicated_routing_header,
    validate_mcp_param_headers,
)
from mcp.types import HEADER_MISMATCH, UNSUPPORTED_PROTOCOL_VERSION
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from gateway.dataplane.auth import CallerAuthenticator
from gateway.dataplane.feature_routing import (
    CAPABILITY_OF,
    SUBSCRIPTION_METHODS,
    UNSUPPORTED_METHODS,
    advertised_capabilities,
    offers_subscribe,
    serve_feature,
)
from gateway.dataplane.features import FeatureGovernor, cache_ttl_ms
from gateway.dataplane.governance import CallContext
from gateway.dataplane.held import HANDLE_PREFIX, HeldCalls
from gateway.dataplane.listening import Listener, Subscription
from gateway.dataplane.projection import ServerEntry
from gateway.dataplane.relay import Outbox, RelayResponse
from gateway.dataplane.resumable import CallStream, CallStreamResponse
from gateway.dataplane.session_events import SessionEvents
from gateway.dataplane.sessions import Session, SessionLimitReached, SessionUnavailable
from gateway.errors import AuthenticationFailed, GatewayError, ProjectionUnavailable, RequestRejected
from gateway.mcp.credential import UpstreamCredential
from gateway.mcp.messages import (
    HANDSHAKE_VERSIONS,
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    MODERN_VERSIONS,
    error_response,
    parse_message,
    result_response,
)
from gateway.observability.context import note_action
from gateway.observability.tracing import DISABLED, Tracing
from gateway.policy.input import Subject

__all__ = [
    "SERVER_INFO",
    "authenticate",
    "cancel_request",
    "request_key",
    "healthz",
    "mcp_endpoint",
    "protected_resource_metadata",
    "readyz",
    "session_context",
    "session_reply",
    "unauthorized",
]

log = logging.getLogger("gateway.mcp")

SERVER_INFO = {"name": "mcp-opa-gateway", "version": "0.1.0"}
_JSON = "application/json"
_GOVERNED = frozenset({"tools/call", "ping", *CAPABILITY_OF})
"""Methods whose params-limit rejection the governor audits (the others answer it directly)."""
_LISTS = frozenset({"resources/list", "resources/templates/list", "prompts/list"})
_STREAMABLE = frozenset({"tools/call", "resources/read", "prompts/get", "completion/complete"})
"""Requests during which an upstream may send progress, log messages or requests of its own:
answered by :class:`~gateway.dataplane.relay.RelayResponse`."""


def _json(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(payload), status_code=status, media_type=_JSON, headers=headers)


def _resource_path(server: str | None) -> str:
    return "/mcp" if server is None else f"/mcp/{server}"


def unauthorized(request: Request, server: str | None, exc: AuthenticationFailed) -> Response:
    """401 ``{"error": <category>}`` with ``WWW-Authenticate: Bearer ... resource_metadata``
    (RFC 6750 §3, RFC 9728 §5.1) pointing at the endpoint's protected resource metadata;
    429 ``{"error": "too_many_failed_attempts"}`` with ``Retry-After`` (seconds) for API-key
    attempts refused unchecked."""
    base = request.state.dp_config.data_plane.public_url
    metadata = f"{base}/.well-known/oauth-protected-resource{_resource_path(server)}"
    # RFC 6750 §3.1: no error code when the request had no credentials at all.
    if request.headers.get("authorization"):
        challenge = f'Bearer error="invalid_token", error_description="{exc.category}", resource_metadata="{metadata}"'
    else:
        challenge = f'Bearer resource_metadata="{metadata}"'
    retry_after = getattr(exc, "retry_after", None)
    if retry_after is not None:  # API-key attempts refused unchecked (gateway.dataplane.api_keys)
        return _json({"error": exc.category}, 429, {"retry-after": str(retry_after)})
    return _json({"error": exc.category}, 401, {"www-authenticate": challenge})


async def protected_resource_metadata(request: Request) -> Response:
    """RFC 9728 protected resource metadata for ``/mcp`` and ``/mcp/{server}``."""
    cfg = request.state.dp_config
    server = request.path_params.get("server")
    return _json(
        {
            "resource": f"{cfg.data_plane.public_url}{_resource_path(server)}",
            "authorization_servers": [cfg.jwt.issuer],
            "bearer_methods_supported": ["header"],
            "resource_name": "MCP OPA gateway",
        }
    )


async def healthz(request: Request) -> Response:
    """Liveness: the process serves HTTP (``200 {"status": "ok"}``)."""
    return _json({"status": "ok"})


async def readyz(request: Request) -> Response:
    """Readiness: a projection is active and OPA has activated its bundle.

    Returns 200 ``{"status": "ready", "projection_version", "revision"}`` or
    503 ``{"status": "not_ready", "reasons": [...]}`` (``no_projection``,
    ``no_policy`` — no policy version approved yet, ``opa_not_ready``,
    ``session_events_not_synced`` — the session events feed was never read, so sessions of
    other data planes cannot be resumed here yet). A load
    balancer should only route to ready data planes; an unready one still
    answers, but denies every call (fail closed).
    """
    reasons = []
    projection = request.state.dp_sync.current
    if projection is None:
        reasons.append("no_projection")
    elif projection.policy_version is None:
        reasons.append("no_policy")
    sidecar = request.state.dp_sidecar
    # Both: the probe catches a hung OPA; the sidecar's flag is what gates decisions.
    if not await request.state.dp_opa_health.bundles_ready() or (sidecar is not None and not sidecar.bundle_active()):
        reasons.append("opa_not_ready")
    if not request.state.dp_session_events.synced.is_set():
        reasons.append("session_events_not_synced")  # until then sealed sessions do not resume here
    if reasons:
        return _json({"status": "not_ready", "reasons": reasons}, 503)
    return _json({"status": "ready", "projection_version": projection.version, "revision": projection.revision})


async def mcp_endpoint(request: Request) -> Response:
    """Serve ``/mcp`` (aggregated) and ``/mcp/{server}`` for POST, GET and DELETE.

    ``Host`` and ``Origin`` are checked before this runs
    (:class:`gateway.dataplane.hostcheck.HostOriginGuard`). No exception escapes
    as an HTTP 500: an unexpected one becomes JSON-RPC ``-32603`` with
    ``data.category = "internal_error"`` (HTTP 200), after the governor has
    audited it when the request was governed.
    """
    try:
        return await _serve(request)
    except Exception as exc:  # boundary: the one place an unexpected failure is mapped
        log.error("request failed unexpectedly: %s", type(exc).__name__, exc_info=log.isEnabledFor(logging.DEBUG))
        return _json(error_response(None, INTERNAL_ERROR, "Gateway error", {"category": "internal_error"}))


async def _serve(request: Request) -> Response:
    server = request.path_params.get("server")
    try:
        subject = await authenticate(request, server)
    except AuthenticationFailed as exc:
        return unauthorized(request, server, exc)
    if server is not None:
        projection = request.state.dp_sync.current
        if projection is None or server not in projection.servers:
            return _json({"error": "unknown_server"}, 404)
    if request.method == "GET":
        return _get_stream(request, subject, server)
    if request.method == "DELETE":
        return await _delete_session(request, subject)
    try:
        body = await _read_body(request, request.state.dp_config.data_plane.max_body)
    except ClientDisconnect:
        # Nobody is left to answer; an ordinary event, not an error (no traceback).
        log.info("client disconnected before its request body was complete")
        return Response(status_code=400)
    if body is None:
        return _json(error_response(None, INVALID_REQUEST, "Request body too large"), 413)
    try:
        msg = parse_message(body)
    except RequestRejected as exc:
        return _json(error_response(None, exc.args[1], exc.args[0]), 400)
    note_action(msg.method)  # the request's action for metrics and the access line (bounded there)
    version_header = request.headers.get("mcp-protocol-version")
    enveloped = (
        msg.method != "initialize"
        and isinstance(msg.params.get("_meta"), dict)
        and "io.modelcontextprotocol/protocolVersion" in msg.params["_meta"]
    )
    # As the SDK's dual-era server: a handshake-era version header means a session request;
    # any other header (a modern or an unknown version) with the envelope goes to the modern
    # ladder, which answers an unknown one with -32020 or -32022.
    modern = version_header in MODERN_VERSIONS or (enveloped and version_header not in HANDSHAKE_VERSIONS)
    try:
        if modern:
            return await _modern(request, msg, subject, server)
        return await _legacy(request, msg, subject, server, version_header)
    except GatewayError as exc:
        log.error("request failed: %s (%s)", exc.category, exc)
        return _json(error_response(msg.id, INTERNAL_ERROR, "Gateway error", {"category": exc.category}), 200)
    except Exception as exc:
        log.error("request failed unexpectedly: %s", type(exc).__name__, exc_info=log.isEnabledFor(logging.DEBUG))
        return _json(error_response(msg.id, INTERNAL_ERROR, "Gateway error", {"category": "internal_error"}), 200)


def _rejected_params(msg: Any, status: int) -> Response:
    """``-32602`` for an ungoverned method whose params broke the parser's depth/size limits."""
    rejection = msg.rejection
    return _json(error_response(msg.id, INVALID_PARAMS, "Invalid params", {"category": rejection.category}), status)


async def _read_body(request: Request, limit: int) -> bytes | None:
    """The body, or None once it exceeds ``limit`` bytes (never buffers more than that).

    Raises:
        ClientDisconnect: The client went away before the body was complete.
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


async def authenticate(request: Request, server: str | None) -> Subject:
    """The verified caller of ``request`` (bearer JWT, audience the gateway's or the endpoint's
    URL; or a gateway API key, :mod:`gateway.dataplane.api_keys`).

    Raises:
        AuthenticationFailed: No, or an invalid, bearer credential (``TooManyFailedAttempts``:
            429, see :func:`unauthorized`).
    """
    extra = [f"{request.state.dp_config.data_plane.public_url}{_resource_path(server)}"]
    verifier: CallerAuthenticator = request.state.dp_verifier
    tracing: Tracing = request.scope["state"].get("dp_tracing", DISABLED)
    with tracing.span("gateway.auth"):
        return await verifier.authenticate(request, audiences=extra)


def _current(request: Request) -> Any:
    projection = request.state.dp_sync.current
    if projection is None:
        raise ProjectionUnavailable("no projection activated yet")
    return projection


async def _modern(request: Request, msg: Any, subject: Subject, server: str | None) -> Response:
    if msg.kind == "notification":
        return Response(status_code=202)
    if msg.kind == "response":
        return _json(error_response(msg.id, INVALID_REQUEST, "Clients must not send responses"), 400)
    raw_headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.scope["headers"]]
    duplicated = find_duplicated_routing_header(raw_headers)
    if duplicated is not None:
        # Only the raw header lines show it: a first-copy reader (an intermediary) and the
        # last-copy mapping the ladder compares would disagree. The SDK's server refuses it too.
        message = f"{duplicated} header appears more than once"
        return _json(error_response(msg.id, HEADER_MISMATCH, message), ERROR_CODE_HTTP_STATUS[HEADER_MISMATCH])
    headers = {k.lower(): v for k, v in raw_headers}
    route = classify_inbound_request(msg.raw, headers=headers, supported_modern_versions=MODERN_VERSIONS)
    if isinstance(route, InboundLadderRejection):
        status = ERROR_CODE_HTTP_STATUS.get(route.code, 400)
        return _json(error_response(msg.id, route.code, route.message, route.data), status)
    if msg.rejection is not None and msg.method not in _GOVERNED:
        return _rejected_params(msg, ERROR_CODE_HTTP_STATUS.get(INVALID_PARAMS, 400))
    meta = {"io.modelcontextprotocol/serverInfo": SERVER_INFO}
    if msg.method == "server/discover":
        result = {
            "resultType": "complete",
            "supportedVersions": list(MODERN_VERSIONS),
            "capabilities": advertised_capabilities(request.state.dp_sync.current, server, handshake=False),
            "serverInfo": SERVER_INFO,
            "ttlMs": 0,
            "cacheScope": "private",
            "_meta": meta,
        }
        return _json(result_response(msg.id, result))
    declared = msg.params.get("_meta", {}).get("io.modelcontextprotocol/clientCapabilities")
    capabilities = declared if isinstance(declared, dict) else {}
    if msg.method == "subscriptions/listen":
        ctx = CallContext(subject, None, route.protocol_version, server, client_capabilities=capabilities)
        return await _listen(request, msg, ctx)
    if msg.method in _STREAMABLE:
        # Progress and log messages may ride this request's stream; requests never do (MRTR:
        # a question of a handshake-era upstream is held, gateway.dataplane.held).
        ctx = CallContext(subject, None, route.protocol_version, server, client_capabilities=capabilities)
        return await _streamable_modern(request, msg, ctx, meta)
    ctx = CallContext(subject, None, route.protocol_version, server, client_capabilities=capabilities)
    if msg.method == "tools/list":
        tools = await request.state.dp_governor.list_tools(_current(request), ctx)
        result = {"tools": tools, "resultType": "complete", "ttlMs": 0, "cacheScope": "private", "_meta": meta}
        return _json(result_response(msg.id, result))
    if msg.method in CAPABILITY_OF:
        feature = await serve_feature(request.state.dp_governor, _current(request), msg, ctx, handshake=False)
        if feature is not None:
            return _modern_feature(msg.method, feature, meta)
    return _json(error_response(msg.id, METHOD_NOT_FOUND, f"Method not found: {msg.method}"), 404)


async def _streamable_modern(request: Request, msg: Any, ctx: CallContext, meta: dict[str, Any]) -> Response:
    """A 2026-07-28 request whose upstream may send progress or log messages before its
    response, and may ask the client something (held: :mod:`gateway.dataplane.held`).

    A retry whose ``requestState`` is a gateway handle continues its held call (400
    ``-32602`` ``unknown_request_state`` when there is none of this caller's, or it expired).
    """
    outbox = Outbox(None)
    held_calls: HeldCalls = request.state.dp_held
    owner = (ctx.subject.issuer, ctx.subject.sub)
    state = msg.params.get("requestState")
    if isinstance(state, str) and state.startswith(HANDLE_PREFIX):
        resumed = held_calls.get(state, owner)
        if resumed is None:
            data = {"category": "unknown_request_state"}
            return _json(error_response(msg.id, INVALID_PARAMS, "Unknown or expired requestState", data), 400)
        resumed.answer(msg.params.get("inputResponses"))
        resumed.attach(outbox)
        return RelayResponse(outbox, lambda: resumed.next(msg.id), status=_modern_status, request_id=msg.id)
    server = ctx.server
    if msg.method == "tools/call":
        mismatch = _param_header_mismatch(request, server, msg.params)
        if mismatch is not None:
            return _json(error_response(msg.id, mismatch.code, mismatch.message), ERROR_CODE_HTTP_STATUS[mismatch.code])
    elif CAPABILITY_OF[msg.method] not in advertised_capabilities(
        request.state.dp_sync.current, server, handshake=False
    ):
        return _json(error_response(msg.id, METHOD_NOT_FOUND, f"Method not found: {msg.method}"), 404)
    governor: FeatureGovernor = request.state.dp_governor
    projection = _current(request)

    async def work() -> dict[str, Any]:
        if msg.method == "tools/call":
            reply = await governor.call_tool(projection, ctx, msg.id, msg.params, rejection=msg.rejection)
            result = reply.get("result")
            if isinstance(result, dict):
                result.setdefault("resultType", "complete")
            return reply
        feature = await serve_feature(governor, projection, msg, ctx, handshake=False)
        assert feature is not None  # every _STREAMABLE method but tools/call is a feature
        return _modern_feature_reply(msg.method, feature, meta)

    held = held_calls.new(owner)
    ctx = dataclasses.replace(ctx, client=held, can_ask=True)
    held.attach(outbox)
    held.start(work, request.state.dp_hub.spawn)
    return RelayResponse(outbox, lambda: held.next(msg.id), status=_modern_status, request_id=msg.id)


def _param_header_mismatch(
    request: Request, server: str | None, params: dict[str, Any]
) -> InboundLadderRejection | None:
    """The ``-32020`` rejection when the ``Mcp-Param-*`` headers disagree with a ``tools/call`` body, else None.

    Checked against the pinned ``inputSchema`` of the tool the body names (its
    ``x-mcp-header`` properties), with the SDK's ``validate_mcp_param_headers``: each
    annotated argument and its header are present together and equal, a header is not
    sent twice. An unknown tool, or no projection yet, is left to the governor. Source:
    MCP 2026-07-28 ``basic/transports/streamable-http`` (SEP-2243).
    """
    projection = request.state.dp_sync.current
    name, arguments = params.get("name"), params.get("arguments")
    if projection is None or not isinstance(name, str):
        return None
    entry = projection.resolve(server, name)
    if entry is None:
        return None
    return validate_mcp_param_headers(
        entry.wire.get("inputSchema"), arguments if isinstance(arguments, dict) else {}, request.headers
    )


def _modern_feature(method: str, reply: dict[str, Any], meta: dict[str, Any]) -> Response:
    """:func:`_modern_feature_reply` as a response with :func:`_modern_status`."""
    reply = _modern_feature_reply(method, reply, meta)
    return _json(reply, _modern_status(reply))


def _modern_feature_reply(method: str, reply: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    """A 2026-07-28 answer: ``resultType`` on results, and the caching hints.

    ``cacheScope`` is always ``"private"`` (what a caller may see is decided per caller,
    so no cache may share it across authorization contexts). ``ttlMs`` is the most the
    upstreams promised: ``resources/list`` and ``resources/templates/list`` carry the
    smallest ``ttlMs`` of the upstreams asked (0 unless every one gave one and none
    failed); ``resources/read`` keeps the upstream's (0 when it gave none); ``prompts/list``
    (the pinned set) is 0. Source: MCP 2026-07-28 ``server/utilities/caching``.
    """
    result = reply.get("result")
    if isinstance(result, dict):
        result.setdefault("resultType", "complete")
        if method in _LISTS or method == "resources/read":
            result["ttlMs"] = cache_ttl_ms(result.get("ttlMs")) or 0
            result["cacheScope"] = "private"
        if method in _LISTS:
            result["_meta"] = meta
    return reply


def _modern_status(reply: dict[str, Any]) -> int:
    """The HTTP status of a 2026-07-28 answer from a governed method.

    A JSON-RPC error gets the status the spec maps its code to (the SDK's
    ``ERROR_CODE_HTTP_STATUS``: ``-32700``, ``-32600``, ``-32602``, ``-32020``, ``-32021``,
    ``-32022`` are 400, ``-32601`` is 404, any other code 200): an upstream's error relayed
    as is gets the status a conforming upstream answered it with. The gateway's own refusals
    (``-32602``, ``-32003``, ``-32004``, ``-32603``) always carry ``data.category`` and stay
    200, as documented (an upstream error carrying ``data.category`` is answered 200 too).
    Results are 200.
    """
    error = reply.get("error")
    if not isinstance(error, dict):
        return 200
    code, data = error.get("code"), error.get("data")
    if not isinstance(code, int) or isinstance(code, bool) or (isinstance(data, dict) and "category" in data):
        return 200
    return ERROR_CODE_HTTP_STATUS.get(code, 200)


async def _legacy(
    request: Request, msg: Any, subject: Subject, server: str | None, version_header: str | None
) -> Response:
    owner = (subject.issuer, subject.sub)
    sessions = request.state.dp_sessions
    if msg.kind == "request" and msg.method == "initialize":
        if msg.rejection is not None:
            return _rejected_params(msg, 200)
        requested = msg.params.get("protocolVersion")
        version = requested if requested in HANDSHAKE_VERSIONS else HANDSHAKE_VERSIONS[0]
        declared = msg.params.get("capabilities")
        try:
            session = sessions.create(owner, version, declared if isinstance(declared, dict) else {})
        except SessionLimitReached as exc:
            return _session_unavailable(msg.id, exc)
        capabilities = advertised_capabilities(request.state.dp_sync.current, server, handshake=True)
        result = {"protocolVersion": version, "capabilities": capabilities, "serverInfo": SERVER_INFO}
        return _json(result_response(msg.id, result), headers={"mcp-session-id": session.id})
    if version_header is not None and version_header not in HANDSHAKE_VERSIONS:
        # 2025-11-25 transports: "400 Bad Request"; the body is 2026-07-28's -32022, naming the
        # versions a session request may carry.
        data = {"supported": list(HANDSHAKE_VERSIONS), "requested": version_header}
        message = f"Unsupported protocol version: {version_header}"
        return _json(error_response(msg.id, UNSUPPORTED_PROTOCOL_VERSION, message, data), 400)
    session_id = request.headers.get("mcp-session-id")
    if not session_id:
        return _json(error_response(msg.id, INVALID_REQUEST, "Missing Mcp-Session-Id header"), 400)
    try:
        session = sessions.get(session_id, owner)
    except SessionUnavailable as exc:
        return _session_unavailable(msg.id, exc)
    if session is None:
        return _json(error_response(msg.id, INVALID_REQUEST, "Session not found"), 404)
    if msg.kind == "response":  # the client's answer to a request relayed to it
        if not session.deliver(msg.raw):
            log.info("a client response matched no relayed request (late or unknown id); ignored")
        return Response(status_code=202)
    if msg.kind != "request":
        if msg.method == "notifications/cancelled":
            cancel_request(session, msg.params)
        return Response(status_code=202)
    if msg.rejection is not None and msg.method not in _GOVERNED:
        return _rejected_params(msg, 200)
    if msg.method in _STREAMABLE and "text/event-stream" in request.headers.get("accept", ""):
        outbox = Outbox(session)
        return _streamable_legacy(request, msg, session_context(subject, session, server, outbox), outbox, session)
    ctx = CallContext(subject, session.ref, session.protocol_version, server, client_capabilities=session.capabilities)
    return _json(await session_reply(request, msg, ctx, session))


def _session_unavailable(msg_id: Any, exc: SessionUnavailable) -> Response:
    log.warning("session refused: %s", type(exc).__name__)
    return _json(error_response(msg_id, INTERNAL_ERROR, exc.message), 503, headers={"retry-after": "1"})


async def _delete_session(request: Request, subject: Subject) -> Response:
    """``DELETE``: end the session here and, when sealed, on every data plane (an ``ended``
    session event, posted before answering: :mod:`gateway.dataplane.session_events`)."""
    session_id = request.headers.get("mcp-session-id")
    try:
        session = request.state.dp_sessions.delete(session_id, (subject.issuer, subject.sub)) if session_id else None
    except SessionUnavailable as exc:
        return _session_unavailable(None, exc)
    if session is None:
        return _json(error_response(None, INVALID_REQUEST, "Unknown session"), 404)
    if session.sealed:
        events: SessionEvents = request.state.dp_session_events
        if not await events.publish(session.ref, "ended", None, session.expires_at):
            log.warning("session ended here; the other data planes learn it when the control plane is back")
    return Response(status_code=204)


def session_context(subject: Subject, session: Session, server: str | None, outbox: Outbox) -> CallContext:
    """The context of a handshake-era session's request whose client reads ``outbox``: it can
    be asked (requests on its stream), with the session's capabilities and log level."""
    return CallContext(
        subject,
        session.ref,
        session.protocol_version,
        server,
        outbox,
        session.capabilities,
        can_ask=True,
        log_level=session.log_level,
    )


async def session_reply(request: Request, msg: Any, ctx: CallContext, session: Session) -> dict[str, Any]:
    """The JSON-RPC response to one request of a handshake-era session (after ``initialize``).

    Shared by the streamable-HTTP endpoint and the 2024-11-05 HTTP+SSE transport
    (:mod:`gateway.dataplane.sse_transport`): ``ping``, the governed methods, the
    subscriptions, and ``-32601`` for anything else.
    """
    if msg.rejection is not None and msg.method not in _GOVERNED:
        return error_response(msg.id, INVALID_PARAMS, "Invalid params", {"category": msg.rejection.category})
    governor: FeatureGovernor = request.state.dp_governor
    if msg.method == "ping":
        return await governor.ping(_current(request), ctx, msg.id, msg.params, rejection=msg.rejection)
    if msg.method == "tools/list":
        return result_response(msg.id, {"tools": await governor.list_tools(_current(request), ctx)})
    if msg.method == "tools/call":
        return await governor.call_tool(_current(request), ctx, msg.id, msg.params, rejection=msg.rejection)
    if msg.method in SUBSCRIPTION_METHODS:
        return await _subscription(request, msg, ctx, session)
    if msg.method in CAPABILITY_OF or msg.method in UNSUPPORTED_METHODS:
        feature = await serve_feature(governor, _current(request), msg, ctx, handshake=True)
        if feature is not None:
            if msg.method == "logging/setLevel" and "result" in feature:
                session.log_level = str(msg.params.get("level"))
                if session.sealed:
                    events: SessionEvents = request.state.dp_session_events
                    await events.publish(session.ref, "log_level", session.log_level, session.expires_at)
            return feature
    return error_response(msg.id, METHOD_NOT_FOUND, f"Method not found: {msg.method}")


def request_key(request_id: Any) -> str:
    """A client request id as a dict key (canonical JSON: ``1`` and ``"1"`` differ)."""
    return orjson.dumps(request_id).decode()


def cancel_request(session: Session, params: dict[str, Any]) -> None:
    """``notifications/cancelled``: cancel the session's request ``requestId`` if it still runs.

    The upstream is then told (:mod:`gateway.mcp.upstream`), and the request's audit event
    says ``cancelled``. Source: MCP 2025-11-25 ``basic/utilities/cancellation``.
    """
    scope = session.running.get(request_key(params.get("requestId")))
    if scope is not None:
        log.info("client cancelled a request in progress")
        scope.cancel()


def _streamable_legacy(request: Request, msg: Any, ctx: CallContext, outbox: Outbox, session: Session) -> Response:
    """A handshake-era request answered as JSON, or as a resumable SSE stream once something
    is relayed or the poll interval passed (:mod:`gateway.dataplane.resumable`)."""
    governor: FeatureGovernor = request.state.dp_governor
    projection = _current(request)
    key = request_key(msg.id)
    dp = request.state.dp_config.data_plane

    async def work() -> dict[str, Any]:
        if msg.method == "tools/call":
            return await governor.call_tool(projection, ctx, msg.id, msg.params, rejection=msg.rejection)
        feature = await serve_feature(governor, projection, msg, ctx, handshake=True)
        assert feature is not None  # every _STREAMABLE method but tools/call is a feature
        return feature

    def started(scope: anyio.CancelScope) -> None:
        session.running[key] = scope

    def ended() -> None:
        if session.running.get(key) is stream.scope:
            del session.running[key]

    stream = CallStream(
        session,
        outbox,
        request.state.dp_hub.spawn,
        request.state.dp_reaper,
        poll=dp.sse_poll_interval,
        retry=dp.sse_retry,
    )
    stream.start(work, msg.id, started, ended)
    return CallStreamResponse(stream)


async def _forever() -> dict[str, Any]:
    """The work of a listening stream: none; it ends when the client leaves."""
    await anyio.sleep_forever()
    raise AssertionError("unreachable")  # pragma: no cover


MAX_SUBSCRIPTIONS = 100
"""Most resource subscriptions of one handshake-era session, or one ``subscriptions/listen``."""


def _get_stream(request: Request, subject: Subject, server: str | None) -> Response:
    """``GET``: a handshake-era session's stream of notifications outside any call.

    Needs ``Mcp-Session-Id`` (else 405: a 2026-07-28 client has no such stream) and
    ``Accept: text/event-stream`` (else 406); one at a time per session (409). Carries the
    session's list changes and resource updates (:mod:`gateway.dataplane.listening`); this
    stream has no event ids (notifications sent while it is down are not replayed). With
    ``Last-Event-ID`` it resumes a request's stream instead (:func:`_resume`). Source: MCP
    2025-11-25 ``basic/transports`` "Listening for Messages from the Server", "Resumability
    and Redelivery".
    """
    session_id = request.headers.get("mcp-session-id")
    if not session_id:
        return Response(status_code=405, headers={"allow": "POST, DELETE"})
    if "text/event-stream" not in request.headers.get("accept", ""):
        return _json(error_response(None, INVALID_REQUEST, "GET needs Accept: text/event-stream"), 406)
    try:
        session = request.state.dp_sessions.get(session_id, (subject.issuer, subject.sub))
    except SessionUnavailable as exc:
        return _session_unavailable(None, exc)
    if session is None:
        return _json(error_response(None, INVALID_REQUEST, "Session not found"), 404)
    last_event_id = request.headers.get("last-event-id")
    if last_event_id is not None:
        return _resume(session, last_event_id)
    if session.stream_open:
        return _json(error_response(None, INVALID_REQUEST, "This session already has a GET stream"), 409)
    listener = request.state.dp_hub.session_listener(session, server)
    session.stream_open = True

    def ended() -> None:
        session.stream_open = False

    return RelayResponse(listener.outbox, _forever, status=lambda _: 200, request_id=None, on_end=ended, stream=True)


def _resume(session: Session, last_event_id: str) -> Response:
    """``GET`` with ``Last-Event-ID``: resume the request stream that event belongs to.

    The events after it are replayed, then the stream goes on live
    (:class:`~gateway.dataplane.resumable.CallStreamResponse`). An id of no stream the
    session still has (delivered, expired, or kept by another data plane) is 400 ``-32600``
    with ``data.category`` ``unknown_event_id``: the messages after it are lost.
    """
    number, _, seq = last_event_id.partition("-")
    stream = session.streams.get(number)
    if stream is None or not (seq.isascii() and seq.isdigit()) or len(seq) > 12:
        data = {"category": "unknown_event_id"}
        return _json(error_response(None, INVALID_REQUEST, "Unknown or expired Last-Event-ID", data), 400)
    return CallStreamResponse(stream, resume_after=int(seq))


async def _subscription(request: Request, msg: Any, ctx: CallContext, session: Session) -> dict[str, Any]:
    """``resources/subscribe``/``resources/unsubscribe`` of a handshake-era session."""
    projection = _current(request)
    if not offers_subscribe(projection, ctx.server):
        return error_response(msg.id, METHOD_NOT_FOUND, f"Method not found: {msg.method}")
    hub = request.state.dp_hub
    if msg.method == "resources/subscribe" and (
        len(session.subscriptions) >= MAX_SUBSCRIPTIONS or not hub.can_subscribe(ctx.caller)
    ):
        message = f"Too many subscriptions (at most {MAX_SUBSCRIPTIONS} per session, and per subject and data plane)"
        return error_response(msg.id, INVALID_PARAMS, message, {"category": "too_many_subscriptions"})
    listener = hub.session_listener(session, ctx.server)

    def apply(entry: ServerEntry, original: str, credential: UpstreamCredential | None) -> None:
        key = (entry.name, original)
        if msg.method == "resources/subscribe":
            if key not in session.subscriptions:
                session.subscriptions[key] = hub.subscribe(
                    listener, ctx.caller, projection, entry.name, original, credential
                )
        elif (subscription := session.subscriptions.pop(key, None)) is not None:
            hub.unsubscribe(subscription)

    governor: FeatureGovernor = request.state.dp_governor
    reply = await governor.subscription(
        projection, ctx, msg.id, msg.params, method=msg.method, apply=apply, rejection=msg.rejection
    )
    if msg.method == "resources/subscribe" and "result" in reply:
        await hub.settled(list(session.subscriptions.values()))
    return reply


_LIST_FLAGS = {"toolsListChanged": "tools", "promptsListChanged": "prompts", "resourcesListChanged": "resources"}


async def _listen(request: Request, msg: Any, ctx: CallContext) -> Response:
    """``subscriptions/listen`` (2026-07-28): a stream of the notifications the filter asks for.

    The filter's list flags are honored where the endpoint offers that list; each URI of
    ``resourceSubscriptions`` (at most :data:`MAX_SUBSCRIPTIONS`) is decided and audited as
    ``resources/subscribe`` and honored when allowed. The first message is
    ``notifications/subscriptions/acknowledged`` with the honored filter; every message
    carries ``_meta["io.modelcontextprotocol/subscriptionId"]`` = the request id. The
    stream lasts until the client closes it. Source: MCP 2026-07-28
    ``basic/patterns/subscriptions``.
    """
    wanted = msg.params.get("notifications")
    uris = wanted.get("resourceSubscriptions", []) if isinstance(wanted, dict) else None
    if not isinstance(wanted, dict) or not isinstance(uris, list) or not all(isinstance(u, str) for u in uris):
        message = "subscriptions/listen needs notifications: a SubscriptionFilter"
        return _json(error_response(msg.id, INVALID_PARAMS, message), 400)
    if len(uris) > MAX_SUBSCRIPTIONS:
        message = f"At most {MAX_SUBSCRIPTIONS} resourceSubscriptions"
        return _json(error_response(msg.id, INVALID_PARAMS, message, {"category": "too_many_subscriptions"}), 400)
    projection = _current(request)
    offered = advertised_capabilities(projection, ctx.server, handshake=False)
    honored: dict[str, Any] = {
        flag: True for flag, cap in _LIST_FLAGS.items() if wanted.get(flag) is True and cap in offered
    }
    outbox = Outbox(None)
    listener = Listener(ctx.server, dict(honored), outbox, subscription_id=msg.id)
    hub = request.state.dp_hub
    subscriptions: list[Subscription] = []
    allowed: list[str] = []
    governor: FeatureGovernor = request.state.dp_governor
    for uri in uris if offers_subscribe(projection, ctx.server) else []:
        if not hub.can_subscribe(ctx.caller):
            break  # not honored: the acknowledgement says which were

        def apply(entry: ServerEntry, original: str, credential: UpstreamCredential | None, uri: str = uri) -> None:
            subscriptions.append(hub.subscribe(listener, ctx.caller, projection, entry.name, original, credential))
            allowed.append(uri)

        await governor.subscription(projection, ctx, None, {"uri": uri}, method="resources/subscribe", apply=apply)
    if allowed:
        honored["resourceSubscriptions"] = allowed
        await hub.settled(subscriptions)
    ack = {"jsonrpc": "2.0", "method": "notifications/subscriptions/acknowledged", "params": {"notifications": honored}}
    await listener.deliver(ack)
    hub.add(listener)

    def ended() -> None:
        hub.remove(listener)
        for subscription in subscriptions:
            hub.unsubscribe(subscription)

    return RelayResponse(outbox, _forever, status=_modern_status, request_id=msg.id, on_end=ended, stream=True)
