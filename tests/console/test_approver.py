"""The approver's path in a real browser: a pending policy version, its diff and test results,
approval with a comment; four-eyes refuses an approver who authored the version; rollback."""

from __future__ import annotations

from typing import Any

import pytest

from tests.console.conftest import ADMIN_ISSUER, Console, Watched, sign_in

pytestmark = [pytest.mark.db, pytest.mark.integration]

POLICY = """package gateway

decision := {"allow": allow, "reasons": [], "obligations": {}}

default allow := false

allow if input.action == "ping"
"""
CHANGED = (
    POLICY
    + """
allow if {
	input.action == "tools/call"
	"admin" in input.subject.roles
}
"""
)
TESTS = """package gateway_test

import data.gateway

test_ping_allowed if gateway.allow with input as {"action": "ping"}

test_admin_call_allowed if gateway.allow with input as {"action": "tools/call", "subject": {"roles": ["admin"]}}

test_other_denied if not gateway.allow with input as {"action": "resources/read"}
"""


def _upload(console: Console, token: str | None, modules: dict[str, str]) -> dict[str, Any]:
    r = console.api("POST", "/v1/policies", token, json={"modules": modules})
    assert r.status_code == 201, r.text
    return dict(r.json())


def test_the_approvers_path_and_rollback(console: Console, watched: Watched) -> None:
    page, base = watched.page, console.base
    first = _upload(console, None, {"gateway.rego": POLICY})["version"]
    assert console.api("POST", f"/v1/policies/{first}/approve", json={"comment": "baseline"}).status_code == 200
    pat = console.jwt("pat", ["policy_author"])
    pending = _upload(console, pat, {"gateway.rego": CHANGED, "gateway_test.rego": TESTS})["version"]

    sign_in(page, base, console.jwt("ann", ["approver"]))
    page.click("header nav >> text=Policies")
    row = page.locator("tbody tr", has=page.locator(f"a[href='/console/policies/{pending}']"))
    assert "pending_approval" in row.inner_text()
    row.locator(f"a[href='/console/policies/{pending}']").click()
    assert "3 passed, 0 failed, 0 errors, 0 skipped of 3" in page.inner_text("#tests")
    assert "passes" in page.inner_text("#gate")
    assert page.locator(".source .hl").count() == 2  # the module and the test module, highlighted

    # The diff against the active version.
    page.select_option("#against", str(first))
    page.click("form.inline button[type=submit]")
    page.wait_for_url(f"**/console/policies/{first}/diff/{pending}")
    assert "1 added, 0 removed, 1 changed" in page.inner_text("#diff-summary")
    assert '+\t"admin" in input.subject.roles' in page.inner_text("main")

    # Approve with a comment.
    page.goto(f"{base}/console/policies/{pending}")
    page.fill("#comment", "reviewed the admin rule in the console")
    page.click("#approve")
    page.wait_for_url(f"**/console/policies/{pending}?done=approved")
    assert "Approved" in page.inner_text("main")
    shown = console.api("GET", f"/v1/policies/{pending}").json()
    assert shown["status"] == "active" and shown["approved_by"] == f"ann@{ADMIN_ISSUER}"
    assert shown["approval_comment"] == "reviewed the admin rule in the console"

    # Roll back: approve the older version.
    page.goto(f"{base}/console/policies/{first}")
    assert page.inner_text("#approve") == "Roll back"
    page.fill("#comment", "roll back to the baseline")
    page.click("#approve")
    page.wait_for_url(f"**/console/policies/{first}?done=approved")
    assert console.api("GET", f"/v1/policies/{first}").json()["status"] == "active"
    assert not watched.csp_violations()


def test_four_eyes_refuses_the_author_in_the_console(console: Console, watched: Watched) -> None:
    page, base = watched.page, console.base
    token = console.jwt("sam", ["policy_author", "approver"])
    own = _upload(console, token, {"gateway.rego": POLICY + '\nallow if input.action == "sam"\n'})["version"]
    sign_in(page, base, token)
    page.goto(f"{base}/console/policies/{own}")
    page.fill("#comment", "my own")
    with page.expect_response(f"**/console/policies/{own}/approve") as answer:
        page.click("#approve")
    assert answer.value.status == 403
    text = page.inner_text("main")
    assert "Your roles do not allow approving policy version" in text
    assert f"four_eyes: policy_version {own} was authored by sam@{ADMIN_ISSUER}, who cannot approve it" in text
    assert console.api("GET", f"/v1/policies/{own}").json()["status"] == "pending_approval"
