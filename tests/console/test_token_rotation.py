"""A console session made with the bootstrap admin token ends when that token is rotated: the
session row keeps an HMAC of the token it signed in with, and both the console (every page) and
the bearer middleware (every console sub-request) refuse it once the control plane runs with
another token. Also: console error answers (405 for an unsupported method, an unexpected 500)
still carry the console's security headers."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from playwright.sync_api import Browser
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route, Router
from starlette.types import Message, Receive, Scope, Send

from gateway.config import Secret
from gateway.controlplane.actor import BOOTSTRAP
from gateway.controlplane.console.render import SecurityHeadersMiddleware
from gateway.controlplane.middleware.auth import (
    CONSOLE_ACTOR,
    CONSOLE_ADMIN_TOKEN_HMAC,
    BearerAuthMiddleware,
    admin_token_hmac,
)
from gateway.devtools.stack import LocalStack
from tests.console.conftest import Console, sign_in
from tests.console.test_security import CSP, _rows
from tests.support import pg

pytestmark = [pytest.mark.db, pytest.mark.integration]

T = TypeVar("T")


def _in_thread(work: Any) -> Any:
    """Run ``work()`` on a worker thread: Playwright's sync API keeps an event loop running on
    this one once the package's browser started, so nothing here may ``asyncio.run`` on it."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(work).result()


def _run(coro: Coroutine[Any, Any, T]) -> T:
    result: T = _in_thread(lambda: asyncio.run(coro))
    return result


def test_an_unsupported_method_is_answered_with_the_security_headers(console: Console) -> None:
    for method in ("PUT", "DELETE", "PATCH"):
        answer = httpx.request(method, f"{console.base}/console/servers", timeout=30)
        assert answer.status_code == 405, (method, answer.status_code)
        assert answer.headers["content-security-policy"] == CSP
        assert answer.headers["x-frame-options"] == "DENY"
        assert "GET" in answer.headers["allow"]
    # An admin bearer token opens no console route by another method either.
    answer = httpx.put(f"{console.base}/console/signin", headers=console.stack.admin_headers, timeout=30)
    assert answer.status_code == 405 and answer.headers["content-security-policy"] == CSP


@pytest.fixture
def own_control_plane(tmp_path: Path, pg_admin_url: str, opa_bin: Path) -> Iterator[LocalStack]:
    """A control plane of this test alone (it is restarted), on a database of its own."""
    database = pg.throwaway_database(pg_admin_url)
    database_url = _in_thread(database.__enter__)
    try:
        stack = LocalStack.create(tmp_path / "stack", database_url=database_url, opa_bin=str(opa_bin))
        stack.extra_env.update(
            {
                "GATEWAY_INTERNAL_TOKEN": "rotation-internal-token-0123456789",
                "GATEWAY_OPA_TOKEN": "rotation-opa-0123456789",
            }
        )
        with stack:
            stack.start_gateway(plane="control")
            yield stack
    finally:
        _in_thread(lambda: database.__exit__(None, None, None))


def test_a_bootstrap_session_ends_when_the_admin_token_is_rotated(
    own_control_plane: LocalStack, browser: Browser
) -> None:
    stack = own_control_plane
    base = stack.control_url
    old_token = stack.admin_token
    context = browser.new_context()
    try:
        page = context.new_page()
        page.set_default_timeout(10_000)
        sign_in(page, base, old_token)
        opened = page.goto(f"{base}/console/servers")
        assert opened is not None and opened.status == 200 and page.url == f"{base}/console/servers"
        export = page.request.get(f"{base}/console/audit/export?format=csv", max_redirects=0)
        assert export.status == 200
        (stored,) = _rows(stack.database_url, "SELECT encode(admin_token_hmac, 'hex') FROM console_sessions")
        assert stored == admin_token_hmac(old_token.encode()).hex()  # a digest of the token, never the token

        # Restart the control plane with a new admin token, against the same database.
        stack.stop("control")
        stack.admin_token = secrets.token_urlsafe(24)
        stack.start_gateway(plane="control")
        old_api = httpx.get(f"{base}/v1/servers", headers={"authorization": f"Bearer {old_token}"}, timeout=30)
        assert old_api.status_code == 401

        # The session made with the old token opens nothing any more.
        page.goto(f"{base}/console/servers")
        assert page.url == f"{base}/console/signin"
        refused = page.request.get(f"{base}/console/audit/export?format=csv", max_redirects=0)
        assert refused.status == 303 and refused.headers["location"] == "/console/signin"
        htmx = page.request.get(f"{base}/console/projection/live", headers={"hx-request": "true"}, max_redirects=0)
        assert htmx.status == 401
        page.goto(f"{base}/console/signin")
        page.fill("#credential", old_token)
        with page.expect_response(f"{base}/console/signin") as answer:
            page.click("button[type=submit]")
        assert answer.value.status == 401  # nor can the old token sign in again

        # The new token signs in as before.
        sign_in(page, base, stack.admin_token)
        opened = page.goto(f"{base}/console/servers")
        assert opened is not None and opened.status == 200 and page.url == f"{base}/console/servers"
        assert page.request.get(f"{base}/console/audit/export?format=csv", max_redirects=0).status == 200
    finally:
        context.close()


async def _call(app: object, scope: Scope) -> tuple[int, dict[str, str]]:
    """Run one request through ``app``; (status, lower-cased response headers)."""
    answer: dict[str, object] = {}

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            answer["status"] = message["status"]
            answer["headers"] = {k.decode().lower(): v.decode() for k, v in message.get("headers", ())}

    await app(scope, receive, send)  # type: ignore[operator]
    return int(answer["status"]), dict(answer["headers"])  # type: ignore[call-overload]


def test_the_middleware_refuses_a_bootstrap_sub_request_bound_to_another_token() -> None:
    reached: list[object] = []

    async def api(scope: Scope, receive: Receive, send: Send) -> None:
        reached.append(scope["state"]["actor"])
        await Response(status_code=204)(scope, receive, send)

    def middleware(token: str, *, enabled: bool = True) -> BearerAuthMiddleware:
        secret = Secret("x" * 32)
        return BearerAuthMiddleware(
            api, admin_token=Secret(token), internal_token=secret, opa_token=secret, admin_token_enabled=enabled
        )

    def sub_request(bound: bytes | None) -> Scope:
        scope: Scope = {"type": "http", "method": "GET", "path": "/v1/servers", "headers": [], CONSOLE_ACTOR: BOOTSTRAP}
        if bound is not None:
            scope[CONSOLE_ADMIN_TOKEN_HMAC] = bound
        return scope

    old, new = "old-admin-token-0123456789", "new-admin-token-0123456789"
    assert _run(_call(middleware(old), sub_request(admin_token_hmac(old.encode()))))[0] == 204
    assert reached == [BOOTSTRAP]
    for app, bound in (
        (middleware(new), admin_token_hmac(old.encode())),  # rotated
        (middleware(old), None),  # no binding carried
        (middleware(old, enabled=False), admin_token_hmac(old.encode())),  # switched off
    ):
        status, headers = _run(_call(app, sub_request(bound)))
        assert status == 401 and headers["www-authenticate"] == "Bearer"
    assert reached == [BOOTSTRAP]


def test_an_unexpected_error_in_a_console_handler_is_answered_with_the_security_headers() -> None:
    async def boom(request: Request) -> Response:
        raise RuntimeError("a console bug")

    async def unexpected(request: Request, exc: Exception) -> Response:
        return JSONResponse({"error": "internal_error"}, status_code=500)

    console = SecurityHeadersMiddleware(Router(routes=[Route("/boom", boom, methods=["GET"])]))
    app = Starlette(routes=[Mount("/console", app=console)], exception_handlers={Exception: unexpected})
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)

    async def get() -> httpx.Response:
        async with httpx.AsyncClient(transport=transport, base_url="http://console.test") as client:
            return await client.get("/console/boom")

    answer = _run(get())
    assert answer.status_code == 500
    assert answer.headers["content-security-policy"] == CSP and answer.headers["cache-control"] == "no-store"
    assert "a console bug" not in answer.text and answer.text.startswith("internal error")
