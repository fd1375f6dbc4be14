"""gatewayctl audit export (streamed to a file or stdout) and audit forward (RFC 5424 syslog to a
real UDP socket), against the real control plane of tests/cli."""

from __future__ import annotations

import csv
import io
import json
import re
import socket
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from gateway.cli.errors import ExitCode
from gateway.cli.forward import syslog_message
from gateway.db.audit_ingest import EVENT_FIELDS
from tests.cli.conftest import ControlPlane

pytestmark = [pytest.mark.db, pytest.mark.integration]

# RFC 5424: <PRI>VERSION SP TIMESTAMP SP HOSTNAME SP APP-NAME SP PROCID SP MSGID SP SD [SP MSG]
SYSLOG = re.compile(
    rb"<(?P<pri>\d{1,3})>1 (?P<ts>\S+) (?P<host>\S+) (?P<app>\S+) (?P<procid>\S+) (?P<msgid>\S+) "
    rb"(?P<sd>\[(?:[^\]\\]|\\.)*\]) \xef\xbb\xbf(?P<msg>.*)",
    re.DOTALL,
)


def _events(cp: ControlPlane, subject: str, base: datetime, n: int, start: int = 0) -> list[dict[str, Any]]:
    scope = cp.admin("GET", "/v1/control-plane/scope")
    events = [
        {
            "decision_id": f"{subject}-{i}",
            "timestamp": (base + timedelta(seconds=i)).isoformat(),
            "tenant": scope["tenant"],
            "environment": scope["environment"],
            "subject": subject,
            "action": "tools/call",
            "server": "demo",
            "tool": "echo",
            "allowed": i % 2 == 0,
            "reasons": ["granted"] if i % 2 == 0 else ['not "granted", ]really['],
            "status": "ok" if i % 2 == 0 else "denied",
            "latency_ms": 2.5,
            "arguments_sha256": "b" * 64,
        }
        for i in range(start, start + n)
    ]
    assert cp.internal("POST", "/v1/audit/events", events) == {"accepted": n}
    return events


@pytest.fixture(scope="module")
def seeded(cp: ControlPlane) -> dict[str, Any]:
    subject = f"exported-{uuid.uuid4().hex[:8]}"
    base = datetime(2026, 1, 3, 4, 5, 6, tzinfo=UTC)
    return {"subject": subject, "events": _events(cp, subject, base, 6)}


def test_csv_export_to_a_file_has_a_header_and_every_row(gatewayctl, seeded, tmp_path: Path) -> None:
    out = tmp_path / "trail.csv"
    run = gatewayctl("audit", "export", "--format", "csv", "--subject", seeded["subject"], "-o", str(out))
    assert run.code == 0, run
    assert run.stdout == "" and f"to {out}" in run.stderr
    assert not (tmp_path / "trail.csv.partial").exists()
    table = list(csv.reader(io.StringIO(out.read_text())))
    assert table[0] == list(EVENT_FIELDS)
    assert [r[0] for r in table[1:]] == [e["decision_id"] for e in seeded["events"]]  # oldest first
    assert json.loads(dict(zip(table[0], table[2], strict=True))["reasons"]) == ['not "granted", ]really[']


def test_ndjson_export_to_stdout_with_filters_and_order(gatewayctl, seeded) -> None:
    run = gatewayctl("audit", "export", "--subject", seeded["subject"], "--denied", "--order", "desc")
    assert run.code == 0, run
    rows = [json.loads(line) for line in run.stdout.splitlines()]
    assert [r["decision_id"] for r in rows] == [e["decision_id"] for e in reversed(seeded["events"][1::2])]
    assert all(set(r) == set(EVENT_FIELDS) for r in rows)


def test_export_errors_exit_with_the_api_message(gatewayctl, seeded, tmp_path: Path) -> None:
    run = gatewayctl("audit", "export", "--since", "yesterday", "-o", str(tmp_path / "x.ndjson"))
    assert run.code == ExitCode.API and "400 bad_request" in run.stderr and "since" in run.stderr
    assert not (tmp_path / "x.ndjson").exists() and not (tmp_path / "x.ndjson.partial").exists()
    run = gatewayctl("audit", "export", "--trail", "control-plane", "--subject", "x")
    assert run.code == ExitCode.USAGE and "--subject is a decisions filter" in run.stderr


def test_control_plane_trail_exports_too(gatewayctl, cp: ControlPlane) -> None:
    since = datetime.now(UTC).isoformat()
    cp.admin("GET", "/v1/admin/whoami")
    run = gatewayctl("audit", "export", "--trail", "control-plane", "--action", "scope.read", "--since", since)
    assert run.code == 0, run
    rows = [json.loads(line) for line in run.stdout.splitlines()]
    assert rows and all(r["action"] == "scope.read" and r["path"] == "/v1/admin/whoami" for r in rows)


@pytest.fixture
def udp_receiver() -> Iterator[tuple[str, socket.socket]]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(20)
    try:
        yield f"udp://127.0.0.1:{sock.getsockname()[1]}", sock
    finally:
        sock.close()


def _receive(sock: socket.socket, n: int) -> list[re.Match[bytes]]:
    messages = []
    for _ in range(n):
        data, _addr = sock.recvfrom(65535)
        m = SYSLOG.fullmatch(data)
        assert m is not None, data
        messages.append(m)
    return messages


def test_forward_sends_one_rfc5424_message_per_event(gatewayctl, seeded, udp_receiver) -> None:
    url, sock = udp_receiver
    run = gatewayctl(
        "audit", "forward", "--syslog", url, "--subject", seeded["subject"], "--since", "2026-01-01T00:00:00Z",
        "--hostname", "gw-test",
    )  # fmt: skip
    assert run.code == 0, run
    assert "forwarded 6 events" in run.stderr
    messages = _receive(sock, 6)
    for m, event in zip(messages, seeded["events"], strict=True):
        assert m["host"] == b"gw-test" and m["app"] == b"mcp-gateway" and m["msgid"] == b"decision"
        assert int(m["pri"]) == 13 * 8 + (6 if event["allowed"] else 4)  # log audit; info / warning
        assert datetime.fromisoformat(m["ts"].decode()) == datetime.fromisoformat(event["timestamp"])
        assert f'decision_id="{event["decision_id"]}"'.encode() in m["sd"]
        body = json.loads(m["msg"])
        assert body["decision_id"] == event["decision_id"] and body["reasons"] == event["reasons"]
        assert "arguments" not in body and body["arguments_sha256"] == "b" * 64
    assert b'outcome="denied"' in messages[1]["sd"] and messages[1]["sd"].startswith(b"[mcpgw@32473 ")


def test_structured_data_values_are_escaped() -> None:
    event = {"decision_id": "d1", "timestamp": "2026-01-01T00:00:00+00:00", "allowed": False, "subject": 'a"]\\b'}
    m = SYSLOG.fullmatch(syslog_message(event, trail="decisions", hostname="h"))
    assert m is not None and m["sd"] == b'[mcpgw@32473 decision_id="d1" outcome="denied" subject="a\\"\\]\\\\b"]'


def test_forward_follow_picks_up_new_events_once(gatewayctl, cp: ControlPlane, udp_receiver) -> None:
    url, sock = udp_receiver
    subject = f"followed-{uuid.uuid4().hex[:8]}"
    base = datetime.now(UTC) - timedelta(minutes=5)
    first = _events(cp, subject, base, 3)
    result: dict[str, Any] = {}

    def run_forward() -> None:
        result["run"] = gatewayctl(
            "audit", "forward", "--syslog", url, "--subject", subject, "--since", base.isoformat(),
            "--follow", "--interval", "0.1", "--count", "5",
        )  # fmt: skip

    thread = threading.Thread(target=run_forward, daemon=True)
    thread.start()
    got = _receive(sock, 3)
    # a late event (older than the newest seen, within --lag) and a new one: each delivered once
    later = _events(cp, subject, base, 1, start=1000) + _events(
        cp, subject, base - timedelta(seconds=30), 1, start=2000
    )
    got += _receive(sock, 2)
    thread.join(30)
    assert not thread.is_alive() and result["run"].code == 0, result.get("run")
    ids = [json.loads(m["msg"])["decision_id"] for m in got]
    assert ids[:3] == [e["decision_id"] for e in first]
    assert sorted(ids[3:]) == sorted(e["decision_id"] for e in later)
    sock.settimeout(0.5)
    with pytest.raises(TimeoutError):
        sock.recvfrom(65535)  # nothing sent twice
