"""Tested policy versions: an upload's ``*_test.rego`` modules are checked and run by the real
opa on upload (strict check with the restricted capabilities and the schemas, fmt, test,
coverage); the results are stored with the version and shown, and tests never reach the bundle."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import anyio
import pytest

from gateway.config import Config
from gateway.controlplane import rego
from gateway.controlplane.bundle import read_bundle
from tests.controlplane.helpers import asgi_controlplane

pytestmark = [pytest.mark.anyio]

POLICY = """package gateway

decision := {"allow": allow, "reasons": [], "obligations": {}}

default allow := false

allow if input.action == "ping"

allow if {
	input.action == "tools/call"
	"admin" in input.subject.roles
	count(input.subject.roles) <= data.gateway.limits.max_roles
}

allow if input.action == "never/tested"
"""
"""Three allow rules; the tests below leave the last one uncovered."""

TESTS = """package gateway_test

import data.gateway

test_ping_allowed if gateway.allow with input as {"action": "ping"}

test_admin_call_allowed_within_the_data_limit if {
	gateway.allow with input as {"action": "tools/call", "subject": {"roles": ["admin"]}}
}

test_other_denied if not gateway.allow with input as {"action": "resources/read"}

todo_test_later if false
"""
"""Three passing tests (the second needs the upload's ``data``) and one skipped."""

FAILING_TESTS = """package gateway_test

import data.gateway

test_ping_allowed if gateway.allow with input as {"action": "ping"}

test_fails if gateway.allow with input as {"action": "resources/read"}

conflict := 1 if input.a

conflict := 2 if input.b

test_errors if conflict with input as {"a": true, "b": true}
"""
"""One pass, ``test_fails`` (line 7) fails, ``test_errors`` (line 13) errors with OPA's message."""

DATA = {"limits": {"max_roles": 3}}


def _upload(tests: str | None = TESTS, **extra: str) -> dict:
    modules = {"gateway.rego": POLICY, **extra}
    if tests is not None:
        modules["gateway_test.rego"] = tests
    return {"modules": modules, "data": DATA}


@pytest.mark.db
async def test_an_upload_with_passing_tests_stores_counts_and_coverage_and_its_tests_stay_out_of_the_bundle(
    cp_config: Config,
) -> None:
    async with asgi_controlplane(cp_config, opa=True) as (admin, opa, _):
        r = await admin.post("/v1/policies", json=_upload())
        assert r.status_code == 201, r.text
        created = r.json()
        assert created["files"] == ["gateway.rego"] and created["test_files"] == ["gateway_test.rego"]
        assert "modules" not in created and "tests" not in created
        assert created["created_by"] == "admin"
        checks = created["checks"]
        tests = checks["tests"]
        assert {k: tests[k] for k in ("status", "total", "passed", "failed", "errors", "skipped")} == {
            "status": "passed",
            "total": 4,
            "passed": 3,
            "failed": 0,
            "errors": 0,
            "skipped": 1,
        }
        assert tests["failures"] == []
        coverage = checks["coverage"]
        assert list(coverage["files"]) == ["gateway.rego"]  # the tests' own lines do not count
        assert coverage["not_covered_lines"] >= 1 and 0 < coverage["percent"] < 100
        assert checks["check"]["strict"] is True and checks["check"]["schemas"] == "schemas/"
        assert checks["check"]["input_schema"] == "decision_input"
        assert checks["fmt"]["files"] == []
        assert created["gate"] == {"passed": True, "reasons": [], "min_coverage": 0.0, "tests_pass": True}

        version = created["version"]
        shown = (await admin.get(f"/v1/policies/{version}")).json()
        assert shown["tests"] == {"gateway_test.rego": TESTS} and shown["modules"] == {"gateway.rego": POLICY}
        assert shown["checks"] == checks
        (item,) = (await admin.get("/v1/policies")).json()["items"]
        assert item["test_files"] == ["gateway_test.rego"] and "tests" not in item
        assert item["checks"] == {
            "tests": {"status": "passed", "total": 4, "passed": 3, "failed": 0, "errors": 0, "skipped": 1},
            "coverage": {"percent": coverage["percent"]},
            "fmt": {"files": []},
        }

        approved = await admin.post(f"/v1/policies/{version}/approve", json={"comment": "tested"})
        assert approved.status_code == 200, approved.text
        files = read_bundle((await opa.get("/v1/opa/bundles/gateway")).content)
        assert "policy/gateway.rego" in files
        assert not [name for name in files if name.endswith("_test.rego")]


@pytest.mark.db
async def test_failing_and_erroring_tests_are_stored_with_file_line_and_opa_message(cp_config: Config) -> None:
    async with asgi_controlplane(cp_config) as (admin, _, _):
        r = await admin.post("/v1/policies", json=_upload(FAILING_TESTS))
        assert r.status_code == 201, r.text  # failing tests are results, not a rejection
        tests = r.json()["checks"]["tests"]
        assert (tests["status"], tests["passed"], tests["failed"], tests["errors"]) == ("failed", 1, 1, 1)
        fail, error = tests["failures"]
        assert fail.pop("duration_ms") >= 0
        assert fail == {
            "name": "data.gateway_test.test_fails",
            "file": "gateway_test.rego",
            "line": 7,
            "kind": "fail",
            "message": None,
        }
        assert (error["name"], error["file"], error["line"], error["kind"]) == (
            "data.gateway_test.test_errors",
            "gateway_test.rego",
            13,
            "error",
        )
        assert error["message"].startswith("eval_conflict_error: rule data.gateway_test.conflict produced")
        assert "1 at gateway_test.rego:9\n" in error["message"]  # the upload's file names, not the work dir's
        assert r.json()["checks"]["coverage"] is None  # OPA reports coverage only when every test passed


@pytest.mark.db
async def test_an_unformatted_file_is_a_stored_warning_only(cp_config: Config) -> None:
    ugly = "package gateway.ugly\nlimit  :=  3\n"
    async with asgi_controlplane(cp_config) as (admin, _, _):
        r = await admin.post("/v1/policies", json=_upload(**{"lib/ugly.rego": ugly}))
        assert r.status_code == 201, r.text
        fmt = r.json()["checks"]["fmt"]
        assert fmt["files"] == ["lib/ugly.rego"]
        assert "--- a/lib/ugly.rego\n+++ b/lib/ugly.rego\n" in fmt["diff"]
        assert "-limit  :=  3\n" in fmt["diff"] and "+limit := 3\n" in fmt["diff"]
        version = r.json()["version"]
        assert (await admin.get("/v1/policies")).json()["items"][0]["checks"]["fmt"] == {"files": ["lib/ugly.rego"]}
        approved = await admin.post(f"/v1/policies/{version}/approve", json={"comment": "fmt is a warning"})
        assert approved.status_code == 200, approved.text


ANNOTATED = """# METADATA
# scope: subpackages
# schemas:
#   - input: schema.decision_input
package gateway

decision := {"allow": input.tol == "x", "reasons": [], "obligations": {}}
"""


@pytest.mark.db
@pytest.mark.parametrize(
    ("modules", "file", "line", "code"),
    [
        pytest.param(
            {"gateway.rego": POLICY, "gateway_test.rego": "package gateway_test\n\ntest_x if {\n\ty := 1\n}\n"},
            "gateway_test.rego",
            4,
            "rego_compile_error",
            id="strict-unused-var-in-a-test",
        ),
        pytest.param(
            {
                # annotated, so only the check without tests (not the global-schema one) sees it
                "gateway.rego": ANNOTATED.replace('input.tol == "x"', "helper"),
                "gateway_test.rego": "package gateway\n\nhelper := true\n\ntest_x if decision.allow\n",
            },
            "gateway.rego",
            7,
            "rego_unsafe_var_error",
            id="a-module-needing-a-test-module",
        ),
        pytest.param(
            {
                "gateway.rego": 'package gateway\n\ndecision := {"allow": input.tol == "x", "reasons": [], "obligations": {}}\n'
            },
            "gateway.rego",
            3,
            "rego_type_error",
            id="input-typed-by-the-decision-schema",
        ),
        pytest.param({"gateway.rego": ANNOTATED}, "gateway.rego", 7, "rego_type_error", id="annotated-schema"),
        pytest.param(
            {
                "gateway.rego": POLICY,
                "gateway_test.rego": 'package gateway_test\n\ntest_x if http.send({"method": "GET", "url": "http://127.0.0.1:9/"})\n',
            },
            "gateway_test.rego",
            3,
            "gateway_forbidden_builtin",
            id="forbidden-builtin-in-a-test",
        ),
    ],
)
async def test_strict_and_schema_checks_reject_modules_and_tests_with_file_and_line(
    cp_config: Config, modules: dict, file: str, line: int, code: str
) -> None:
    async with asgi_controlplane(cp_config) as (admin, _, _):
        r = await admin.post("/v1/policies", json={"modules": modules, "data": DATA})
        assert r.status_code == 400, r.text
        body = r.json()
        assert body["error"] == "policy_rejected"
        assert {k: body["errors"][0][k] for k in ("file", "line", "code")} == {"file": file, "line": line, "code": code}
        assert (await admin.get("/v1/policies")).json()["items"] == []


@pytest.mark.db
async def test_an_upload_of_tests_only_is_400(cp_config: Config) -> None:
    async with asgi_controlplane(cp_config) as (admin, _, _):
        r = await admin.post("/v1/policies", json={"modules": {"gateway_test.rego": TESTS}})
    assert r.status_code == 400 and r.json()["error"] == "bad_request" and "only tests" in r.json()["message"]


SLOW_TESTS = """package gateway_test

test_ping if data.gateway.allow with input as {"action": "ping"}

test_slow if count([1 | some i in numbers.range(1, 3000); some j in numbers.range(1, 3000); i * j == 7]) > 0
"""
"""``test_slow`` (line 5) takes about a minute and little memory; OPA's own deadline cancels it."""


@pytest.mark.db
async def test_a_test_cut_by_the_deadline_is_a_stored_error_that_fails_the_gate(
    cp_config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rego, "TEST_DEADLINE", 1.0)
    async with asgi_controlplane(cp_config) as (admin, _, _):
        with anyio.fail_after(20):
            r = await admin.post("/v1/policies", json=_upload(SLOW_TESTS))
        assert r.status_code == 201, r.text
        tests = r.json()["checks"]["tests"]
        assert (tests["passed"], tests["errors"]) == (1, 1), tests
        (slow,) = tests["failures"]
        assert (slow["name"], slow["line"]) == ("data.gateway_test.test_slow", 5)
        assert slow["message"].startswith("eval_cancel_error")
        assert slow["duration_ms"] < 3000  # cut by our deadline, not OPA's default one (5 s)
        assert r.json()["gate"] == {
            "passed": False,
            "reasons": ["1 test failing"],
            "min_coverage": 0.0,
            "tests_pass": True,
        }


async def test_an_opa_run_past_the_timeout_is_killed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sleeper = tmp_path / "sleeper"
    sleeper.write_text("#!/bin/sh\nexec /bin/sleep 30\n")
    sleeper.chmod(sleeper.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setattr(rego, "OPA_TIMEOUT", 0.5)
    with anyio.fail_after(10):
        run = await rego._run(str(sleeper), [], cwd=tmp_path, max_output=1024)
    assert run.problem == "did not finish within 0.5 s" and run.rc is not None and run.rc < 0


async def test_opa_output_beyond_the_cap_kills_the_run(opa_bin: Path, tmp_path: Path) -> None:
    run = await rego._run(str(opa_bin), ["version"], cwd=tmp_path, max_output=8)
    assert run.problem == "printed more than 8 bytes" and len(run.out) <= 8
    whole = await rego._run(str(opa_bin), ["version"], cwd=tmp_path, max_output=rego.MAX_OPA_OUTPUT)
    assert whole.problem is None and whole.rc == 0 and b"Version" in whole.out


async def test_concurrent_opa_runs_never_exceed_the_process_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A stand-in binary that fails when another copy of itself is running (mkdir is atomic).
    fake = tmp_path / "fake-opa"
    fake.write_text(
        f"#!/bin/sh\n/bin/mkdir {tmp_path}/running || exit 3\n/bin/sleep 0.2\n/bin/rmdir {tmp_path}/running\n"
    )
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setattr(rego, "OPA_PROCESSES", 1)
    codes: list[int | None] = []

    async def one() -> None:
        codes.append((await rego._run(str(fake), [], cwd=tmp_path, max_output=1024)).rc)

    async with anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(one)
    assert codes == [0, 0, 0, 0]
    assert not os.path.exists(tmp_path / "running")
