"""One real control plane (``gateway serve --plane control``, real OPA and PostgreSQL) and one
headless Debian Chromium (Playwright, no browser download) shared by the console tests.

The control plane accepts the bootstrap token and admin JWTs of a dev IdP (``ADMIN_ISSUER``);
:func:`seed` writes runtime audit events and OPA decision logs through the internal ingest
APIs, as data planes and OPA sidecars do.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")

from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright  # noqa: E402

from gateway.devtools.idp import DevIdentityProvider  # noqa: E402
from gateway.devtools.stack import LocalStack  # noqa: E402
from tests.support import pg  # noqa: E402

ADMIN_ISSUER = "http://127.0.0.1/admin-idp"
ADMIN_AUDIENCE = "gateway-admin"
INTERNAL_TOKEN = "console-internal-token-0123456789"
OPA_TOKEN = "console-opa-token-0123456789"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")


@dataclass
class Console:
    """The running control plane and how to reach it as each kind of caller."""

    stack: LocalStack
    idp: DevIdentityProvider
    base: str
    seeded: dict[str, Any] = field(default_factory=dict)

    def jwt(self, sub: str, roles: list[str], **kw: Any) -> str:
        """An admin JWT of the admin issuer."""
        return self.idp.mint(sub, roles, ADMIN_AUDIENCE, **kw)

    def api(self, method: str, path: str, token: str | None = None, **kw: Any) -> httpx.Response:
        """Call the admin API (bootstrap token unless ``token``)."""
        headers = {"authorization": f"Bearer {token or self.stack.admin_token}"}
        return httpx.request(method, self.base + path, headers=headers, timeout=30, **kw)

    def internal(self, path: str, body: Any, token: str = INTERNAL_TOKEN) -> httpx.Response:
        return httpx.post(self.base + path, json=body, headers={"authorization": f"Bearer {token}"}, timeout=30)


def _event(decision_id: str, when: datetime, subject: str, tool: str, allowed: bool, reasons: list[str]) -> dict:
    return {
        "decision_id": decision_id,
        "timestamp": when.isoformat().replace("+00:00", "Z"),
        "tenant": "tenant_local",
        "environment": "prod",
        "dataplane_id": "dp-console",
        "subject": subject,
        "client_id": "console-test",
        "action": "tools/call",
        "server": "demo",
        "tool": tool,
        "allowed": allowed,
        "reasons": reasons,
        "policy_revision": "p2-pv1",
        "projection_version": 2,
        "latency_ms": 3.5 if allowed else 1.25,
        "status": "ok" if allowed else "denied",
        "error_category": None,
        "arguments_sha256": "a" * 64,
        "result_sha256": None,
        "session_id": None,
        "protocol_version": "2025-11-25",
    }


def _opa_log(decision_id: str, when: datetime, subject: str, tool: str, allowed: bool, reasons: list[str]) -> dict:
    return {
        "decision_id": decision_id,
        "labels": {"id": "opa-console"},
        "path": "gateway/decision",
        "bundles": {"gateway": {"revision": "p2-pv1"}},
        "timestamp": when.isoformat().replace("+00:00", "Z"),
        "input": {"subject": {"sub": subject}, "tool": tool, "action": "tools/call", "arguments": "**masked**"},
        "result": {"allow": allowed, "reasons": reasons},
        "erased": ["/input/arguments"],
    }


def seed(console: Console) -> dict[str, Any]:
    """Write 12 decisions (mallory: 4 denials of ``delete_record`` and 2 allowed calls; alice:
    4 allowed, 2 denied) with OPA decision logs for each; wait until the API shows them all."""
    now = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=30)
    rows: list[tuple[str, datetime, str, str, bool, list[str]]] = []
    for i in range(12):
        subject = "mallory" if i % 2 == 0 else "alice"
        denied = (subject == "mallory" and i < 8) or (subject == "alice" and i in (1, 3))
        tool = "delete_record" if denied else "echo"
        reasons = ["tool_not_granted"] if denied else ["granted"]
        rows.append((f"console-dec-{i:03}", now + timedelta(seconds=i), subject, tool, not denied, reasons))
    assert console.internal("/v1/audit/events", [_event(*r) for r in rows]).status_code == 202
    logs = console.internal("/v1/opa/logs", [_opa_log(*r) for r in rows], token=OPA_TOKEN)
    assert logs.status_code in (200, 204), logs.text
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        page = console.api("GET", "/v1/audit/decisions", params={"limit": 100}).json()
        if len([i for i in page["items"] if i["decision_id"].startswith("console-dec-") and i["opa_logged"]]) == 12:
            break
        time.sleep(0.1)
    else:
        raise AssertionError("the seeded decisions did not show up in the audit API")
    return {
        "mallory_denials": sorted(r[0] for r in rows if r[2] == "mallory" and not r[4]),
        "alice_denials": sorted(r[0] for r in rows if r[2] == "alice" and not r[4]),
        "total": len(rows),
    }


@pytest.fixture(scope="package")
def console(tmp_path_factory: pytest.TempPathFactory, pg_admin_url: str, opa_bin: Path) -> Iterator[Console]:
    """The control plane alone (no data plane), on a database of its own, seeded with audit data."""
    run_dir = tmp_path_factory.mktemp("console")
    idp = DevIdentityProvider.create(run_dir / "admin-idp", ADMIN_ISSUER)
    with pg.throwaway_database(pg_admin_url) as database_url:
        stack = LocalStack.create(run_dir, database_url=database_url, opa_bin=str(opa_bin))
        stack.extra_env.update(
            {
                "GATEWAY_INTERNAL_TOKEN": INTERNAL_TOKEN,
                "GATEWAY_OPA_TOKEN": OPA_TOKEN,
                "GATEWAY_ADMIN_JWT_ISSUER": ADMIN_ISSUER,
                "GATEWAY_ADMIN_JWT_AUDIENCE": ADMIN_AUDIENCE,
                "GATEWAY_ADMIN_JWKS_URL": idp.jwks_url,
            }
        )
        with stack:
            stack.start_gateway(plane="control")
            c = Console(stack, idp, stack.control_url)
            c.seeded = seed(c)
            yield c


@pytest.fixture(scope="package")
def browser() -> Iterator[Browser]:
    """Debian's Chromium, headless, driven by Playwright (fails, never skips, when absent)."""
    if not (os.path.isfile(CHROMIUM) or shutil.which(CHROMIUM)):
        pytest.fail(f"{CHROMIUM} not found: run deploy/scripts/ensure-chromium.sh (make test does)", pytrace=False)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield b
        finally:
            b.close()


CSP_WATCH = """
window.__csp = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__csp.push(e.violatedDirective + " " + e.blockedURI);
});
"""


class Watched:
    """A browser context (own cookies) whose pages record console errors and CSP violations."""

    def __init__(self, context: BrowserContext) -> None:
        self.context = context
        self.messages: list[str] = []
        context.add_init_script(CSP_WATCH)
        context.on("console", lambda m: self.messages.append(f"{m.type}: {m.text}"))
        self.page = context.new_page()
        self.page.set_default_timeout(10_000)

    def csp_violations(self) -> list[str]:
        """Violations seen by the current page's listener plus every CSP console message so far."""
        seen = list(self.page.evaluate("window.__csp || []"))
        return seen + [m for m in self.messages if "Content Security Policy" in m or "Refused to" in m]


@pytest.fixture
def watched(browser: Browser) -> Iterator[Watched]:
    context = browser.new_context(accept_downloads=True)
    try:
        yield Watched(context)
    finally:
        context.close()


def a_policy_version(console: Console) -> int:
    """The version number of some stored policy version (one is uploaded when there is none)."""
    items = console.api("GET", "/v1/policies").json()["items"]
    if items:
        return int(items[-1]["version"])
    body = {"modules": {"gateway.rego": 'package gateway\n\ndecision := {"allow": false}\n'}}
    created = console.api("POST", "/v1/policies", json=body)
    assert created.status_code == 201, created.text
    return int(created.json()["version"])


def sign_in(page: Page, base: str, credential: str) -> None:
    """Sign in through the console's form and land on the home page."""
    page.goto(f"{base}/console/signin")
    page.fill("#credential", credential)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/console/")
