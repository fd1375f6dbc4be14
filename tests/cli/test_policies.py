"""gatewayctl policies push|list|show|approve|rollback|test|diff|replay against the real policy API
(real opa validates every upload), and ``policies test DIR`` with the real opa binary."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from gateway.cli.errors import ExitCode
from gateway.cli.policies import read_policy_dir
from tests.cli.conftest import ControlPlane

pytestmark = [pytest.mark.db, pytest.mark.integration]

POLICY = """package gateway

decision := {"allow": input.tool in data.allowed_tools, "reasons": [], "obligations": {}}
"""
TESTS = """package gateway_test

import data.gateway

test_echo_allowed if gateway.decision.allow with input as {"tool": "echo"} with data.allowed_tools as ["echo"]

test_other_denied if not gateway.decision.allow with input as {"tool": "rm"} with data.allowed_tools as ["echo"]

test_marker if data.gateway.lib.marker != ""
"""


def policy_dir(root: Path, *, tests: bool = False, marker: str = "a", source: str = POLICY) -> Path:
    d = root / f"policy-{marker}"
    (d / "lib").mkdir(parents=True)
    (d / "gateway.rego").write_text(source)
    (d / "lib" / "helpers.rego").write_text(f'package gateway.lib\n\nmarker := "{marker}"\n')
    (d / ".hidden").mkdir()
    (d / ".hidden" / "ignored.rego").write_text("not rego at all")
    (d / "data.json").write_text(json.dumps({"allowed_tools": ["echo"], "marker": marker}))
    if tests:
        (d / "gateway_test.rego").write_text(TESTS)
    return d


def push(gatewayctl, d: Path) -> int:
    run = gatewayctl("policies", "push", str(d), "-o", "json")
    assert run.code == 0, run
    return int(json.loads(run.stdout)["version"])


def test_read_policy_dir_takes_modules_tests_and_data(tmp_path: Path) -> None:
    body = read_policy_dir(policy_dir(tmp_path, tests=True))
    assert sorted(body["modules"]) == ["gateway.rego", "gateway_test.rego", "lib/helpers.rego"]
    assert body["data"] == {"allowed_tools": ["echo"], "marker": "a"}


def test_push_show_list_in_every_format(gatewayctl, cp: ControlPlane, tmp_path: Path) -> None:
    run = gatewayctl("policies", "push", str(policy_dir(tmp_path, marker="show")))
    assert run.code == 0, run
    assert "pushed 2 files and data.json" in run.stderr
    assert "pending_approval" in run.stdout and "lib/helpers.rego" in run.stdout
    version = max(i["version"] for i in cp.admin("GET", "/v1/policies")["items"])
    assert str(version) in run.stdout

    stored = cp.admin("GET", f"/v1/policies/{version}")
    assert stored["data"]["marker"] == "show" and sorted(stored["modules"]) == ["gateway.rego", "lib/helpers.rego"]

    shown = gatewayctl("policies", "show", str(version))
    assert shown.code == 0 and "pending_approval" in shown.stdout and stored["sha256"] in shown.stdout, shown
    source = gatewayctl("policies", "show", str(version), "--source")
    assert 'marker := "show"' in source.stdout and '"allowed_tools"' in source.stdout, source
    assert json.loads(gatewayctl("policies", "show", str(version), "-o", "json").stdout) == stored

    table = gatewayctl("policies", "list")
    assert table.code == 0 and stored["sha256"][:12] in table.stdout, table
    items = json.loads(gatewayctl("policies", "list", "-o", "json").stdout)
    assert items == cp.admin("GET", "/v1/policies")["items"]
    lines = gatewayctl("policies", "list", "-o", "ndjson").stdout.splitlines()
    assert [json.loads(line) for line in lines] == items
    rows = list(csv.DictReader(io.StringIO(gatewayctl("policies", "list", "-o", "csv").stdout)))
    row = next(r for r in rows if r["version"] == str(version))
    assert row["status"] == "pending_approval" and json.loads(row["files"]) == ["gateway.rego", "lib/helpers.rego"]


def test_a_rejected_push_lists_file_and_line(gatewayctl, tmp_path: Path) -> None:
    broken = policy_dir(tmp_path, marker="broken", source="package gateway\n\ndecision := {\n")
    run = gatewayctl("policies", "push", str(broken))
    assert run.code == ExitCode.API, run
    first, *details = run.stderr.strip().splitlines()
    assert first.startswith("error: 400 policy_rejected: ")
    assert any(line.strip().startswith("gateway.rego:") for line in details), run.stderr


def test_push_needs_a_directory_of_rego(gatewayctl, tmp_path: Path) -> None:
    assert gatewayctl("policies", "push", str(tmp_path / "missing")).code == ExitCode.USAGE
    (tmp_path / "empty").mkdir()
    run = gatewayctl("policies", "push", str(tmp_path / "empty"))
    assert run.code == ExitCode.USAGE and "no .rego files" in run.stderr
    d = policy_dir(tmp_path, marker="baddata")
    (d / "data.json").write_text("[1]")
    assert gatewayctl("policies", "push", str(d)).code == ExitCode.USAGE


def test_approve_and_rollback(gatewayctl, cp: ControlPlane, tmp_path: Path) -> None:
    first = push(gatewayctl, policy_dir(tmp_path, marker="one"))
    second = push(gatewayctl, policy_dir(tmp_path, marker="two"))

    missing = gatewayctl("policies", "approve", str(first))
    assert missing.code == ExitCode.USAGE and "--comment" in missing.stderr, missing
    assert gatewayctl("policies", "approve", str(first), "--comment", "  ").code == ExitCode.USAGE

    run = gatewayctl("policies", "approve", str(first), "--comment", "first cut")
    assert run.code == 0, run
    assert f"approved version {first}: active, projection" in run.stderr
    run = gatewayctl("policies", "approve", str(second), "-m", "second cut", "-o", "json")
    assert run.code == 0 and json.loads(run.stdout)["status"] == "active", run
    assert cp.admin("GET", f"/v1/policies/{first}")["status"] == "superseded"

    # rollback only takes a superseded version
    refused = gatewayctl("policies", "rollback", str(second), "-m", "no-op")
    assert refused.code == ExitCode.API and "is active, not superseded" in refused.stderr, refused
    run = gatewayctl("policies", "rollback", str(first), "--comment", "second cut broke echo")
    assert run.code == 0, run
    assert f"rolled back to version {first}: active" in run.stderr
    assert cp.admin("GET", f"/v1/policies/{first}")["status"] == "active"
    assert cp.admin("GET", f"/v1/policies/{second}")["status"] == "superseded"

    assert gatewayctl("policies", "approve", "999999999", "-m", "x").code == ExitCode.API


# ------------------------------------------------------------------ policies test DIR (local opa)
def test_local_test_passes_with_coverage(gatewayctl, tmp_path: Path, opa_bin: Path) -> None:
    d = policy_dir(tmp_path, tests=True, marker="local")
    run = gatewayctl("policies", "test", str(d), "--opa", str(opa_bin))
    assert run.code == 0, run
    assert "tests: 3 passed, 0 failed, 0 errors, 0 skipped" in run.stdout
    assert "coverage: 100.0% (2/2 lines)" in run.stdout
    report = json.loads(gatewayctl("policies", "test", str(d), "--opa", str(opa_bin), "-o", "json").stdout)
    assert report == {
        "tests": {"status": "passed", "total": 3, "passed": 3, "failed": 0, "errors": 0, "skipped": 0, "failures": []},
        "coverage": {"percent": 100.0, "covered_lines": 2, "not_covered_lines": 0},
        "fmt": {"files": []},
    }


def test_local_test_failures_name_file_and_line_and_exit_5(gatewayctl, tmp_path: Path, opa_bin: Path) -> None:
    d = policy_dir(tmp_path, tests=True, marker="fails")
    (d / "gateway_test.rego").write_text(TESTS.replace('{"tool": "rm"}', '{"tool": "echo"}'))
    run = gatewayctl("policies", "test", str(d), "--opa", str(opa_bin))
    assert run.code == ExitCode.CHECKS_FAILED, run
    assert "tests: 2 passed, 1 failed" in run.stdout
    assert "FAIL gateway_test.rego:7: data.gateway_test.test_other_denied" in run.stdout
    csv_run = gatewayctl("policies", "test", str(d), "--opa", str(opa_bin), "-o", "csv")
    (row,) = csv.DictReader(io.StringIO(csv_run.stdout))
    tests = json.loads(row["tests"])
    assert tests["failed"] == 1 and tests["failures"][0]["line"] == 7 and row["coverage"] == ""


def test_local_test_coverage_gate_and_fmt_warning(gatewayctl, tmp_path: Path, opa_bin: Path) -> None:
    d = policy_dir(tmp_path, tests=True, marker="cov")
    (d / "extra.rego").write_text("package gateway.extra\n\nunused if {\n  input.x == 1\n}\n")  # untested, unformatted
    run = gatewayctl("policies", "test", str(d), "--opa", str(opa_bin), "--min-coverage", "90", "-o", "ndjson")
    assert run.code == ExitCode.CHECKS_FAILED, run
    report = json.loads(run.stdout)
    assert report["tests"]["failed"] == 0 and report["coverage"]["percent"] < 90
    assert report["fmt"] == {"files": ["extra.rego"]}
    assert report["gate"]["passed"] is False and report["gate"]["reasons"][0].startswith("coverage ")
    table = gatewayctl("policies", "test", str(d), "--opa", str(opa_bin), "--min-coverage", "10")
    assert table.code == 0, table
    assert "fmt: extra.rego is not opa-fmt formatted (warning)" in table.stdout and "gate: passed" in table.stdout


def test_local_test_usage_errors(gatewayctl, tmp_path: Path) -> None:
    d = policy_dir(tmp_path, marker="usage")
    assert gatewayctl("policies", "test").code == ExitCode.USAGE
    assert gatewayctl("policies", "test", str(d), "--version", "1").code == ExitCode.USAGE
    run = gatewayctl("policies", "test", str(d), "--opa", str(tmp_path / "no-opa"))
    assert run.code == ExitCode.USAGE and "not an executable file" in run.stderr, run
    (d / "bad_test.rego").write_text("package x\n\ntest_x if {\n")
    run = gatewayctl("policies", "test", str(d), "--opa", "opa", env={"PATH": str(tmp_path)})
    assert run.code == ExitCode.USAGE, run


def test_local_test_a_compile_error_exits_5(gatewayctl, tmp_path: Path, opa_bin: Path) -> None:
    d = policy_dir(tmp_path, marker="compile")
    (d / "bad_test.rego").write_text("package x\n\ntest_x if {\n")
    run = gatewayctl("policies", "test", str(d), "--opa", str(opa_bin))
    assert run.code == ExitCode.CHECKS_FAILED and "opa test could not run the tests" in run.stderr, run


# ------------------------------------------------------------------ contracts other helpers deliver
def test_push_with_tests_prints_the_check_results(gatewayctl, cp: ControlPlane, tmp_path: Path) -> None:
    run = gatewayctl("policies", "push", str(policy_dir(tmp_path, tests=True, marker="checked")))
    assert run.code == 0, run
    assert "tests: 3 passed, 0 failed, 0 errors, 0 skipped" in run.stdout
    assert "coverage: 100.0% (2/2 lines)" in run.stdout and "gate: passed" in run.stdout
    assert "gateway_test.rego" in run.stdout  # test_files
    version = max(i["version"] for i in cp.admin("GET", "/v1/policies")["items"])

    listed = gatewayctl("policies", "list")
    assert any(
        str(version) in line and "3/3 passed" in line and "100.0%" in line for line in listed.stdout.splitlines()
    )

    stored = gatewayctl("policies", "test", "--version", str(version))
    assert stored.code == 0 and "tests: 3 passed" in stored.stdout and "gate: passed" in stored.stdout, stored
    as_json = json.loads(gatewayctl("policies", "test", "--version", str(version), "-o", "json").stdout)
    assert as_json["checks"]["tests"]["passed"] == 3 and as_json["gate"]["passed"] is True
    source = gatewayctl("policies", "show", str(version), "--source").stdout
    assert "test_other_denied" in source  # the stored tests are shown with the modules


def test_failing_tests_are_stored_with_file_and_line_and_fail_the_gate(
    gatewayctl, cp: ControlPlane, tmp_path: Path
) -> None:
    d = policy_dir(tmp_path, tests=True, marker="failing")
    (d / "gateway_test.rego").write_text(TESTS.replace('{"tool": "rm"}', '{"tool": "echo"}'))
    run = gatewayctl("policies", "push", str(d))
    assert run.code == 0, run
    assert "tests: 2 passed, 1 failed" in run.stdout
    assert "FAIL gateway_test.rego:7: data.gateway_test.test_other_denied" in run.stdout
    assert "gate: FAILED: 1 test failing" in run.stdout
    version = max(i["version"] for i in cp.admin("GET", "/v1/policies")["items"])
    stored = gatewayctl("policies", "test", "--version", str(version))
    assert stored.code == ExitCode.CHECKS_FAILED and "gate: FAILED" in stored.stdout, stored
    refused = gatewayctl("policies", "approve", str(version), "-m", "ship it anyway")
    assert refused.code == ExitCode.API and refused.stderr.startswith("error: 409 policy_gate_failed"), refused


def test_diff_shows_module_and_data_changes(gatewayctl, tmp_path: Path) -> None:
    a = push(gatewayctl, policy_dir(tmp_path, marker="diffa"))
    b = push(gatewayctl, policy_dir(tmp_path, tests=True, marker="diffb"))
    run = gatewayctl("policies", "diff", str(a), str(b))
    assert run.code == 0, run
    assert '-marker := "diffa"' in run.stdout and '+marker := "diffb"' in run.stdout
    assert "lib/helpers.rego: changed" in run.stdout and "gateway_test.rego: added (test)" in run.stdout
    assert "/marker" in run.stdout and "diffb" in run.stdout  # the data diff
    assert f"{a} -> {b}: 1 added, 0 removed, 1 changed, 1 unchanged files; 1 data operations" in run.stderr
    answer = json.loads(gatewayctl("policies", "diff", str(a), str(b), "-o", "json").stdout)
    assert answer["from"] == a and answer["to"] == b and answer["data"]["changed"] is True
    same = gatewayctl("policies", "diff", str(a), str(a))
    assert same.code == 0 and "0 changed" in same.stderr, same
    assert gatewayctl("policies", "diff", str(a), "999999999").code == ExitCode.API


def test_replay_without_recorded_decisions(gatewayctl, tmp_path: Path) -> None:
    # the test control plane has no data plane, so nothing was recorded: a replay of nothing
    v = push(gatewayctl, policy_dir(tmp_path, marker="replay"))
    run = gatewayctl("policies", "replay", str(v), "--since", "2026-01-01T00:00:00Z", "--limit", "100")
    assert run.code == 0, run
    assert "done" in run.stdout and "0 recorded decisions replayed" in run.stdout
    assert "flips: 0 allow -> deny, 0 deny -> allow; 0 unchanged of 0" in run.stdout
    run = gatewayctl("policies", "replay", str(v), "--until", "2020-01-01T00:00:00Z", "--since", "2021-01-01T00:00:00Z")
    assert run.code == ExitCode.API and "400 bad_request" in run.stderr, run


def test_local_tests_see_data_json_where_the_control_plane_mounts_it(gatewayctl, tmp_path, opa_bin) -> None:
    (tmp_path / "p.rego").write_text("package gateway.limits\n\nmax_n := data.gateway.rules.max_n\n")
    (tmp_path / "p_test.rego").write_text(
        "package gateway.limits_test\n\nimport data.gateway.limits\n\ntest_max_n_from_data if limits.max_n == 7\n"
    )
    (tmp_path / "data.json").write_text('{"rules": {"max_n": 7}}')
    run = gatewayctl("policies", "test", str(tmp_path), "--opa", str(opa_bin), "-o", "json")
    assert run.code == 0, run
    assert json.loads(run.stdout)["tests"]["passed"] == 1
