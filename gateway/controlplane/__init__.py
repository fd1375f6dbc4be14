"""The control plane: system of record, projection compiler, OPA management APIs, admin REST API.

Wiring (``gateway/app.py``)::

    @contextlib.asynccontextmanager
    async def lifespan(app):
        async with controlplane_resources(config) as cp_state:
            yield {**cp_state}

    app = Starlette(lifespan=lifespan, routes=[Mount("/", app=create_controlplane_app(config))])
"""

from __future__ import annotations

import logging

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response

from gateway.config import Config
from gateway.controlplane._http import JSONResponse, error_body, request_id
from gateway.controlplane._resources import controlplane_resources
from gateway.controlplane.middleware import BearerAuthMiddleware, RequestIdMiddleware
from gateway.controlplane.middleware.admin import AdminAuthorizationMiddleware
from gateway.controlplane.routes import mounts, routes
from gateway.credentials import load_keyring
from gateway.db.pool import DATABASE_DOWN
from gateway.errors import DatabaseUnavailable, GatewayError, UpstreamError
from gateway.jwtauth import JwtVerifier
from gateway.observability.asgi import MetricsEndpoint, RequestObserver
from gateway.policy.reserved import require_assets

__all__ = ["controlplane_resources", "create_controlplane_app"]

log = logging.getLogger(__name__)

_HTTP_CATEGORIES = {404: "not_found", 405: "method_not_allowed"}


async def _gateway_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    if isinstance(exc, UpstreamError):
        log.warning("control-plane request failed upstream: %s: %s", exc.category, exc)
    elif exc.status_code >= 500:
        log.error("control-plane request failed: %s", exc.category, exc_info=exc)
    else:
        log.info("control-plane request rejected: %s: %s", exc.category, exc)
    return JSONResponse(error_body(exc, request_id(request.scope)), status_code=exc.status_code)


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    category = _HTTP_CATEGORIES.get(exc.status_code, "bad_request")
    body = {"error": category, "message": category.replace("_", " "), "request_id": request_id(request.scope)}
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


async def _database_down(request: Request, exc: Exception) -> Response:
    # One line, no traceback: an outage is an operational event, and a retry will do.
    log.warning("control-plane request failed: database unavailable (%s)", type(exc).__name__)
    body = error_body(DatabaseUnavailable("the database is unavailable; retry"), request_id(request.scope))
    return JSONResponse(body, status_code=503, headers={"retry-after": "1"})


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.error("unexpected control-plane error", exc_info=exc)
    body = {"error": "internal_error", "message": "internal error", "request_id": request_id(request.scope)}
    return JSONResponse(body, status_code=500)


def create_controlplane_app(config: Config) -> Starlette:
    """Build the control-plane ASGI app (no lifespan: the root app enters :func:`controlplane_resources`).

    Example::

        app = create_controlplane_app(config)   # mount at "/" on the control-plane port

    Args:
        config: The resolved gateway configuration (scope, tokens, OPA binary, policies dir).

    Returns:
        A Starlette app serving the admin API (admin token), the data-plane API (internal
        token) and the OPA API (OPA token); and ``GET /metrics`` before any of their auth
        (``GATEWAY_METRICS_TOKEN`` when set, else open: :mod:`gateway.observability.asgi`).

    Raises:
        ConfigError: The reserved Rego or the restricted capabilities are not installed
            with the package (:func:`gateway.policy.reserved.require_assets`), or a
            configured credentials KEK cannot be loaded (:func:`gateway.credentials.load_keyring`).
    """
    require_assets()
    app = Starlette(
        routes=[*routes, *mounts],
        middleware=[
            Middleware(
                RequestObserver,
                plane="control",
                metrics_key="cp_metrics",
                metrics_endpoint=MetricsEndpoint("cp_metrics", token=config.metrics_token),
                access=config.log_format == "json",
            ),
            Middleware(RequestIdMiddleware),
            Middleware(
                BearerAuthMiddleware,
                admin_token=config.control_plane.admin_token,
                internal_token=config.control_plane.internal_token,
                opa_token=config.control_plane.opa_token,
                admin_token_enabled=config.admin.token_enabled,
                admin_verifiers=[JwtVerifier(issuer) for issuer in config.admin.issuers()],
                scope_key=(config.tenant, config.environment),
            ),
            Middleware(AdminAuthorizationMiddleware, config=config, routes=routes),
        ],
        exception_handlers={
            GatewayError: _gateway_error,
            HTTPException: _http_exception,
            **dict.fromkeys(DATABASE_DOWN, _database_down),
            Exception: _unexpected,
        },
    )
    app.state.config = config
    # None: no KEK configured, the credentials API answers 503 (gateway.controlplane.credentials).
    app.state.credentials_keyring = load_keyring(config.credentials)
    # None: no JWT configuration, the broker refuses per-user OAuth credentials (gateway.controlplane.broker).
    app.state.subject_verifier = JwtVerifier(config.jwt) if config.jwt.configured else None
    return app
