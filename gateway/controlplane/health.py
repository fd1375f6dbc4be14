"""Control-plane probes: ``GET /healthz`` (liveness) and ``GET /readyz`` (readiness), no token.

What a Kubernetes kubelet, a compose healthcheck or a load balancer in front of several
control planes asks (docs/operations.md "Several control planes"). Neither says anything a
caller could not learn by connecting.
"""

from __future__ import annotations

import logging

import anyio
from starlette.requests import Request
from starlette.responses import Response

from gateway.controlplane._deps import deps
from gateway.controlplane._http import JSONResponse
from gateway.db.pool import DATABASE_DOWN

__all__ = ["READY_TIMEOUT", "healthz", "readyz"]

log = logging.getLogger(__name__)

READY_TIMEOUT = 2.0
"""Seconds the readiness probe waits for PostgreSQL to answer ``SELECT 1``."""


async def healthz(request: Request) -> Response:
    """Liveness: the process serves HTTP; ``200 {"status": "ok"}``."""
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    """Readiness: migrations ran (the app only serves after them) and PostgreSQL answers
    ``SELECT 1`` within :data:`READY_TIMEOUT`: ``200 {"status": "ready"}``, else ``503
    {"status": "not_ready", "reasons": ["database_unavailable"]}``."""
    try:
        with anyio.fail_after(READY_TIMEOUT):
            await deps(request).pool.fetchval("SELECT 1")
    except (TimeoutError, *DATABASE_DOWN) as exc:  # type: ignore[misc]
        log.warning("readiness: database unavailable (%s)", type(exc).__name__)
        return JSONResponse({"status": "not_ready", "reasons": ["database_unavailable"]}, status_code=503)
    return JSONResponse({"status": "ready"})
