"""What a policy version's upload checks found, and the approval gate over it (pure, no I/O).

:func:`gateway.controlplane.rego.validate_policy` runs the real ``opa`` and hands its output to
:func:`read_test_results` (``opa test --format json``) and :func:`coverage_of` (``opa test --coverage
--format json``); the result, stored with the version as ``checks``, is::

    {
      "check":    {"strict": true, "capabilities_sha256": hex, "schemas": "schemas/" | null,
                   "input_schema": "decision_input" | null},
      "fmt":      {"files": [file, ...], "diff": unified diff text, "truncated": bool} (or with "error"),
      "tests":    null (no test modules) | {
                    "status": "passed" | "failed" | "error", "message": str | null,
                    "total", "passed", "failed", "errors", "skipped": int,
                    "failures": [{"name": "data.pkg.test_x", "file", "line", "kind": "fail" | "error",
                                  "message": str | null, "duration_ms": float}], "failures_truncated": bool},
      "coverage": null (no tests) | {"percent": float (0-100) | null, "covered_lines", "not_covered_lines": int,
                   "files": {file: {"percent", "covered_lines", "not_covered_lines"}}, "error"?: str}
    }

``coverage`` counts only the version's own modules (not its tests, not the gateway's reserved
Rego) and is measured only when every test passed (OPA prints no report otherwise). Source:
OPA "Policy Testing" (https://www.openpolicyagent.org/docs/policy-testing), coverage report format.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import orjson

from gateway.config import PolicyGateConfig

__all__ = [
    "MAX_FAILURES",
    "MAX_MESSAGE",
    "checks_summary",
    "coverage_not_measured",
    "coverage_of",
    "evaluate_gate",
    "gate_message",
    "read_test_results",
    "tests_not_run",
]

MAX_FAILURES = 100
"""Most failing tests stored per version (``failures_truncated`` says when more failed)."""
MAX_MESSAGE = 2000
"""Characters kept of one OPA message."""


def _clip(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 1] + "…"


def read_test_results(raw: bytes, display: Callable[[str], str], clean: Callable[[str], str] = str) -> dict[str, Any]:
    """Read ``opa test --format json`` output (a JSON array of results) into the ``tests`` shape.

    Args:
        raw: The process's stdout; empty means no tests ran.
        display: Maps OPA's file path (``policy/<file>``) to the uploaded file name.
        clean: Rewrites the file paths inside an OPA message the same way.

    Raises:
        ValueError: ``raw`` is not an array of test results.
    """
    doc = orjson.loads(raw) if raw.strip() else []
    if not isinstance(doc, list):
        raise ValueError("opa test did not print a JSON array")
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    failures: list[dict[str, Any]] = []
    for result in doc:
        if not isinstance(result, dict):
            raise ValueError("opa test printed a result that is not an object")
        if result.get("skip"):
            counts["skipped"] += 1
            continue
        error = result.get("error")
        if not result.get("fail") and not error:
            counts["passed"] += 1
            continue
        counts["errors" if error else "failed"] += 1
        loc = result.get("location") or {}
        message = None
        if isinstance(error, dict):
            code, text = str(error.get("code") or ""), str(error.get("message") or "")
            message = _clip(clean(f"{code}: {text}" if code else text))
        failures.append(
            {
                "name": f"{result.get('package', '')}.{result.get('name', '')}".lstrip("."),
                "file": display(str(loc.get("file", ""))),
                "line": int(loc.get("row", 0) or 0),
                "kind": "error" if error else "fail",
                "message": message,
                "duration_ms": round(float(result.get("duration", 0) or 0) / 1e6, 1),
            }
        )
    failures.sort(key=lambda f: (f["file"], f["line"], f["name"]))
    bad = counts["failed"] + counts["errors"]
    return {
        "status": "failed" if bad else "passed",
        "message": None,
        "total": sum(counts.values()),
        **counts,
        "failures": failures[:MAX_FAILURES],
        "failures_truncated": len(failures) > MAX_FAILURES,
    }


def tests_not_run(message: str) -> dict[str, Any]:
    """The ``tests`` shape of a run that did not complete (timed out, crashed, too much output)."""
    return {
        "status": "error",
        "message": _clip(message),
        "total": 0,
        "passed": 0,
        "failed": 0,
        "errors": 0,
        "skipped": 0,
        "failures": [],
        "failures_truncated": False,
    }


def coverage_of(report: Any, modules: Iterable[str], display: Callable[[str], str]) -> dict[str, Any]:
    """The ``coverage`` shape from an OPA coverage report, over ``modules`` only.

    ``percent`` = covered / (covered + not covered) lines of those modules, rounded to 2
    decimals; 100.0 when they have no line a test could cover.

    Raises:
        ValueError: ``report`` is not an OPA coverage report.
    """
    if not isinstance(report, dict) or not isinstance(report.get("files", {}), dict):
        raise ValueError("not an opa coverage report")
    wanted = set(modules)
    files: dict[str, dict[str, Any]] = {}
    covered = not_covered = 0
    for path, entry in (report.get("files") or {}).items():
        name = display(str(path))
        if name not in wanted or not isinstance(entry, dict):
            continue
        c, n = int(entry.get("covered_lines", 0) or 0), int(entry.get("not_covered_lines", 0) or 0)
        covered, not_covered = covered + c, not_covered + n
        files[name] = {"percent": _percent(c, n), "covered_lines": c, "not_covered_lines": n}
    return {
        "percent": _percent(covered, not_covered),
        "covered_lines": covered,
        "not_covered_lines": not_covered,
        "files": dict(sorted(files.items())),
    }


def coverage_not_measured(message: str) -> dict[str, Any]:
    """The ``coverage`` shape when no report could be taken (``percent`` null)."""
    return {"percent": None, "covered_lines": 0, "not_covered_lines": 0, "files": {}, "error": _clip(message)}


def _percent(covered: int, not_covered: int) -> float:
    total = covered + not_covered
    return 100.0 if total == 0 else round(100.0 * covered / total, 2)


def evaluate_gate(checks: Mapping[str, Any] | None, gate: PolicyGateConfig) -> dict[str, Any]:
    """Judge stored check results against the configured gate.

    A version without tests (or uploaded before checks were stored: ``checks`` None) passes
    unless ``gate.min_coverage`` > 0. With ``gate.tests_pass``, failing or erroring tests, or
    a test run that did not complete, fail it. Coverage is compared as stored (2 decimals).

    Returns:
        ``{"passed": bool, "reasons": [str, ...], "min_coverage": float (percent), "tests_pass": bool}``;
        each reason names what failed, e.g. ``"coverage 42.0 % < 80 %"``, ``"2 tests failing"``.
    """
    reasons: list[str] = []
    tests = (checks or {}).get("tests")
    if gate.tests_pass and isinstance(tests, dict):
        bad = int(tests.get("failed", 0)) + int(tests.get("errors", 0))
        if tests.get("status") == "error":
            reasons.append(f"the tests did not complete ({tests.get('message') or 'opa test failed'})")
        elif bad:
            reasons.append(f"{bad} test{'s' if bad != 1 else ''} failing")
    if gate.min_coverage > 0:
        coverage = (checks or {}).get("coverage")
        percent = coverage.get("percent") if isinstance(coverage, dict) else None
        minimum = f"{gate.min_coverage:g} %"
        if not isinstance(tests, dict):
            reasons.append(f"no tests: coverage 0 % < {minimum}")
        elif percent is None:
            reasons.append(f"coverage not measured (a test failed), minimum {minimum}")
        elif float(percent) < gate.min_coverage:
            reasons.append(f"coverage {float(percent):.1f} % < {minimum}")
    return {"passed": not reasons, "reasons": reasons, "min_coverage": gate.min_coverage, "tests_pass": gate.tests_pass}


def gate_message(version: int, gate: Mapping[str, Any]) -> str:
    """The message of a refused approval: ``policy version 7 fails the approval gate: ...``."""
    return f"policy version {version} fails the approval gate: {'; '.join(gate['reasons'])}"


def checks_summary(checks: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The list view of stored checks: counts, coverage percent and unformatted files only.

    Returns:
        None for a version uploaded before checks were stored, else
        ``{"tests": {"status", "total", "passed", "failed", "errors", "skipped"} | null,
        "coverage": {"percent"} | null, "fmt": {"files": [...]}}``.
    """
    if checks is None:
        return None
    tests = checks.get("tests")
    coverage = checks.get("coverage")
    fmt = checks.get("fmt") or {}
    return {
        "tests": None
        if not isinstance(tests, dict)
        else {k: tests.get(k) for k in ("status", "total", "passed", "failed", "errors", "skipped")},
        "coverage": None if not isinstance(coverage, dict) else {"percent": coverage.get("percent")},
        "fmt": {"files": list(fmt.get("files") or [])},
    }
