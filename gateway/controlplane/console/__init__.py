"""The web console at ``/console`` on the control-plane port (docs/console.md).

Server-rendered Jinja2 pages with htmx (vendored, pinned, under ``static/vendor/``: no Node
build step), Chart.js for the stats and Pygments for Rego. Sign-in with the admin API's
identities (:mod:`.session`); every page is built from in-process admin API sub-requests made
as the signed-in actor (:mod:`.api`), so the control plane's OPA decides and the trail records
them. Every response carries a strict CSP and the other security headers
(:class:`~gateway.controlplane.console.render.SecurityHeadersMiddleware`).

Mounted by ``gateway.controlplane.routes`` (:data:`console_mount`).
"""

from __future__ import annotations

from pathlib import Path

from starlette.exceptions import HTTPException
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route, Router
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from gateway.controlplane.console import views
from gateway.controlplane.console.render import SecurityHeadersMiddleware
from gateway.controlplane.middleware.auth import CONSOLE_PREFIX

__all__ = ["console_app", "console_mount", "console_routes"]

STATIC = Path(__file__).resolve().parent / "static"

_files = StaticFiles(directory=STATIC)


async def _static(scope: Scope, receive: Receive, send: Send) -> None:
    """The static files; a missing one answered here (so the 404 carries the security headers)."""
    try:
        await _files(scope, receive, send)
    except HTTPException as exc:
        await PlainTextResponse(str(exc.detail), status_code=exc.status_code)(scope, receive, send)


console_routes = [
    Route("/", views.home, methods=["GET"]),
    Route("/signin", views.sign_in_page, methods=["GET"]),
    Route("/signin", views.sign_in, methods=["POST"]),
    Route("/signout", views.sign_out, methods=["POST"]),
    Route("/servers", views.servers, methods=["GET"]),
    Route("/servers/{name}", views.server, methods=["GET"]),
    Route("/servers/{name}/approve", views.approve_server, methods=["POST"]),
    Route("/policies", views.policies, methods=["GET"]),
    Route("/policies/{version}", views.policy, methods=["GET"]),
    Route("/policies/{version}/approve", views.approve_policy, methods=["POST"]),
    Route("/policies/{version}/diff", views.policy_diff, methods=["GET"]),
    Route("/policies/{a}/diff/{b}", views.policy_diff, methods=["GET"]),
    Route("/projection", views.projection, methods=["GET"]),
    Route("/projection/live", views.projection_live, methods=["GET"]),
    Route("/audit", views.audit, methods=["GET"]),
    Route("/audit/export", views.audit_export, methods=["GET"]),
    Route("/audit/decisions/{decision_id}", views.audit_record, methods=["GET"]),
    Route("/stats", views.stats, methods=["GET"]),
    Route("/verify", views.verify, methods=["GET"]),
    Route("/static/pygments.css", views.pygments_stylesheet, methods=["GET"]),
    Mount("/static", app=_static),
]
"""The console's routes, relative to :data:`~gateway.controlplane.middleware.auth.CONSOLE_PREFIX`."""


async def _not_found(scope: Scope, receive: Receive, send: Send) -> None:
    """A console 404 answered inside the console (so it carries the security headers)."""
    await PlainTextResponse("not found", status_code=404)(scope, receive, send)


console_app = SecurityHeadersMiddleware(Router(routes=console_routes, redirect_slashes=True, default=_not_found))
"""The console as an ASGI app (a plain router, so ``request.app`` stays the control plane's app)."""

console_mount = Mount(CONSOLE_PREFIX, app=console_app)
"""What the control plane's app mounts (after its API routes)."""
