"""``gatewayctl policies push|list|show|test|diff|replay|approve|rollback`` (``/v1/policies``)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.syntax import Syntax

from gateway.cli.common import OutputOpt, RecordOutputOpt, admin_client, drop_none, handle_errors, note, seg
from gateway.cli.errors import CliError, ExitCode
from gateway.cli.localtest import find_opa, rego_files, run_local_tests
from gateway.cli.output import Output, console, err_console, render_list, render_record, say

__all__ = ["app", "read_policy_dir"]

app = typer.Typer(
    help="Policy versions: push, list, show, test, diff, replay, approve, rollback.", no_args_is_help=True
)

LIST_COLUMNS = (
    "version",
    "status",
    "sha256",
    "files",
    "tests",
    "coverage",
    "gate",
    "created_at",
    "created_by",
    "approved_at",
    "approved_by",
)
SHOW_FIELDS = (
    "version",
    "status",
    "sha256",
    "files",
    "test_files",
    "created_at",
    "created_by",
    "approved_at",
    "approved_by",
    "approval_comment",
    "projection_version",
)
MAX_FILES_IN_DIR = 1000


def read_policy_dir(directory: Path) -> dict[str, Any]:
    """The upload body of ``directory``: ``{"modules": {<relative posix path>: <source>}, "data"?: {...}}``.

    Every ``*.rego`` below ``directory`` (tests ``*_test.rego`` included; hidden files and
    directories skipped) and ``data.json`` at its top, when present.

    Raises:
        CliError: (usage) not a directory, no ``.rego`` file, unreadable file, ``data.json``
            not a JSON object.
    """
    if not directory.is_dir():
        raise CliError(f"{directory} is not a directory", ExitCode.USAGE)
    modules: dict[str, str] = {}
    for path in rego_files(directory):
        rel = path.relative_to(directory)
        if len(modules) >= MAX_FILES_IN_DIR:
            raise CliError(f"{directory}: more than {MAX_FILES_IN_DIR} .rego files", ExitCode.USAGE)
        try:
            modules[rel.as_posix()] = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise CliError(f"cannot read {path}: {getattr(e, 'strerror', None) or e}", ExitCode.USAGE) from None
    if not modules:
        raise CliError(f"{directory}: no .rego files", ExitCode.USAGE)
    body: dict[str, Any] = {"modules": modules}
    data_file = directory / "data.json"
    if data_file.is_file():
        try:
            data = json.loads(data_file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CliError(f"{data_file} is not readable JSON: {e}", ExitCode.USAGE) from None
        if not isinstance(data, dict):
            raise CliError(f"{data_file} must hold a JSON object", ExitCode.USAGE)
        body["data"] = data
    return body


def checks_of(record: dict[str, Any]) -> dict[str, Any] | None:
    """The stored check results of a policy version record (``checks``), or None when it has none."""
    checks = record.get("checks")
    return checks if isinstance(checks, dict) else None


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _failure_line(f: dict[str, Any]) -> str:
    where = f"{f.get('file')}:{f.get('line')}" if f.get("file") else ""
    kind = "ERROR" if f.get("kind") == "error" else "FAIL"
    parts = [kind, f"{where}:" if where else "", str(f.get("name") or ""), str(f.get("message") or "")]
    return " ".join(p for p in parts if p)


def tests_text(tests: Any) -> str:
    """``3/4 passed`` style summary of a ``tests`` object (``none`` when the version has no tests)."""
    if not isinstance(tests, dict):
        return "none"
    if tests.get("status") == "error":
        return "error"
    return f"{tests.get('passed', 0)}/{tests.get('total', 0)} passed"


def coverage_text(coverage: Any) -> str:
    """``87.5%`` of a ``coverage`` object; ``not measured`` or '' (no tests)."""
    if not isinstance(coverage, dict):
        return ""
    percent = coverage.get("percent")
    return f"{float(percent):.1f}%" if isinstance(percent, int | float) else "not measured"


def gate_text(gate: Any) -> str:
    """``passed`` or ``FAILED: <reasons>`` of a ``gate`` object ('' when absent)."""
    if not isinstance(gate, dict):
        return ""
    if gate.get("passed"):
        return "passed"
    return "FAILED: " + "; ".join(str(r) for r in gate.get("reasons") or [])


def render_checks(checks: dict[str, Any] | None, gate: dict[str, Any] | None = None) -> None:
    """Print check results for people (stdout).

    ``checks`` is the control plane's shape (:mod:`gateway.controlplane.policy_checks`, also
    what ``policies test DIR`` produces): ``tests`` (counts, ``failures`` with file and line),
    ``coverage`` (``percent``), ``fmt`` (``files``); ``gate`` is ``{"passed", "reasons"}``.
    """
    checks = checks or {}
    tests = checks.get("tests")
    if isinstance(tests, dict):
        counts = ", ".join(f"{tests.get(k, 0)} {k}" for k in ("passed", "failed", "errors", "skipped"))
        say(f"tests: {counts}" + (f" ({tests['message']})" if tests.get("message") else ""))
        for f in tests.get("failures") or []:
            if isinstance(f, dict):
                say(f"  {_failure_line(f)}")
        if tests.get("failures_truncated"):
            say("  (more failures not shown)")
    else:
        say("tests: none (no *_test.rego modules)")
    coverage = _dict(checks.get("coverage"))
    if coverage:
        lines = ""
        if isinstance(coverage.get("covered_lines"), int) and isinstance(coverage.get("not_covered_lines"), int):
            total = coverage["covered_lines"] + coverage["not_covered_lines"]
            lines = f" ({coverage['covered_lines']}/{total} lines)"
        say(
            f"coverage: {coverage_text(coverage)}{lines}" + (f" ({coverage['error']})" if coverage.get("error") else "")
        )
    for file in _dict(checks.get("fmt")).get("files") or []:
        say(f"fmt: {file} is not opa-fmt formatted (warning)")
    if gate:
        say(f"gate: {gate_text(gate)}")


def _show(record: dict[str, Any], output: Output, *, source: bool = False) -> None:
    if output is not Output.table:
        render_record(record, output)
        return
    render_record(record, output, SHOW_FIELDS)
    if "checks" in record:
        render_checks(checks_of(record), _dict(record.get("gate")) or None)
    replay = _dict(record.get("replay"))
    if replay:
        say(f"replay: {replay.get('sentence')} (replay {replay.get('replay_id')}, {replay.get('finished_at')})")
    if source:
        files = {**_dict(record.get("modules")), **_dict(record.get("tests"))}
        for name, text in sorted(files.items()):
            console().rule(name)
            console().print(Syntax(str(text), "rego", theme="ansi_dark", background_color="default"))
        if record.get("data") is not None:
            console().rule("data")
            say(json.dumps(record["data"], indent=2))


@app.command("push")
@handle_errors
def push(
    ctx: typer.Context,
    directory: Annotated[Path, typer.Argument(help="Directory of *.rego modules and *_test.rego tests, data.json.")],
    output: RecordOutputOpt = Output.table,
) -> None:
    """Upload a directory as a new version (POST /v1/policies); prints its version and check results."""
    body = read_policy_dir(directory)
    record = admin_client(ctx).post("/v1/policies", body)
    if output is Output.table:
        data_note = " and data.json" if "data" in body else ""
        note(f"pushed {len(body['modules'])} files{data_note} from {directory}: version {record.get('version')}")
    _show(record, output)


@app.command("list")
@handle_errors
def list_policies(ctx: typer.Context, output: OutputOpt = Output.table) -> None:
    """List policy versions, newest first (GET /v1/policies)."""
    items = admin_client(ctx).get("/v1/policies")["items"]
    if output is Output.table:
        rows = []
        for item in items:
            row = dict(item)
            row["sha256"] = str(item.get("sha256") or "")[:12]
            row["files"] = len(item.get("files") or [])
            checks = _dict(item.get("checks"))
            row["tests"] = tests_text(checks.get("tests")) if item.get("checks") is not None else ""
            row["coverage"] = coverage_text(checks.get("coverage"))
            row["gate"] = gate_text(item.get("gate"))
            rows.append(row)
        render_list(rows, output, LIST_COLUMNS)
    else:
        render_list(items, output, LIST_COLUMNS)


@app.command("show")
@handle_errors
def show(
    ctx: typer.Context,
    version: Annotated[int, typer.Argument(help="Policy version.", min=1)],
    source: Annotated[
        bool, typer.Option("--source", help="Print every module's and test's source and the data.")
    ] = False,
    output: RecordOutputOpt = Output.table,
) -> None:
    """Show one version: status, files, check results, gate (GET /v1/policies/VERSION)."""
    _show(admin_client(ctx).get(f"/v1/policies/{version}"), output, source=source)


@app.command("test")
@handle_errors
def test(
    ctx: typer.Context,
    directory: Annotated[
        Path | None, typer.Argument(help="Run this directory's tests locally with opa (no control plane).")
    ] = None,
    version: Annotated[
        int | None, typer.Option("--version", "-v", min=1, help="Show the stored check results of a pushed version.")
    ] = None,
    opa: Annotated[str | None, typer.Option("--opa", help="opa binary (default $OPA_BIN, then PATH).")] = None,
    include: Annotated[
        list[Path] | None, typer.Option("--include", help="Extra file or directory to load (repeat).")
    ] = None,
    min_coverage: Annotated[
        float | None, typer.Option(min=0, max=100, help="Exit 5 when module coverage (percent) is lower.")
    ] = None,
    output: RecordOutputOpt = Output.table,
) -> None:
    """Run a directory's Rego tests locally (opa test + coverage + fmt), or show a version's stored results.

    Locally: exit 5 when a test fails or errors, or coverage is below --min-coverage. With
    --version: the checks the control plane ran on upload and its approval gate (exit 5 when the
    gate fails).
    """
    if (directory is None) == (version is None):
        raise CliError("give a DIRECTORY (run locally) or --version N (stored results), not both", ExitCode.USAGE)
    if version is not None:
        record = admin_client(ctx).get(f"/v1/policies/{version}")
        checks, gate = checks_of(record), _dict(record.get("gate")) or None
        if checks is None:
            raise CliError(f"version {version} has no stored check results (uploaded before checks were stored)")
        if output is Output.table:
            render_checks(checks, gate)
        else:
            render_record({"version": version, "checks": checks, "gate": gate}, output)
        if gate is not None and not gate.get("passed"):
            raise typer.Exit(int(ExitCode.CHECKS_FAILED))
        return
    assert directory is not None
    if not directory.is_dir():
        raise CliError(f"{directory} is not a directory", ExitCode.USAGE)
    report = run_local_tests(find_opa(opa), directory, list(include or []))
    result = report.as_dict(min_coverage)
    if output is Output.table:
        render_checks(result, result.get("gate"))
    else:
        render_record(result, output)
    if report.failed or not _dict(result.get("gate")).get("passed", True):
        raise typer.Exit(int(ExitCode.CHECKS_FAILED))


def _print_diff(text: str) -> None:
    if text.strip():
        console().print(Syntax(text, "diff", theme="ansi_dark", background_color="default"))


@app.command("diff")
@handle_errors
def diff(
    ctx: typer.Context,
    a: Annotated[int, typer.Argument(help="From version.", min=1)],
    b: Annotated[int, typer.Argument(help="To version.", min=1)],
    output: RecordOutputOpt = Output.table,
) -> None:
    """Module-level unified diff and data diff between two versions (GET /v1/policies/A/diff/B)."""
    answer = admin_client(ctx).get(f"/v1/policies/{a}/diff/{b}")
    if output is not Output.table:
        render_record(answer, output)
        return
    for m in answer.get("modules") or []:
        if not isinstance(m, dict):
            continue
        test_note = " (test)" if m.get("test") else ""
        console().rule(f"{m.get('file')}: {m.get('status')}{test_note}")
        _print_diff(str(m.get("diff") or ""))
    data = _dict(answer.get("data"))
    if data.get("changed"):
        console().rule("data")
        say(str(data.get("text") or json.dumps(data.get("patch"), indent=2)))
    summary = _dict(answer.get("summary"))
    if summary:
        note(
            f"{a} -> {b}: "
            + ", ".join(f"{summary.get(k, 0)} {k}" for k in ("added", "removed", "changed", "unchanged"))
            + f" files; {summary.get('data_operations', 0)} data operations"
        )


def _progress_text(state: dict[str, Any]) -> str:
    done, total = state.get("done"), state.get("total")
    if done is not None and total:
        return f"{done}/{total} decisions"
    return str(state.get("status") or "")


REPLAY_FIELDS = (
    "replay_id",
    "status",
    "policy_version",
    "baseline_version",
    "since",
    "until",
    "limit",
    "total",
    "done",
    "created_by",
    "created_at",
    "finished_at",
    "error",
)
FLIP_COLUMNS = ("decision_id", "timestamp", "direction", "subject", "server", "tool", "reasons")


def _groups(summary: dict[str, Any], key: str, label: str) -> None:
    rows = [{label: k, **_dict(v)} for k, v in _dict(summary.get(key)).items()]
    render_list(rows, Output.table, (label, "allow_to_deny", "deny_to_allow"), title=f"flips by {label}")


def render_replay(state: dict[str, Any]) -> None:
    """Print a replay for people (:mod:`gateway.controlplane.replay`): its state, the summary
    sentence, flips per direction, flips grouped by tool, subject and reason, each flip with its
    decision id, and the inputs OPA could not evaluate."""
    render_record(state, Output.table, REPLAY_FIELDS)
    summary = _dict(state.get("summary"))
    if not summary:
        return
    if summary.get("sentence"):
        say(str(summary["sentence"]))
    flips = _dict(summary.get("flips"))
    say(
        f"flips: {flips.get('allow_to_deny', 0)} allow -> deny, {flips.get('deny_to_allow', 0)} deny -> allow; "
        f"{summary.get('unchanged', 0)} unchanged of {summary.get('total', 0)}"
    )
    if any(flips.values()):
        _groups(summary, "by_tool", "tool")
        _groups(summary, "by_subject", "subject")
        _groups(summary, "by_reason", "reason")
        rows = [
            {
                **f,
                "reasons": _dict(f.get("candidate" if f.get("direction") == "allow_to_deny" else "original")).get(
                    "reasons"
                ),
            }
            for f in summary.get("flipped") or []
            if isinstance(f, dict)
        ]
        render_list(rows, Output.table, FLIP_COLUMNS, title="flipped decisions")
        if summary.get("flipped_truncated"):
            note("(more flips than listed: the counts above cover all of them)")
    errors = _dict(summary.get("errors"))
    if errors.get("count"):
        render_list(
            errors.get("items") or [], Output.table, ("decision_id", "message"), title=f"{errors['count']} errors"
        )
    if summary.get("erased_fields"):
        note("masked in the decision logs (absent in replay): " + ", ".join(map(str, summary["erased_fields"])))


@app.command("replay")
@handle_errors
def replay(
    ctx: typer.Context,
    version: Annotated[int, typer.Argument(help="Candidate version to replay recorded decisions against.", min=1)],
    since: Annotated[str | None, typer.Option(help="RFC 3339: first decision time (inclusive).")] = None,
    until: Annotated[str | None, typer.Option(help="RFC 3339: last decision time (exclusive).")] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Most decisions to replay, newest first.")] = None,
    replay_id: Annotated[str | None, typer.Option("--id", help="Show (or wait for) an existing replay.")] = None,
    wait: Annotated[
        bool, typer.Option("--wait/--no-wait", help="Wait for the result (default) with a spinner.")
    ] = True,
    timeout: Annotated[float, typer.Option(min=0, help="Seconds --wait may take (exit 4 after).")] = 300.0,
    output: RecordOutputOpt = Output.table,
) -> None:
    """Re-evaluate recorded decisions against a version (POST /v1/policies/V/replay, then polls
    GET /v1/policies/V/replays/ID); prints the flips. Exit 1 when the replay failed."""
    client = admin_client(ctx)
    if replay_id is None:
        started = client.post(f"/v1/policies/{version}/replay", drop_none(since=since, until=until, limit=limit))
        replay_id = str(started["replay_id"])
        if not wait:
            if output is Output.table:
                say(replay_id)
                note(f"follow it with `gatewayctl policies replay {version} --id {replay_id}`")
            else:
                render_record(started, output)
            return
    path = f"/v1/policies/{version}/replays/{seg(replay_id)}"
    state = client.get(path)
    if wait and state.get("status") == "running":
        deadline = time.monotonic() + timeout
        with err_console().status(f"replaying {replay_id}") as spinner:
            while state.get("status") == "running":
                if time.monotonic() >= deadline:
                    raise CliError(
                        f"replay {replay_id} not finished after {timeout:g}s ({_progress_text(state)})",
                        ExitCode.TIMEOUT,
                    )
                spinner.update(f"replaying {replay_id}: {_progress_text(state)}")
                time.sleep(0.25)
                state = client.get(path)
    if output is Output.table:
        render_replay(state)
    else:
        render_record(state, output)
    if state.get("status") == "failed":
        raise CliError(f"replay {replay_id} failed: {state.get('error') or 'no reason given'}")


@app.command("replays")
@handle_errors
def replays(
    ctx: typer.Context,
    version: Annotated[int, typer.Argument(help="Policy version.", min=1)],
    output: OutputOpt = Output.table,
) -> None:
    """List a version's replays, newest first (GET /v1/policies/V/replays)."""
    items = admin_client(ctx).get(f"/v1/policies/{version}/replays")["items"]
    render_list(items, output, ("replay_id", "status", "created_at", "created_by", "total", "sentence"))


def _approve(ctx: typer.Context, version: int, comment: str, output: Output, verb: str) -> None:
    record = admin_client(ctx).post(f"/v1/policies/{version}/approve", {"comment": comment})
    if output is Output.table:
        pv = record.get("projection_version")
        note(
            f"{verb} version {version}: {record.get('status')}"
            + (f", projection {pv}" if pv is not None else " (already active: nothing compiled)")
        )
    _show(record, output)


CommentOpt = Annotated[str, typer.Option("--comment", "-m", help="Why (required; recorded with the approval).")]


@app.command("approve")
@handle_errors
def approve(
    ctx: typer.Context,
    version: Annotated[int, typer.Argument(help="Version to activate.", min=1)],
    comment: CommentOpt,
    output: RecordOutputOpt = Output.table,
) -> None:
    """Approve and activate a version (POST /v1/policies/V/approve with {"comment"})."""
    if not comment.strip():
        raise CliError("--comment must not be empty", ExitCode.USAGE)
    _approve(ctx, version, comment, output, "approved")


@app.command("rollback")
@handle_errors
def rollback(
    ctx: typer.Context,
    version: Annotated[int, typer.Argument(help="A superseded version to make active again.", min=1)],
    comment: CommentOpt,
    output: RecordOutputOpt = Output.table,
) -> None:
    """Re-activate a superseded version (an approval of an older version, with a comment)."""
    if not comment.strip():
        raise CliError("--comment must not be empty", ExitCode.USAGE)
    current = admin_client(ctx).get(f"/v1/policies/{version}")
    status = current.get("status")
    if status != "superseded":
        hint = "it is already active" if status == "active" else "use `gatewayctl policies approve` for a new version"
        raise CliError(f"version {version} is {status}, not superseded: {hint}", ExitCode.API)
    _approve(ctx, version, comment, output, "rolled back to")
