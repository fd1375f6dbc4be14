"""gatewayctl servers list|show|register|approve against the real registry API, in every output format."""

from __future__ import annotations

import csv
import io
import json

import pytest

from gateway.cli.errors import ExitCode
from tests.cli.conftest import ControlPlane

pytestmark = [pytest.mark.db, pytest.mark.integration]


def test_register_show_approve_list(gatewayctl, cp: ControlPlane) -> None:
    run = gatewayctl("servers", "register", "cli-demo", "--url", cp.upstream_url, "--description", "from the CLI")
    assert run.code == 0, run
    assert "registered cli-demo (pending_approval)" in run.stderr
    assert "pending_approval" in run.stdout and cp.upstream_url in run.stdout
    assert cp.admin("GET", "/v1/servers/cli-demo")["status"] == "pending_approval"

    missing = gatewayctl("servers", "approve", "cli-demo")
    assert missing.code == ExitCode.USAGE and "--comment" in missing.stderr, missing
    run = gatewayctl("servers", "approve", "cli-demo", "--comment", "tools reviewed", "--output", "json")
    assert run.code == 0, run
    approved = json.loads(run.stdout)
    assert approved["status"] == "approved" and approved["projection_version"] >= 1
    assert "echo" in approved["diff"]["added"]

    run = gatewayctl("servers", "show", "cli-demo")
    assert run.code == 0, run
    assert "approved" in run.stdout and "from the CLI" in run.stdout
    assert "pinned tools" in run.stdout and "echo" in run.stdout

    shown = json.loads(gatewayctl("servers", "show", "cli-demo", "-o", "json").stdout)
    assert shown["name"] == "cli-demo" and any(t.get("name") == "echo" for t in shown["tools"])

    # every list format carries the record
    table = gatewayctl("servers", "list")
    assert table.code == 0 and "cli-demo" in table.stdout and "streamable_http" in table.stdout, table
    items = json.loads(gatewayctl("servers", "list", "-o", "json").stdout)
    assert {"name": "cli-demo", "status": "approved"}.items() <= next(
        i for i in items if i["name"] == "cli-demo"
    ).items()
    lines = gatewayctl("servers", "list", "-o", "ndjson").stdout.splitlines()
    assert [json.loads(line)["name"] for line in lines] == [i["name"] for i in items]
    rows = list(csv.DictReader(io.StringIO(gatewayctl("servers", "list", "-o", "csv").stdout)))
    row = next(r for r in rows if r["name"] == "cli-demo")
    assert row["status"] == "approved" and row["url"] == cp.upstream_url and row["requires_credential"] == "false"


def test_register_stdio_sends_command_args_env(gatewayctl, cp: ControlPlane) -> None:
    run = gatewayctl(
        "servers",
        "register",
        "cli-stdio",
        "--command",
        "/usr/bin/env",
        "--arg",
        "python3",
        "--arg",
        "-V",
        "--env",
        "A=1",
        "--env",
        "B=x=y",
        "-o",
        "json",
    )
    assert run.code == 0, run
    record = cp.admin("GET", "/v1/servers/cli-stdio")
    assert (
        record["transport"] == "stdio" and record["command"] == "/usr/bin/env" and record["args"] == ["python3", "-V"]
    )
    assert sorted(record["env_keys"]) == ["A", "B"]
    # approving stdio without --trust-stdio is refused by the control plane: one line, exit 1
    run = gatewayctl("servers", "approve", "cli-stdio", "-m", "looks fine")
    assert run.code == ExitCode.API, run
    assert run.stderr.startswith("error: 400 bad_request: trust_stdio:")


def test_register_needs_exactly_one_of_url_and_command(gatewayctl) -> None:
    assert gatewayctl("servers", "register", "x").code == ExitCode.USAGE
    assert gatewayctl("servers", "register", "x", "--url", "http://a/mcp", "--command", "c").code == ExitCode.USAGE
    run = gatewayctl("servers", "register", "x", "--command", "c", "--env", "novalue")
    assert run.code == ExitCode.USAGE and "KEY=VALUE" in run.stderr
    run = gatewayctl("servers", "register", "Bad_Name", "--url", "http://127.0.0.1:1/mcp")
    assert run.code == ExitCode.API and "400 bad_request: name must be" in run.stderr, run


def test_a_path_argument_cannot_reach_another_route(gatewayctl) -> None:
    # "../policies" must stay one path segment (percent-encoded), never GET /v1/policies
    run = gatewayctl("servers", "show", "../policies", "-o", "json")
    assert run.code == ExitCode.API, run


def test_approve_records_the_comment(gatewayctl, cp: ControlPlane) -> None:
    assert gatewayctl("servers", "register", "cli-commented", "--url", cp.upstream_url).code == 0
    run = gatewayctl("servers", "approve", "cli-commented", "--comment", "reviewed the tools", "-o", "json")
    assert run.code == 0, run
    assert "reviewed the tools" in run.stdout  # recorded with the approval
    table = gatewayctl("servers", "approve", "cli-commented", "-m", "re-pinned after an upstream release")
    assert table.code == 0 and "approved cli-commented: projection" in table.stderr, table
