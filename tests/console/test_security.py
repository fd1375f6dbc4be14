"""The console's protections in a real browser: the CSP and security headers on every page with
no violation reported, CSRF refusals, the navigation and refusal page of a role without
audit.read, the session cookie's flags, and sessions that store no credential."""

from __future__ import annotations

import asyncio
import re
from concurrent.futures import ThreadPoolExecutor

import asyncpg
import pytest
from playwright.sync_api import Browser

from tests.console.conftest import Console, Watched, a_policy_version, sign_in

pytestmark = [pytest.mark.db, pytest.mark.integration]

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
PAGES = [
    "/console/",
    "/console/servers",
    "/console/policies",
    "/console/projection",
    "/console/audit?subject=mallory&allowed=false",
    "/console/audit/decisions/console-dec-000",
    "/console/stats",
    "/console/verify?run=1",
]


def _rows(database_url: str, sql: str) -> list[str]:
    async def go() -> list[str]:
        conn = await asyncpg.connect(database_url)
        try:
            return [str(r[0]) for r in await conn.fetch(sql)]
        finally:
            await conn.close()

    with ThreadPoolExecutor(1) as pool:  # Playwright's sync API keeps an event loop on this thread
        return pool.submit(asyncio.run, go()).result()


def test_every_page_has_the_csp_and_no_violation_is_reported(console: Console, watched: Watched) -> None:
    page, base = watched.page, console.base
    version = a_policy_version(console)
    sign_in(page, base, console.stack.admin_token)
    for path in ["/console/signin", *PAGES, f"/console/policies/{version}"]:
        response = page.goto(base + path)
        assert response is not None and response.status == 200, (path, response and response.status)
        headers = response.headers
        assert headers["content-security-policy"] == CSP, path
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["referrer-policy"] == "no-referrer"
        assert headers["cache-control"] == "no-store"
        if path == "/console/stats":
            page.wait_for_selector("body[data-charts=drawn]")  # console.js drew the charts under the CSP
            assert page.locator("canvas").count() == 5
        if path == "/console/projection":
            with page.expect_response("**/console/projection/live") as live:  # htmx polls the status
                pass
            assert live.value.status == 200
            page.wait_for_selector("#projection #desired")
        assert watched.csp_violations() == [], path
    assert page.locator("[style]").count() == 0  # nothing inline
    for missing in ("/console/nothing-here", "/console/static/nothing.js"):
        answer = page.request.get(base + missing)
        assert answer.status == 404 and answer.headers["content-security-policy"] == CSP, missing


def test_posts_without_the_csrf_token_or_from_another_origin_are_refused(console: Console, watched: Watched) -> None:
    page, base = watched.page, console.base
    sign_in(page, base, console.stack.admin_token)
    page.goto(f"{base}/console/")
    token = page.get_attribute("form.signout input[name=csrf_token]", "value")
    assert token and len(token) >= 32
    target = f"{base}/console/policies/{a_policy_version(console)}/approve"
    headers = {"origin": base, "sec-fetch-site": "same-origin"}
    missing = page.request.post(target, form={"comment": "forged"}, headers=headers, max_redirects=0)
    assert missing.status == 403 and "CSRF" in missing.text()
    wrong = page.request.post(target, form={"comment": "forged", "csrf_token": "x" * 43}, headers=headers)
    assert wrong.status == 403
    cross = page.request.post(
        target,
        form={"comment": "forged", "csrf_token": token},
        headers={"origin": "http://evil.test", "sec-fetch-site": "cross-site"},
    )
    assert cross.status == 403
    signout = page.request.post(f"{base}/console/signout", form={}, headers=headers, max_redirects=0)
    assert signout.status == 403  # sign-out is a POST form too
    # With the token and from this origin the same request reaches the API (and its rules).
    ok = page.request.post(target, form={"comment": "", "csrf_token": token}, headers=headers, max_redirects=0)
    assert ok.status == 400 and "comment" in ok.text()  # the API's own answer: a comment is required


def test_a_role_without_audit_read_sees_no_audit_and_is_refused(console: Console, watched: Watched) -> None:
    page, base = watched.page, console.base
    sign_in(page, base, console.jwt("oscar", ["operator"]))
    nav = page.locator("header nav a").all_inner_texts()
    assert nav == ["Servers", "Projection"]
    for path in ("/console/audit", "/console/audit/decisions/console-dec-000", "/console/stats", "/console/verify?run=1",
                 "/console/audit/export?format=csv"):  # fmt: skip
        response = page.goto(base + path)
        assert response is not None and response.status == 403, path
        assert "Your roles do not allow" in page.inner_text("main"), path
    assert watched.csp_violations() == []


def test_the_session_cookie_and_what_a_session_stores(console: Console, browser: Browser, watched: Watched) -> None:
    page, base = watched.page, console.base
    credential = console.jwt("cora", ["auditor"], ttl_seconds=600)
    sign_in(page, base, credential)
    (cookie,) = [c for c in watched.context.cookies() if c["name"] == "gw_console"]
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict" and cookie["secure"] is True
    assert cookie["path"] == "/console" and re.fullmatch(r"[A-Za-z0-9_-]{43}", cookie["value"])
    assert page.evaluate("document.cookie") == ""  # HttpOnly: invisible to scripts
    rows = _rows(console.stack.database_url, "SELECT to_jsonb(s)::text FROM console_sessions s WHERE subject = 'cora'")
    assert len(rows) == 1
    assert credential not in rows[0] and cookie["value"] not in rows[0]  # neither the JWT nor the session id
    assert '"token_roles": ["auditor"]' in rows[0]
    expires = _rows(
        console.stack.database_url,
        "SELECT extract(epoch FROM expires_at - created_at)::int FROM console_sessions WHERE subject = 'cora'",
    )
    assert int(expires[0]) <= 600  # the JWT's exp, not 8 h

    # Signing out deletes the session: the same cookie in another browser context opens nothing.
    page.click("form.signout button")
    page.wait_for_url("**/console/signin")
    assert _rows(console.stack.database_url, "SELECT 1 FROM console_sessions WHERE subject = 'cora'") == []
    other = browser.new_context()
    try:
        other.add_cookies([{**cookie}])  # type: ignore[list-item]
        replay = other.new_page()
        replay.goto(f"{base}/console/audit")
        assert replay.url == f"{base}/console/signin"
    finally:
        other.close()


def test_sign_in_refuses_what_no_admin_identity_accepts(console: Console, watched: Watched) -> None:
    page, base = watched.page, console.base
    page.goto(f"{base}/console/audit")
    assert page.url == f"{base}/console/signin"  # not signed in
    expired = console.jwt("rita", ["auditor"], ttl_seconds=-120)
    for bad in ("not-a-token", expired, console.idp.mint("rita", ["auditor"], "another-audience")):
        page.goto(f"{base}/console/signin")
        page.fill("#credential", bad)
        with page.expect_response(f"{base}/console/signin") as answer:
            page.click("button[type=submit]")
        assert answer.value.status == 401
        assert "not accepted" in page.inner_text("main")
    assert watched.context.cookies() == []
