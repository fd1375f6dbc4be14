"""gatewayctl admin whoami, admin roles grant|list|revoke and audit control-plane
(docs/admin-identity.md) against the real control plane."""

from __future__ import annotations

import csv
import io
import json
import uuid

import pytest

from gateway.cli.errors import ExitCode
from tests.cli.conftest import ControlPlane

pytestmark = [pytest.mark.db, pytest.mark.integration]

ISSUER = "https://idp.cli.test"


def test_whoami_names_the_bootstrap_admin(gatewayctl) -> None:
    run = gatewayctl("admin", "whoami", "-o", "json")
    assert run.code == 0, run
    me = json.loads(run.stdout)
    assert (me["subject"], me["bootstrap"]) == ("admin", True) and me["decision_id"]
    table = gatewayctl("admin", "whoami")
    assert table.code == 0 and "bootstrap" in table.stdout and "admin" in table.stdout


def test_roles_are_granted_listed_and_revoked_and_the_trail_shows_it(gatewayctl, cp: ControlPlane) -> None:
    subject = f"dan-{uuid.uuid4().hex[:6]}"
    missing = gatewayctl("admin", "roles", "grant", subject, "auditor", "--issuer", ISSUER)
    assert missing.code == ExitCode.USAGE, missing  # --comment is required
    made = gatewayctl("admin", "roles", "grant", subject, "auditor", "--issuer", ISSUER, "-m", "SOC 2", "-o", "json")
    assert made.code == 0, made
    grant = json.loads(made.stdout)
    assert (grant["subject"], grant["role"], grant["granted_by"]) == (subject, "auditor", "admin")
    again = gatewayctl("admin", "roles", "grant", subject, "auditor", "--issuer", ISSUER, "-m", "x")
    assert again.code == ExitCode.API and "409" in again.stderr, again
    listed = gatewayctl("admin", "roles", "list", "-o", "csv")
    rows = [r for r in csv.DictReader(io.StringIO(listed.stdout)) if r["subject"] == subject]
    assert [(r["role"], r["issuer"]) for r in rows] == [("auditor", ISSUER)]
    assert gatewayctl("admin", "roles", "revoke", grant["id"]).code == 0
    assert subject not in gatewayctl("admin", "roles", "list", "-o", "json").stdout

    trail = gatewayctl("audit", "control-plane", "--changes", "--action", "roles.write", "-o", "ndjson")
    assert trail.code == 0, trail
    rows = [json.loads(line) for line in trail.stdout.splitlines()]
    ours = [r for r in rows if r["resource_id"] == grant["id"]]
    assert [(r["method"], r["status"]) for r in ours] == [("DELETE", 200), ("POST", 201)]
    assert ours[1]["comment"] == "SOC 2" and all(r["decision_id"] for r in ours)
    assert cp.token not in trail.stdout + trail.stderr
