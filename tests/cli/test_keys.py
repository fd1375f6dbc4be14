"""gatewayctl keys create|list|revoke against /v1/api-keys (helper I's admin API)."""

from __future__ import annotations

import csv
import io
import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from gateway.cli.errors import ExitCode
from gateway.cli.ops import parse_ttl
from tests.cli.conftest import ControlPlane

pytestmark = [pytest.mark.db, pytest.mark.integration]


def test_ttl_parsing() -> None:
    assert (
        parse_ttl("45") == 45 and parse_ttl("90m") == 5400 and parse_ttl("12h") == 43200 and parse_ttl("30d") == 2592000
    )
    for bad in ("", "0", "-5", "5w", "1.5h", "٣"):
        with pytest.raises(Exception, match="--ttl"):
            parse_ttl(bad)


def test_create_refuses_ttl_with_expires_at(gatewayctl) -> None:
    run = gatewayctl("keys", "create", "--subject", "bot", "--ttl", "1d", "--expires-at", "2030-01-01T00:00:00Z")
    assert run.code == ExitCode.USAGE, run
    assert gatewayctl("keys", "create", "--subject", "bot", "--ttl", "soon").code == ExitCode.USAGE
    assert gatewayctl("keys", "create").code == ExitCode.USAGE  # --subject is required


def test_create_shows_the_key_once_then_list_and_revoke(gatewayctl, cp: ControlPlane) -> None:
    subject = f"ci-bot-{uuid.uuid4().hex[:6]}"
    run = gatewayctl(
        "keys", "create", "--subject", subject, "--role", "deployer", "--role", "reader", "--ttl", "1d",
        "--description", "CI pipeline",
    )  # fmt: skip
    assert run.code == 0, run
    key_line = next(line for line in run.stdout.splitlines() if line.startswith("key: "))
    key = key_line.removeprefix("key: ")
    assert key.startswith("gwk_") and "not shown again" in run.stderr

    items = json.loads(gatewayctl("keys", "list", "-o", "json").stdout)
    mine = next(i for i in items if i["subject"] == subject)
    assert mine["roles"] == ["deployer", "reader"] and "key" not in mine
    expires = datetime.fromisoformat(mine["expires_at"])
    assert timedelta(hours=23) < expires - datetime.now(UTC) <= timedelta(days=1)
    listed = gatewayctl("keys", "list")
    assert mine["id"] in listed.stdout and key not in listed.stdout
    nd = [json.loads(line) for line in gatewayctl("keys", "list", "-o", "ndjson").stdout.splitlines()]
    assert nd == items
    rows = list(csv.DictReader(io.StringIO(gatewayctl("keys", "list", "-o", "csv").stdout)))
    assert next(r for r in rows if r["id"] == mine["id"])["subject"] == subject

    run = gatewayctl("keys", "revoke", mine["id"])
    assert run.code == 0 and f"revoked {mine['id']}" in run.stderr, run
    after = json.loads(gatewayctl("keys", "list", "-o", "json").stdout)
    revoked = next(i for i in after if i["id"] == mine["id"])
    assert revoked["status"] == "revoked" and revoked["revoked_at"] and revoked["revoked_by"] == "admin"


def test_create_json_and_expires_at(gatewayctl) -> None:
    run = gatewayctl(
        "keys", "create", "--subject", "json-bot", "--expires-at", (datetime.now(UTC) + timedelta(days=30)).isoformat(), "-o", "json"
    )  # fmt: skip
    assert run.code == 0, run
    record = json.loads(run.stdout)
    assert record["key"].startswith("gwk_") and record["subject"] == "json-bot"
    assert record["expires_at"].startswith((datetime.now(UTC) + timedelta(days=30)).date().isoformat())
    assert gatewayctl("keys", "revoke", "0000000000000000").stderr.startswith("error: 404 not_found")
    assert gatewayctl("keys", "revoke", record["id"], "-o", "json").code == 0
    again = gatewayctl("keys", "revoke", record["id"])
    assert again.code == ExitCode.API and again.stderr.startswith("error: 409 conflict"), again
