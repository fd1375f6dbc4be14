"""``gatewayctl policies test DIR``: run a policy directory's tests locally with the ``opa`` binary.

Three runs of the real ``opa`` (never a re-implementation):

Hidden files and directories are ignored (``--ignore .*``), as ``policies push`` skips them.

1. ``opa test --format json DIR...``: one result per test (``fail``/``error``/``skip``, ``location``);
2. ``opa test --coverage --format json DIR...`` when every test passed: the coverage report;
   the coverage figure is over the policy modules only (files ending ``_test.rego`` excluded),
   ``covered / (covered + not covered)`` lines, in percent;
3. ``opa fmt --list DIR``: files ``opa fmt`` would change (a warning, never a failure).

The control plane's own checks on upload (``opa check --strict`` against the restricted
capabilities, the schemas and the gateway's reserved modules) are not repeated here: push the
directory to get them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.cli.errors import CliError, ExitCode

__all__ = ["LocalTestReport", "find_opa", "rego_files", "run_local_tests"]

OPA_TIMEOUT = 300
"""Seconds one ``opa`` run may take."""


def rego_files(directory: Path) -> list[Path]:
    """Every ``*.rego`` file below ``directory``, sorted, hidden files and directories left out."""
    out = []
    for path in sorted(directory.rglob("*.rego")):
        rel = path.relative_to(directory)
        if not any(part.startswith(".") for part in rel.parts) and path.is_file():
            out.append(path)
    return out


def find_opa(explicit: str | None) -> str:
    """The ``opa`` binary: ``explicit`` (``--opa``), else ``$OPA_BIN``, else ``opa`` on ``PATH``.

    Raises:
        CliError: (usage) none found or not executable.
    """
    candidate = explicit or os.environ.get("OPA_BIN") or shutil.which("opa")
    if not candidate:
        raise CliError("no opa binary: pass --opa PATH, set OPA_BIN, or put opa on PATH", ExitCode.USAGE)
    path = shutil.which(candidate) or candidate
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        raise CliError(f"opa binary {candidate!r} is not an executable file", ExitCode.USAGE)
    return path


@dataclass
class LocalTestReport:
    """What the local run found.

    Attributes:
        passed: Tests that passed.
        failed: Tests that failed (``fail``).
        errors: Tests that errored (``error``: e.g. a conflict or a builtin error at evaluation).
        skipped: Tests marked ``todo_`` (skipped by opa).
        failures: ``{"name": "data.pkg.test_x", "file", "line", "kind": "fail"|"error", "message"}``.
        coverage: Percent of policy-module lines covered (0-100), or None when a test failed.
        covered_lines: Covered lines of the policy modules (test files excluded).
        not_covered_lines: Not covered lines of the policy modules.
        fmt_warnings: Files ``opa fmt`` would reformat (relative to the directory).
    """

    passed: int = 0
    failed: int = 0
    errors: int = 0
    skipped: int = 0
    failures: list[dict[str, Any]] = field(default_factory=list)
    coverage: float | None = None
    covered_lines: int = 0
    not_covered_lines: int = 0
    fmt_warnings: list[str] = field(default_factory=list)

    def as_dict(self, min_coverage: float | None = None) -> dict[str, Any]:
        """The report in the control plane's ``checks`` shape (:mod:`gateway.controlplane.policy_checks`)::

        {"tests": {"status": "passed"|"failed", "total", "passed", "failed", "errors", "skipped",
                   "failures": [...]},
         "coverage": {"percent", "covered_lines", "not_covered_lines"} | null,
         "fmt": {"files": [...]},
         "gate": {"passed", "reasons", "min_coverage"} (only with ``min_coverage``)}
        """
        bad = self.failed + self.errors
        out: dict[str, Any] = {
            "tests": {
                "status": "failed" if bad else "passed",
                "total": self.passed + bad + self.skipped,
                "passed": self.passed,
                "failed": self.failed,
                "errors": self.errors,
                "skipped": self.skipped,
                "failures": self.failures,
            },
            "coverage": None
            if self.coverage is None
            else {
                "percent": self.coverage,
                "covered_lines": self.covered_lines,
                "not_covered_lines": self.not_covered_lines,
            },
            "fmt": {"files": self.fmt_warnings},
        }
        if min_coverage is not None:
            reasons = [f"{bad} test{'s' if bad != 1 else ''} failing"] if bad else []
            if self.coverage is None:
                reasons.append(f"coverage not measured (only when every test passes) < {min_coverage:g} %")
            elif self.coverage < min_coverage:
                reasons.append(f"coverage {self.coverage:.1f} % < {min_coverage:g} %")
            out["gate"] = {"passed": not reasons, "reasons": reasons, "min_coverage": min_coverage}
        return out


def _run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            argv, cwd=cwd, capture_output=True, text=True, timeout=OPA_TIMEOUT, check=False, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired:
        raise CliError(f"{argv[0]} {argv[1]} took longer than {OPA_TIMEOUT}s", ExitCode.CHECKS_FAILED) from None
    except OSError as e:
        raise CliError(f"cannot run {argv[0]}: {e.strerror}", ExitCode.USAGE) from None


def _first_line(text: str) -> str:
    return next((ln.strip() for ln in text.splitlines() if ln.strip()), "no output")


def _detail_lines(text: str, limit: int = 20) -> list[str]:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()][1:]
    return lines[:limit] + ([f"... {len(lines) - limit} more"] if len(lines) > limit else [])


def _module_coverage(report: dict[str, Any]) -> tuple[float, int, int]:
    covered = missed = 0
    for name, stats in (report.get("files") or {}).items():
        if name.endswith("_test.rego") or not isinstance(stats, dict):
            continue
        covered += int(stats.get("covered_lines") or 0)
        missed += int(stats.get("not_covered_lines") or 0)
    total = covered + missed
    return (round(100.0 * covered / total, 2) if total else 100.0), covered, missed


def run_local_tests(opa: str, directory: Path, includes: list[Path]) -> LocalTestReport:
    """Run the tests of ``directory`` (plus the ``includes`` paths, e.g. modules it imports).

    ``directory/data.json`` is mounted at ``data.gateway``, where the control plane mounts a
    policy version's data (``gatewayctl policies push`` uploads it as the version's data).

    Raises:
        CliError: (exit 5) ``opa test`` could not compile or load the files; (usage) opa missing.
    """
    data = directory / "data.json"
    if not data.is_file():
        return _run_local_tests(opa, directory, includes)
    with tempfile.TemporaryDirectory(prefix="gatewayctl-test-") as tmp:
        staged = Path(tmp) / "policy"
        for source in rego_files(directory):
            target = staged / source.relative_to(directory)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
        (staged / "gateway").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(data, staged / "gateway" / "data.json")
        return _run_local_tests(opa, staged, includes)


def _run_local_tests(opa: str, directory: Path, includes: list[Path]) -> LocalTestReport:
    paths = [str(directory.resolve())] + [str(p.resolve()) for p in includes]
    res = _run([opa, "test", "--ignore", ".*", "--format", "json", *paths], directory)
    try:
        results = json.loads(res.stdout) if res.stdout.strip() else []
    except json.JSONDecodeError:
        results = None
    if res.returncode not in (0, 2) or not isinstance(results, list):
        raise CliError(
            f"opa test could not run the tests: {_first_line(res.stderr or res.stdout)}",
            ExitCode.CHECKS_FAILED,
            _detail_lines(res.stderr or res.stdout),
        )
    report = LocalTestReport()
    base = directory.resolve()
    for r in results:
        if r.get("skip"):
            report.skipped += 1
        elif r.get("fail") or r.get("error"):
            if r.get("error"):
                report.errors += 1
            else:
                report.failed += 1
            loc = r.get("location") or {}
            file = str(loc.get("file") or "")
            try:
                file = str(Path(file).resolve().relative_to(base))
            except ValueError:
                pass
            error = r.get("error")
            message = (error.get("message") if isinstance(error, dict) else error) or None
            report.failures.append(
                {
                    "name": f"{r.get('package', '')}.{r.get('name', '')}",
                    "file": file,
                    "line": loc.get("row"),
                    "kind": "error" if error else "fail",
                    "message": message,
                }
            )
        else:
            report.passed += 1
    if report.failed + report.errors == 0:
        cov = _run([opa, "test", "--ignore", ".*", "--coverage", "--format", "json", *paths], directory)
        try:
            report.coverage, report.covered_lines, report.not_covered_lines = _module_coverage(json.loads(cov.stdout))
        except (json.JSONDecodeError, AttributeError, TypeError, ValueError):
            raise CliError(
                f"opa test --coverage failed: {_first_line(cov.stderr or cov.stdout)}", ExitCode.CHECKS_FAILED
            ) from None
    files = [str(p) for p in rego_files(base)]
    fmt = _run([opa, "fmt", "--list", *files], directory) if files else None
    if fmt is not None and fmt.returncode == 0:
        report.fmt_warnings = sorted(
            str(Path(line.strip()).resolve().relative_to(base)) for line in fmt.stdout.splitlines() if line.strip()
        )
    return report
