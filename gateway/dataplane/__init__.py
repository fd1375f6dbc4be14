"""The data plane: the governed MCP hot path (PEP) in front of upstream servers."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import anyio.to_thread
import httpx
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Route

from gateway.apiadapter.upstream import ApiPool
from gateway.config import Config, session_key_bytes
from gateway.dataplane.audit import AuditShipper
from gateway.dataplane.auth import CallerAuthenticator, JwtVerifier
from gateway.dataplane.credentials import CredentialBroker
from gateway.dataplane.drift import DriftWatch
from gateway.dataplane.endpoint import healthz, mcp_endpoint, protected_resource_metadata, readyz
from gateway.dataplane.features import FeatureGovernor
from gateway.dataplane.held import HeldCalls
from gateway.dataplane.hostcheck import HostOriginGuard
from gateway.dataplane.listening import Hub, ServerWatch
from gateway.dataplane.projection import ProjectionSync
from gateway.dataplane.resumable import Reaper
from gateway.dataplane.session_events import SessionEvents
from gateway.dataplane.session_seal import SessionSeal
from gateway.dataplane.sessions import SessionStore
from gateway.dataplane.sse_transport import sse_connect, sse_message
from gateway.httpclient import create_http_client
from gateway.mcp.messages import HANDSHAKE_VERSIONS, MODERN_VERSIONS
from gateway.mcp.upstream import UpstreamPool
from gateway.observability.asgi import MetricsEndpoint, RequestObserver
from gateway.observability.metrics import DataPlaneMetrics
from gateway.observability.tracing import Tracing, traced_client
from gateway.policy.embedded import EmbeddedHealth, EmbeddedOpa, EmbeddedPolicyEngine
from gateway.policy.health import OpaHealth
from gateway.policy.opa import OpaPolicyEngine, PolicyEngine
from gateway.policy.sidecar import OpaSidecar

__all__ = ["create_dataplane_app", "dataplane_resources"]


async def _expire_sessions(sessions: SessionStore) -> None:
    while True:
        await anyio.sleep(60)
        sessions.expire()


def create_dataplane_app(config: Config) -> Starlette:
    """The data-plane ASGI app (no lifespan: the root app's lifespan feeds its state).

    Routes: ``POST|GET|DELETE /mcp``, ``/mcp/{server}``, the 2024-11-05 HTTP+SSE pair
    ``GET /sse[/{server}]`` + ``POST /messages[/{server}]`` (:mod:`gateway.dataplane.sse_transport`), RFC 9728
    ``/.well-known/oauth-protected-resource[/mcp[/{server}]]``, ``/healthz``
    (liveness) and ``/readyz`` (projection active and OPA bundle activated).
    Every route is behind :class:`~gateway.dataplane.hostcheck.HostOriginGuard`
    (``data_plane.allowed_hosts``/``allowed_origins``: 421/403). In front of it,
    :class:`~gateway.observability.asgi.RequestObserver` counts, times, traces and (JSON log
    mode) logs every request and serves ``GET /metrics`` (``GATEWAY_METRICS_TOKEN``, else the
    ``Host`` check only: :class:`~gateway.observability.asgi.MetricsEndpoint`).
    """
    methods = ["POST", "GET", "DELETE"]
    prm = "/.well-known/oauth-protected-resource"
    dp = config.data_plane
    guard = Middleware(HostOriginGuard, allowed_hosts=dp.allowed_hosts, allowed_origins=dp.allowed_origins)
    observer = Middleware(
        RequestObserver,
        plane="data",
        metrics_key="dp_metrics",
        metrics_endpoint=MetricsEndpoint("dp_metrics", token=config.metrics_token, allowed_hosts=dp.allowed_hosts),
        tracing_key="dp_tracing",
        access=config.log_format == "json",
        dataplane_id=dp.id,
    )
    return Starlette(
        middleware=[observer, guard],
        routes=[
            Route("/mcp", mcp_endpoint, methods=methods),
            Route("/mcp/{server}", mcp_endpoint, methods=methods),
            Route(prm, protected_resource_metadata, methods=["GET"]),
            Route(f"{prm}/mcp", protected_resource_metadata, methods=["GET"]),
            Route(prm + "/mcp/{server}", protected_resource_metadata, methods=["GET"]),
            Route("/sse", sse_connect, methods=["GET"]),
            Route("/sse/{server}", sse_connect, methods=["GET"]),
            Route("/messages", sse_message, methods=["POST"]),
            Route("/messages/{server}", sse_message, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
        ],
    )


@contextlib.asynccontextmanager
async def dataplane_resources(config: Config) -> AsyncIterator[dict[str, object]]:
    """Open the data plane's long-lived resources and background tasks.

    Yields the lifespan state keys the handlers read (``dp_*``): one pooled
    hot-path client shared by OPA and the upstreams, one httpx client for the
    control plane (projection long-poll, audit shipping, JWKS),
    the JWT verifier, projection sync, audit shipper, session store and the
    decision engine: the supervised OPA sidecar (when ``opa.manage``) or, with
    ``opa.engine = "embedded"``, the in-process OPA (:mod:`gateway.policy.embedded`).
    Also ``dp_metrics`` (:class:`~gateway.observability.metrics.DataPlaneMetrics`) and
    ``dp_tracing`` (:class:`~gateway.observability.tracing.Tracing`: with an OTLP endpoint,
    both hot-path clients add ``traceparent`` to what they send inside a span).
    """
    limits = httpx.Limits(max_connections=20, max_keepalive_connections=10, keepalive_expiry=60)
    tracing = Tracing.configure(config.otlp_endpoint, attributes={"service.instance.id": config.data_plane.id})
    hot = traced_client(create_http_client(config.data_plane.http_client), tracing)
    # Long-lived upstream streams (listens, GET streams, legacy SSE) on their own connections,
    # so no number of them can starve calls and OPA of the hot pool's.
    streams = traced_client(create_http_client(config.data_plane.http_client, max_connections=2000), tracing)
    async with (
        httpx.AsyncClient(limits=limits) as cp_http,
        anyio.create_task_group() as tg,
    ):
        dp = config.data_plane
        upstreams = UpstreamPool(
            hot,
            timeout=dp.upstream_timeout,
            max_duration=dp.upstream_max_duration,
            max_caller_sessions=dp.upstream_sessions,
            caller_idle=dp.session_idle_timeout,
            streams=streams,
        )
        broker = CredentialBroker(config, cp_http)
        # API sources (gateway.apiadapter): one httpx client per source, behind the address guard.
        apis = ApiPool(timeout=dp.upstream_timeout)
        sync = ProjectionSync(config, cp_http, upstreams, broker, apis)
        drift = DriftWatch(
            lambda: sync.current,
            upstreams,
            interval=config.data_plane.drift_interval,
            timeout=config.data_plane.upstream_timeout,
            broker=broker,
        )
        audit = AuditShipper(config, cp_http)
        metrics = DataPlaneMetrics(
            projection=lambda: sync.current,
            protocol_versions=(*MODERN_VERSIONS, *HANDSHAKE_VERSIONS),
            engine=config.opa.engine,
        )
        sidecar: OpaSidecar | EmbeddedOpa | None
        engine: PolicyEngine
        opa_health: OpaHealth | EmbeddedHealth
        if config.opa.engine == "embedded":
            sidecar = EmbeddedOpa(config, on_start=sync.opa_started)
            engine, opa_health = EmbeddedPolicyEngine(sidecar), EmbeddedHealth(sidecar)
        else:
            sidecar = OpaSidecar(config, on_start=sync.opa_started) if config.opa.manage else None
            if config.opa.instance_id:  # an OPA someone else runs (a Kubernetes sidecar container)
                sync.opa_started(config.opa.instance_id)
            opa_health = OpaHealth(config.opa.url)
            engine = OpaPolicyEngine(
                hot, config.opa.url, timeout=config.opa.timeout, ready=sidecar.bundle_active if sidecar else None
            )
        await tg.start(upstreams.run)  # hosts legacy-SSE stream readers and stdio supervisors
        hub = Hub(upstreams, tg)
        watch = ServerWatch(lambda: sync.current, upstreams, hub, on_tools_changed=drift.request_check, broker=broker)
        seal = SessionSeal(
            session_key_bytes(dp.session_key),
            (config.tenant, config.environment),
            max_age=dp.session_max_age,
            versions=HANDSHAKE_VERSIONS,
        )
        session_events = SessionEvents(
            config,
            cp_http,
            interval=dp.session_events_interval,
            spool=Path(config.audit.spool_dir) / f"{dp.id}.session-events.json",
        )
        sessions = SessionStore(
            idle_timeout=dp.session_idle_timeout,
            max_sessions=dp.max_sessions,
            on_close=hub.close_session,
            seal=seal,
            ended=session_events.ended,
            level=session_events.level,
            synced=session_events.synced.is_set,
        )
        metrics.watch(
            sessions=lambda: len(sessions),
            audit=audit,
            spool_files=audit.spool_files,
            opa_ready=sidecar.bundle_active if sidecar is not None else None,
        )
        if sidecar is not None:
            tg.start_soon(sidecar.run)
        tg.start_soon(sync.run)
        tg.start_soon(drift.run)  # re-lists each server's tools every drift_interval (off the hot path)
        tg.start_soon(watch.run)  # each server's list changes, to listening clients and the drift check
        tg.start_soon(_expire_sessions, sessions)
        tg.start_soon(
            session_events.run, sessions.apply_event
        )  # DELETEs and log levels of sealed sessions, from every data plane
        reaper = Reaper(dp.sse_resume_window)
        tg.start_soon(reaper.run)  # forgets the resumable streams nobody reads (and cancels their requests)
        tg.start_soon(audit.run)
        try:
            yield {
                "dp_config": config,
                "dp_verifier": CallerAuthenticator(
                    config,
                    JwtVerifier(config.jwt, cp_http, on_fetch=metrics.jwks_fetched),
                    lambda: sync.current.api_keys if sync.current else None,
                ),
                "dp_sync": sync,
                "dp_audit": audit,
                "dp_governor": FeatureGovernor(
                    config,
                    engine,
                    upstreams,
                    audit,
                    drift=drift,
                    broker=broker,
                    metrics=metrics,
                    tracing=tracing,
                    apis=apis,
                ),
                "dp_sessions": sessions,
                "dp_session_events": session_events,
                "dp_hub": hub,
                "dp_reaper": reaper,
                "dp_held": HeldCalls(),
                "dp_sidecar": sidecar,
                "dp_opa_health": opa_health,
                "dp_metrics": metrics,
                "dp_tracing": tracing,
            }
        finally:
            opa_health.close()
            tg.cancel_scope.cancel()
            # Shielded: the cancel above would otherwise cancel these at their first await,
            # leaving legacy upstream sessions open (no DELETE) and the pool unclosed. The
            # cancel also stops every stdio upstream process (each supervisor kills its own).
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                await upstreams.aclose()
                await apis.aclose()
                await hot.aclose()
                await streams.aclose()
            if tracing.enabled:  # export the spans still buffered (bounded: a collector may be down)
                with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                    await anyio.to_thread.run_sync(tracing.shutdown, abandon_on_cancel=True)
