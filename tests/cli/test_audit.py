"""gatewayctl audit query: filters become query parameters, pages are followed, every output format."""

from __future__ import annotations

import csv
import io
import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from gateway.cli.errors import ExitCode
from tests.cli.conftest import ControlPlane

pytestmark = [pytest.mark.db, pytest.mark.integration]


@pytest.fixture(scope="module")
def seeded(cp: ControlPlane) -> dict[str, object]:
    """Five decisions of a subject of this module's own (ingested like a data plane does)."""
    scope = cp.admin("GET", "/v1/control-plane/scope")
    subject = f"auditee-{uuid.uuid4().hex[:8]}"
    base = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    events = []
    for i in range(5):
        allowed = i % 2 == 0
        events.append(
            {
                "decision_id": f"{subject}-{i}",
                "timestamp": (base + timedelta(minutes=i)).isoformat(),
                "tenant": scope["tenant"],
                "environment": scope["environment"],
                "subject": subject,
                "action": "tools/call",
                "server": "demo",
                "tool": "echo" if allowed else "create_ticket",
                "allowed": allowed,
                "reasons": ["viewer_may_echo"] if allowed else ["not_granted", 'needs, "quotes"'],
                "status": "ok" if allowed else "denied",
                "latency_ms": 1.5,
            }
        )
    assert cp.internal("POST", "/v1/audit/events", events) == {"accepted": 5}
    return {"subject": subject, "base": base, "events": events}


def test_table_shows_the_columns_newest_first(gatewayctl, seeded) -> None:
    run = gatewayctl("audit", "query", "--subject", seeded["subject"])
    assert run.code == 0, run
    lines = [ln for ln in run.stdout.splitlines() if seeded["subject"] in ln]
    assert len(lines) == 5 and f"{seeded['subject']}-4" in lines[0] and f"{seeded['subject']}-0" in lines[-1]
    assert "create_ticket" in run.stdout and "not_granted" in run.stdout
    assert run.stderr == ""


def test_json_ndjson_csv_carry_every_field(gatewayctl, seeded) -> None:
    items = json.loads(gatewayctl("audit", "query", "--subject", seeded["subject"], "-o", "json").stdout)
    assert [i["decision_id"] for i in items] == [f"{seeded['subject']}-{i}" for i in (4, 3, 2, 1, 0)]
    assert items[1]["reasons"] == ["not_granted", 'needs, "quotes"'] and items[1]["allowed"] is False

    nd = gatewayctl("audit", "query", "--subject", seeded["subject"], "--output", "ndjson").stdout.splitlines()
    assert [json.loads(line) for line in nd] == items

    text = gatewayctl("audit", "query", "--subject", seeded["subject"], "-o", "csv").stdout
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [r["decision_id"] for r in rows] == [i["decision_id"] for i in items]
    assert list(rows[0]) == list(items[0])  # header: every field, in the API's order
    assert rows[1]["allowed"] == "false" and json.loads(rows[1]["reasons"]) == items[1]["reasons"]
    assert rows[0]["latency_ms"] == "1.5"


def test_filters_are_sent(gatewayctl, seeded) -> None:
    def ids(*args: str) -> list[str]:
        run = gatewayctl("audit", "query", "--subject", seeded["subject"], *args, "-o", "json")
        assert run.code == 0, run
        return [i["decision_id"] for i in json.loads(run.stdout)]

    s = seeded["subject"]
    assert ids("--denied") == [f"{s}-3", f"{s}-1"]
    assert ids("--allowed", "--tool", "echo") == [f"{s}-4", f"{s}-2", f"{s}-0"]
    assert ids("--server", "other") == []
    assert ids("--action", "tools/call", "--limit", "2") == [f"{s}-4", f"{s}-3"]
    base = seeded["base"]
    since, until = (base + timedelta(minutes=1)).isoformat(), (base + timedelta(minutes=3)).isoformat()
    assert ids("--since", since, "--until", until) == [f"{s}-2", f"{s}-1"]


def test_pages_follow_the_cursor(gatewayctl, seeded) -> None:
    first = gatewayctl("audit", "query", "--subject", seeded["subject"], "--limit", "2", "-o", "ndjson")
    assert first.code == 0 and len(first.stdout.splitlines()) == 2, first
    assert first.stderr.startswith("more: --cursor ")
    cursor = first.stderr.split("--cursor ", 1)[1].strip()
    second = gatewayctl(
        "audit", "query", "--subject", seeded["subject"], "--limit", "2", "--cursor", cursor, "-o", "json"
    )
    assert [i["decision_id"] for i in json.loads(second.stdout)] == [f"{seeded['subject']}-{i}" for i in (2, 1)]

    everything = gatewayctl("audit", "query", "--subject", seeded["subject"], "--limit", "2", "--all", "-o", "json")
    assert len(json.loads(everything.stdout)) == 5 and everything.stderr == "", everything


def test_empty_result_and_bad_filters(gatewayctl) -> None:
    run = gatewayctl("audit", "query", "--subject", "nobody-" + uuid.uuid4().hex)
    assert run.code == 0 and run.stdout == "" and run.stderr.strip() == "(none)", run
    assert gatewayctl("audit", "query", "--subject", "nobody", "-o", "json").stdout.strip() == "[]"
    assert gatewayctl("audit", "query", "--subject", "nobody", "-o", "csv").stdout.strip() != ""  # header
    run = gatewayctl("audit", "query", "--since", "yesterday")
    assert run.code == ExitCode.API and run.stderr.startswith("error: 400 bad_request: since"), run
    assert gatewayctl("audit", "query", "--limit", "501").code == ExitCode.USAGE
