"""The security reviewer's path in a real browser: an auditor (admin JWT) signs in, filters the
denials of one subject, opens one (runtime event and OPA decision log side by side), verifies
the chain and exports CSV; every view was an admin API sub-request recorded in the trail."""

from __future__ import annotations

import csv
import io
from urllib.parse import quote

import pytest

from tests.console.conftest import ADMIN_ISSUER, Console, Watched, sign_in

pytestmark = [pytest.mark.db, pytest.mark.integration]


def test_the_reviewers_path(console: Console, watched: Watched) -> None:
    page, base = watched.page, console.base
    sign_in(page, base, console.jwt("rita", ["auditor"]))
    assert page.inner_text("#roles") == "auditor"
    nav = page.locator("header nav a").all_inner_texts()
    assert nav == ["Servers", "Policies", "Audit", "Stats", "Verify"]  # auditor: no projection

    # Filter the denials of one subject.
    page.click("header nav >> text=Audit")
    page.fill("input[name=subject]", "mallory")
    page.select_option("select[name=allowed]", "false")
    page.click("form.filters button[type=submit]")
    page.wait_for_url("**/console/audit?*subject=mallory*")
    rows = page.locator("#results tbody tr")
    assert rows.count() == 4
    texts = rows.all_inner_texts()
    assert all("mallory" in t and "denied" in t and "delete_record" in t for t in texts), texts

    # Open one: the runtime event and OPA's decision log side by side.
    newest = console.seeded["mallory_denials"][-1]
    rows.first.locator("a").click()
    page.wait_for_url(f"**/console/audit/decisions/{quote(newest)}")
    assert page.inner_text("#reasons").strip() == "tool_not_granted"
    event, opa_log = page.inner_text("#event"), page.inner_text("#opa-log")
    assert f'"decision_id": "{newest}"' in event and '"subject": "mallory"' in event
    assert '"erased"' in opa_log and '"allow": false' in opa_log and "**masked**" in opa_log
    left, right = page.locator("#event").bounding_box(), page.locator("#opa-log").bounding_box()
    assert left and right and left["x"] + left["width"] <= right["x"] and abs(left["y"] - right["y"]) < 2
    assert page.get_attribute("#revision a", "href") == "/console/policies/1"  # p2-pv1: policy version 1

    # Verify the chain.
    page.click("header nav >> text=Verify")
    page.click("#verify")
    page.wait_for_selector("#verify-message")
    message = page.inner_text("#verify-message")
    assert message.startswith("intact, ") and "records" in message, message

    # Export CSV of the filtered denials.
    page.goto(f"{base}/console/audit?subject=mallory&allowed=false")
    with page.expect_download() as download:
        page.click("#export-csv")
    path = download.value.path()
    assert download.value.suggested_filename.endswith(".csv")
    rows_out = list(csv.DictReader(io.StringIO(path.read_text())))
    assert sorted(r["decision_id"] for r in rows_out) == console.seeded["mallory_denials"]
    assert {r["subject"] for r in rows_out} == {"mallory"} and {r["allowed"] for r in rows_out} == {"false"}

    # Each view was an admin API request of rita's, decided by the control plane's OPA.
    trail = console.api("GET", "/v1/audit/control-plane", params={"actor": f"rita@{ADMIN_ISSUER}", "limit": 100})
    assert trail.status_code == 200, trail.text
    actions = {(r["action"], r["allowed"]) for r in trail.json()["items"]}
    assert {("scope.read", True), ("audit.read", True), ("audit.verify", True), ("audit.export", True)} <= actions
    assert all(r["decision_id"] for r in trail.json()["items"])
    assert not watched.csp_violations()
