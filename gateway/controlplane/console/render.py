"""Server-side rendering of the console: Jinja2 templates (autoescaped), Pygments highlighting,
the navigation a role may see, and the security headers of every console response.

Pygments renders with CSS classes only (``/console/static/pygments.css`` is generated from its
default style), so no ``style`` attribute reaches the page and the strict CSP holds.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import anyio
import orjson
from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import DiffLexer, JsonLexer, RegoLexer
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.config import Config
from gateway.controlplane._http import request_id
from gateway.controlplane.actor import Actor
from gateway.controlplane.authz import shared_engine
from gateway.controlplane.console.session import CSRF_FIELD, SignedIn
from gateway.controlplane.middleware.auth import with_role_grants
from gateway.errors import GatewayError

log = logging.getLogger(__name__)

__all__ = [
    "CSP",
    "NAV",
    "SecurityHeadersMiddleware",
    "allowed_actions",
    "page",
    "pygments_css",
    "revision_policy_version",
]

TEMPLATES = Path(__file__).resolve().parent / "templates"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
"""The Content-Security-Policy of every console response: no inline script or style at all."""
SECURITY_HEADERS = (
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
)
NAV = (
    ("Servers", "/console/servers", "servers.read"),
    ("Policies", "/console/policies", "policies.read"),
    ("Projection", "/console/projection", "projection.read"),
    ("Audit", "/console/audit", "audit.read"),
    ("Stats", "/console/stats", "audit.read"),
    ("Verify", "/console/verify", "audit.verify"),
)
"""The navigation: (label, href, the action a role needs to see it)."""
NAV_ACTIONS = (
    "servers.read",
    "servers.approve",
    "policies.read",
    "policies.approve",
    "projection.read",
    "audit.read",
    "audit.verify",
    "audit.export",
)
"""Actions asked for every page: the navigation, and which forms and buttons to show (the
API still decides each request)."""
_REVISION = re.compile(r"p[0-9]+-pv([0-9]+)")


class SecurityHeadersMiddleware:
    """Put :data:`SECURITY_HEADERS` on every response of the wrapped (console) app, replacing
    any value the app set for the same names.

    Errors are answered here, before any response has started, so their answers carry the
    headers too: an ``HTTPException`` escaping the console's router (405 for a method a route
    does not serve, with ``Allow``) as plain text with its status; any other exception as a
    plain-text 500 naming the request id (logged with its traceback, not re-raised). An
    exception after the response started (a streamed export) propagates.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        names = {name for name, _ in SECURITY_HEADERS}
        started = False

        async def with_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                kept = [(k, v) for k, v in message.get("headers", ()) if k.lower() not in names]
                message = {**message, "headers": kept + list(SECURITY_HEADERS)}
            await send(message)

        try:
            await self.app(scope, receive, with_headers)
        except HTTPException as exc:
            if started:
                raise
            answer = PlainTextResponse(str(exc.detail), status_code=exc.status_code, headers=exc.headers)
            await answer(scope, receive, with_headers)
        except Exception as exc:
            if started:
                raise
            rid = request_id(scope)
            log.error("unexpected console error (request %s)", rid, exc_info=exc)
            await PlainTextResponse(f"internal error (request {rid})", status_code=500)(scope, receive, with_headers)


def revision_policy_version(revision: Any) -> int | None:
    """The policy version of a bundle revision ``p<N>-pv<P>`` (None for ``pv0`` or another shape)."""
    if not isinstance(revision, str):
        return None
    match = _REVISION.fullmatch(revision)
    version = int(match.group(1)) if match else 0
    return version or None


def _pretty(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS, default=str).decode()


def _highlight(source: str, lexer: Any) -> Markup:
    # Pygments escapes the source itself; its output is trusted markup with class names only.
    return Markup(highlight(source, lexer, HtmlFormatter(cssclass="hl", wrapcode=True)))  # noqa: S704


def _rego(source: Any) -> Markup:
    return _highlight(str(source), RegoLexer())


def _diff(text: Any) -> Markup:
    return _highlight(str(text or ""), DiffLexer())


def _json(value: Any) -> Markup:
    return _highlight(_pretty(value), JsonLexer())


def _when(value: Any) -> str:
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return value
        return parsed.strftime("%Y-%m-%d %H:%M:%S %Z").strip()
    return "" if value is None else str(value)


@lru_cache(maxsize=1)
def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(str(TEMPLATES)),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["rego"] = _rego
    env.filters["json"] = _json
    env.filters["difftext"] = _diff
    env.filters["pretty"] = _pretty
    env.filters["when"] = _when
    env.filters["policy_version"] = revision_policy_version
    return env


@lru_cache(maxsize=1)
def pygments_css() -> str:
    """The stylesheet of Pygments' default style for ``.hl`` blocks."""
    return str(HtmlFormatter(cssclass="hl").get_style_defs(".hl"))


_ALLOWED_TTL = 60.0
"""Seconds a navigation answer is reused for the same role set (the API decides every request anew)."""
_allowed_cache: dict[tuple[frozenset[str], bool, tuple[str, ...]], tuple[float, frozenset[str]]] = {}


async def allowed_actions(request: Request, actor: Actor, actions: tuple[str, ...] = NAV_ACTIONS) -> frozenset[str]:
    """Which of ``actions`` the control plane's policy grants ``actor`` (with its role grants,
    read now): one OPA decision per action, made concurrently. OPA unavailable: none.

    The policy grants actions by role (``policies/controlplane``, versioned with the gateway),
    so an answer is reused for :data:`_ALLOWED_TTL` seconds for the same role set; a new grant
    changes the role set, hence the key. Only what the pages show depends on it: every
    sub-request is decided by the policy itself.
    """
    config: Config = request.app.state.config
    pool = (request.scope.get("state") or {}).get("cp_pool")
    full = await with_role_grants(actor, pool, (config.tenant, config.environment))
    key = (full.roles, full.bootstrap, actions)
    now = time.monotonic()
    hit = _allowed_cache.get(key)
    if hit is not None and hit[0] > now:
        return hit[1]
    engine = shared_engine(config)
    granted: set[str] = set()
    failed = False

    async def ask(action: str) -> None:
        doc = {
            "actor": {
                "subject": full.subject,
                "issuer": full.issuer,
                "name": full.name,
                "roles": sorted(full.roles),
                "bootstrap": full.bootstrap,
            },
            "request": {"method": "GET", "path": "/console", "action": action},
        }
        nonlocal failed
        try:
            if (await engine.decide(doc)).allow:
                granted.add(action)
        except GatewayError:
            failed = True

    async with anyio.create_task_group() as tg:
        for action in actions:
            tg.start_soon(ask, action)
    answer = frozenset(granted)
    if not failed:
        if len(_allowed_cache) > 1024:
            _allowed_cache.clear()
        _allowed_cache[key] = (now + _ALLOWED_TTL, answer)
    return answer


async def page(
    request: Request,
    template: str,
    signed_in: SignedIn | None,
    context: Mapping[str, Any] | None = None,
    *,
    status_code: int = 200,
    headers: Mapping[str, str] | None = None,
) -> Response:
    """Render ``template`` with the navigation ``signed_in`` may see, its CSRF token and ``context``."""
    allowed: frozenset[str] = frozenset()
    if signed_in is not None:
        allowed = await allowed_actions(request, signed_in.actor)
    html = (
        _environment()
        .get_template(template)
        .render(
            {
                "me": signed_in,
                "nav": [(label, href) for label, href, action in NAV if action in allowed],
                "allowed": allowed,
                "csrf": signed_in.session.csrf_token if signed_in else "",
                "csrf_field": CSRF_FIELD,
                "path": request.url.path,
                **(context or {}),
            }
        )
    )
    return HTMLResponse(html, status_code=status_code, headers=dict(headers or {}))


def fragment(template: str, context: Mapping[str, Any], *, status_code: int = 200) -> Response:
    """Render an htmx fragment (no layout, no navigation)."""
    return HTMLResponse(_environment().get_template(template).render(dict(context)), status_code=status_code)
