"""Admin API for the resolved scope and the projection rollout view."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from gateway.controlplane._deps import deps
from gateway.controlplane._http import JSONResponse
from gateway.controlplane.projection import projection_status

__all__ = ["get_projection_status", "get_scope"]


async def get_scope(request: Request) -> Response:
    """``GET /v1/control-plane/scope`` -> ``{"tenant", "environment"}``."""
    config = request.app.state.config
    return JSONResponse({"tenant": config.tenant, "environment": config.environment})


async def get_projection_status(request: Request) -> Response:
    """``GET /v1/projection`` -> desired/active versions and per data plane / OPA state."""
    d = deps(request)
    return JSONResponse(await projection_status(d.pool, d.config))
