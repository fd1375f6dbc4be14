"""The approval gate: a version whose tests fail, or whose coverage is below the configured
minimum, cannot be approved (nor rolled back to); 409 ``policy_gate_failed`` says what failed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.config import Config, PolicyGateConfig
from gateway.controlplane.policy_checks import evaluate_gate
from gateway.errors import ConfigError
from tests.controlplane.helpers import asgi_controlplane, make_config
from tests.controlplane.test_policy_checks import DATA, FAILING_TESTS, POLICY, TESTS

pytestmark = [pytest.mark.anyio]

FULL_TESTS = (
    TESTS
    + """
test_the_untested_rule if data.gateway.allow with input as {"action": "never/tested"}

test_the_decision if data.gateway.decision.allow with input as {"action": "ping"}
"""
)
"""Covers every line of :data:`POLICY`."""


def _checks(*, failed: int = 0, errors: int = 0, percent: float | None = 100.0, status: str = "") -> dict[str, Any]:
    status = status or ("failed" if failed or errors else "passed")
    tests = {"status": status, "message": None, "passed": 1, "failed": failed, "errors": errors, "skipped": 0}
    if status == "error":
        tests["message"] = "opa test did not finish within 30 s"
    coverage = None if percent is None else {"percent": percent}
    return {"tests": tests, "coverage": coverage}


@pytest.mark.parametrize(
    ("checks", "gate", "reasons"),
    [
        pytest.param(_checks(), PolicyGateConfig(), [], id="passing"),
        pytest.param(None, PolicyGateConfig(), [], id="no-checks-stored"),
        pytest.param({"tests": None, "coverage": None}, PolicyGateConfig(), [], id="no-tests"),
        pytest.param(
            {"tests": None, "coverage": None},
            PolicyGateConfig(min_coverage=80),
            ["no tests: coverage 0 % < 80 %"],
            id="no-tests-with-min-coverage",
        ),
        pytest.param(_checks(failed=1, errors=1, percent=None), PolicyGateConfig(), ["2 tests failing"], id="failing"),
        pytest.param(_checks(failed=1, percent=None), PolicyGateConfig(tests_pass=False), [], id="failing-allowed"),
        pytest.param(
            _checks(status="error", percent=None),
            PolicyGateConfig(),
            ["the tests did not complete (opa test did not finish within 30 s)"],
            id="not-completed",
        ),
        pytest.param(
            _checks(percent=42.0), PolicyGateConfig(min_coverage=80), ["coverage 42.0 % < 80 %"], id="low-coverage"
        ),
        pytest.param(_checks(percent=80.0), PolicyGateConfig(min_coverage=80), [], id="coverage-at-the-minimum"),
        pytest.param(
            _checks(failed=2, percent=None),
            PolicyGateConfig(min_coverage=80),
            ["2 tests failing", "coverage not measured (a test failed), minimum 80 %"],
            id="both",
        ),
    ],
)
def test_the_gate_names_what_failed(checks: dict | None, gate: PolicyGateConfig, reasons: list[str]) -> None:
    result = evaluate_gate(checks, gate)
    assert result == {
        "passed": not reasons,
        "reasons": reasons,
        "min_coverage": gate.min_coverage,
        "tests_pass": gate.tests_pass,
    }


def test_the_gate_is_configured_by_environment_and_toml(opa_bin: Path, tmp_path: Path) -> None:
    base = {"DATABASE_URL": "postgresql://x@127.0.0.1/x", "GATEWAY_ADMIN_TOKEN": "t", "GATEWAY_PLANE": "control"}
    base["OPA_BIN"] = str(opa_bin)
    assert Config.from_env(base).policy_gate == PolicyGateConfig(min_coverage=0.0, tests_pass=True)
    env = {**base, "GATEWAY_POLICY_GATE_MIN_COVERAGE": "80", "GATEWAY_POLICY_GATE_TESTS_PASS": "false"}
    assert Config.from_env(env).policy_gate == PolicyGateConfig(min_coverage=80.0, tests_pass=False)
    toml = tmp_path / "gateway.toml"
    toml.write_text("[policy_gate]\nmin_coverage = 90.5\n")
    assert Config.from_env(base, toml_path=str(toml)).policy_gate.min_coverage == 90.5
    for bad in ("101", "-1", "nan"):
        with pytest.raises(ConfigError, match="GATEWAY_POLICY_GATE_MIN_COVERAGE"):
            Config.from_env({**base, "GATEWAY_POLICY_GATE_MIN_COVERAGE": bad})


async def _upload(admin: Any, tests: str | None) -> dict[str, Any]:
    modules = {"gateway.rego": POLICY} | ({"gateway_test.rego": tests} if tests else {})
    r = await admin.post("/v1/policies", json={"modules": modules, "data": DATA})
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


async def _approve(admin: Any, version: int) -> Any:
    return await admin.post(f"/v1/policies/{version}/approve", json={"comment": "gate test"})


@pytest.mark.db
async def test_failing_tests_block_approval_unless_the_gate_allows_them(database_url: str, opa_bin: Path) -> None:
    async with asgi_controlplane(make_config(database_url, opa_bin)) as (admin, _, _):
        failing = await _upload(admin, FAILING_TESTS)
        assert failing["gate"]["passed"] is False and failing["gate"]["reasons"] == ["2 tests failing"]
        before = (await admin.get("/v1/projection")).json()["desired_version"]
        r = await _approve(admin, failing["version"])
        assert r.status_code == 409, r.text
        assert r.json()["error"] == "policy_gate_failed"
        assert r.json()["message"] == f"policy version {failing['version']} fails the approval gate: 2 tests failing"
        shown = (await admin.get(f"/v1/policies/{failing['version']}")).json()
        assert shown["status"] == "pending_approval" and shown["gate"]["passed"] is False
        assert (await admin.get("/v1/projection")).json()["desired_version"] == before  # nothing compiled
    lenient = make_config(database_url, opa_bin, policy_gate={"tests_pass": False})
    async with asgi_controlplane(lenient) as (admin, _, _):
        r = await _approve(admin, failing["version"])
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "active" and r.json()["gate"]["passed"] is True


@pytest.mark.db
async def test_the_coverage_gate_blocks_approval_and_rollback(database_url: str, opa_bin: Path) -> None:
    async with asgi_controlplane(make_config(database_url, opa_bin)) as (admin, _, _):
        partial = await _upload(admin, TESTS)
        assert (await _approve(admin, partial["version"])).status_code == 200  # no coverage gate yet
        full = await _upload(admin, FULL_TESTS)
        untested = await _upload(admin, None)
    assert full["checks"]["coverage"]["percent"] == 100.0
    percent = partial["checks"]["coverage"]["percent"]
    assert percent < 80

    strict = make_config(database_url, opa_bin, policy_gate={"min_coverage": 80})
    async with asgi_controlplane(strict) as (admin, _, _):
        assert (await _approve(admin, full["version"])).status_code == 200
        rollback = await _approve(admin, partial["version"])  # superseded: a rollback, gated the same way
        assert rollback.status_code == 409 and rollback.json()["error"] == "policy_gate_failed"
        assert rollback.json()["message"].endswith(f"coverage {percent:.1f} % < 80 %")
        r = await _approve(admin, untested["version"])
        assert r.status_code == 409 and r.json()["message"].endswith("no tests: coverage 0 % < 80 %")
        items = {i["version"]: i for i in (await admin.get("/v1/policies")).json()["items"]}
        assert items[full["version"]]["status"] == "active"
        assert items[partial["version"]]["status"] == "superseded"
        assert items[partial["version"]]["gate"]["reasons"] == [f"coverage {percent:.1f} % < 80 %"]
        assert items[untested["version"]]["checks"]["tests"] is None
        again = await _approve(admin, full["version"])  # already active: nothing to gate or compile
        assert again.status_code == 200 and again.json()["projection_version"] is None
