"""Validate and test an uploaded policy version with the real ``opa`` binary.

On upload (:func:`validate_policy`): ``opa check --strict`` against the restricted capabilities
and the JSON Schemas of ``schemas/``, ``opa parse`` for the bundle contract, ``opa fmt`` (a
warning only) and, when the upload carries ``*_test.rego`` modules, ``opa test`` with coverage
(:mod:`gateway.controlplane.policy_checks` reads their output).

Bounds: every ``opa`` process gets :data:`OPA_TIMEOUT` seconds, :data:`MAX_OPA_OUTPUT` bytes of
output and an empty environment; at most :data:`OPA_PROCESSES` run at once in one control-plane
process (and :data:`TEST_RUNS` test runs), however many uploads arrive together.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import logging
import re
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import orjson
from anyio.abc import ByteReceiveStream
from anyio.lowlevel import RunVar

from gateway.config import MIB, SECONDS
from gateway.controlplane.policy_checks import (
    coverage_not_measured,
    coverage_of,
    read_test_results,
    tests_not_run,
)
from gateway.errors import GatewayError, PolicyRejected, RequestRejected
from gateway.policy.reserved import CAPABILITIES_FILE, capabilities_summary, excluded_reason, load_capabilities

__all__ = [
    "MAX_POLICY_BYTES",
    "OPA_PROCESSES",
    "OPA_TIMEOUT",
    "SCHEMAS_DIR",
    "TEST_DEADLINE",
    "TEST_RUNS",
    "PolicyUpload",
    "is_test_module",
    "parse_upload",
    "validate_policy",
]

log = logging.getLogger(__name__)

MAX_POLICY_BYTES = 1 * MIB
"""Upper bound on the summed UTF-8 size of all uploaded modules (tests included)."""
MAX_FILES = 200
"""Most files (modules and tests) in one upload."""
PARSE_CONCURRENCY = 8
"""Most ``opa parse`` processes run at once for one upload."""
OPA_PROCESSES = 8
"""Most ``opa`` processes (check, parse, fmt, test) run at once in one control-plane process."""
TEST_RUNS = 2
"""Most ``opa test`` runs at once in one control-plane process (each may use every core)."""
OPA_TIMEOUT = 30 * SECONDS
"""Bound on each ``opa`` subprocess: killed after it."""
TEST_DEADLINE = 20 * SECONDS
"""``opa test --timeout``: OPA cancels the tests still running after it and reports each by name
(``eval_cancel_error``), before :data:`OPA_TIMEOUT` kills the run."""
MAX_OPA_OUTPUT = 64 * MIB
"""Bytes of stdout (and, separately, stderr) read from one ``opa`` process; more kills it."""
MAX_TEST_OUTPUT = 16 * MIB
"""The same bound for ``opa test`` runs."""
MAX_FMT_DIFF = 64 * 1024
"""Characters of ``opa fmt`` diff stored with a version (``fmt.truncated`` says when cut)."""
SCHEMAS_DIR = Path(__file__).resolve().parents[2] / "schemas"
"""The JSON Schemas policies may name in ``# METADATA`` ``schemas:`` annotations
(``schema.decision_input``, ``schema.discovery_input``; ``opa check --schema``), as in
``deploy/scripts/rego-check.sh``. Absent (a wheel install without the source tree): checks
run without schemas and ``checks.check.schemas`` is null."""
INPUT_SCHEMA = SCHEMAS_DIR / "decision_input.json"
"""Applied as the global ``input`` schema to uploads none of whose modules names a schema."""
TEST_SUFFIX = "_test.rego"
_SCHEMA_ANNOTATION = re.compile(r"^\s*#\s*schemas\s*:", re.MULTILINE)
_FILE_NAME = re.compile(r"^[A-Za-z0-9_./-]+\.rego$")
_UNDEFINED_FUNCTION = re.compile(r"^undefined function (?P<name>[A-Za-z0-9_.]+)$")
_USER_DIR = "policy"
_RESERVED_DIR = "reserved"
_DATA_DIR = "data"
_FMT_DIR = "fmt"
_PROCESSES: RunVar[anyio.CapacityLimiter] = RunVar("gateway_opa_processes")
_TESTS: RunVar[anyio.CapacityLimiter] = RunVar("gateway_opa_test_runs")


def is_test_module(name: str) -> bool:
    """True for a Rego test module (``*_test.rego``): checked and run, never bundled."""
    return name.endswith(TEST_SUFFIX)


@dataclass(frozen=True)
class PolicyUpload:
    """A syntactically acceptable upload: module sources by file name, optional data, and the
    test modules (``*_test.rego``) by file name."""

    modules: dict[str, str]
    data: dict[str, Any] | None
    tests: dict[str, str] = field(default_factory=dict)

    @property
    def sha256(self) -> str:
        """Hex SHA-256 of the canonical JSON of modules and data (and tests, when there are any)."""
        doc: dict[str, Any] = {"modules": self.modules, "data": self.data}
        if self.tests:
            doc["tests"] = self.tests
        return hashlib.sha256(orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)).hexdigest()


def parse_upload(body: Any) -> PolicyUpload:
    """Check the request body's shape, file names and size (no OPA yet).

    Files named ``*_test.rego`` are the version's tests: they go to ``tests``, not ``modules``.

    Args:
        body: The decoded JSON body ``{"modules": {"<file>.rego": "<source>"}, "data"?: {...}}``.

    Raises:
        RequestRejected: Wrong shape, bad file name (must match ``^[A-Za-z0-9_./-]+\\.rego$``,
            no ``..``, no leading ``/``), no modules besides tests, more than 200 files, or
            more than 1 MiB in total.
    """
    if not isinstance(body, dict) or set(body) - {"modules", "data"}:
        raise RequestRejected('body must be {"modules": {...}, "data"?: {...}}')
    modules = body.get("modules")
    if not isinstance(modules, dict) or not modules:
        raise RequestRejected('"modules" must be a non-empty object of file name -> Rego source')
    if len(modules) > MAX_FILES:
        raise RequestRejected(f"at most {MAX_FILES} modules per version")
    total = 0
    for name, source in modules.items():
        parts = name.split("/")
        if not _FILE_NAME.match(name) or name.startswith("/") or ".." in parts or "" in parts or "." in parts:
            raise RequestRejected(f"invalid module file name {name!r}")
        if not isinstance(source, str):
            raise RequestRejected(f"{name!r}: the module source must be a string")
        total += len(source.encode())
    if total > MAX_POLICY_BYTES:
        raise RequestRejected(f"the modules total {total} bytes; the limit is {MAX_POLICY_BYTES}")
    data = body.get("data")
    if data is not None and not isinstance(data, dict):
        raise RequestRejected('"data" must be an object')
    tests = {name: source for name, source in modules.items() if is_test_module(name)}
    policy = {name: source for name, source in modules.items() if not is_test_module(name)}
    if not policy:
        raise RequestRejected('"modules" holds only tests (*_test.rego); a version needs a policy module')
    return PolicyUpload(modules=policy, data=data, tests=tests)


async def validate_policy(opa_bin: str, upload: PolicyUpload, reserved_modules: Mapping[str, str]) -> dict[str, Any]:
    """Compile the upload with the reserved modules, check the bundle contract, then format-check
    and test it.

    1. ``opa check --strict --format json --capabilities <restricted> --schema schemas/`` over
       the user modules plus the reserved ones, without the tests (what the bundle will hold:
       a module must not depend on a test), then again with the tests. This catches syntax,
       type and cross-module errors, strict-mode errors (unused variables and imports, ...),
       and every call of a builtin listed in :data:`gateway.policy.reserved.EXCLUDED_BUILTINS`
       (code ``gateway_forbidden_builtin``, the builtin's name and the line), in tests too.
    2. When no module names a schema in a ``# METADATA`` ``schemas:`` annotation, ``opa check
       --strict --schema schemas/decision_input.json`` over the user modules: ``input`` is
       typed as the decision input, so a misspelt ``input.tol`` is an error.
    3. ``opa parse --format json`` per user module to read its package and rule heads: a module
       outside the ``gateway`` package tree, a version that defines no ``data.gateway.decision``
       and ``data`` keys that clash with rules are rejected.
    4. ``opa fmt`` over modules and tests: files it would change are a warning (``fmt``).
    5. With test modules: ``opa test --format json`` (modules, tests, reserved modules, and the
       upload's ``data`` at ``data.gateway``), then, when every test passed, ``opa test
       --coverage --format json``. Failing tests are results, not a rejection.

    Returns:
        The ``checks`` document (:mod:`gateway.controlplane.policy_checks`).

    Raises:
        PolicyRejected: Steps 1-3, with ``errors`` = ``[{"file": <uploaded name>, "line": n,
            "message": ..., "code": ...}]``.
        GatewayError: The opa binary is missing, crashed or timed out in steps 1-3 (``internal_error``).
    """
    with tempfile.TemporaryDirectory(prefix="gw-policy-") as tmp:
        root = Path(tmp)
        for name, source in {**upload.modules, **upload.tests}.items():
            _write(root / _USER_DIR / name, source)
        for name, source in reserved_modules.items():
            _write(root / _RESERVED_DIR / name, source)
        if upload.data:
            (root / _DATA_DIR / "gateway").mkdir(parents=True)
            (root / _DATA_DIR / "gateway" / "data.json").write_bytes(orjson.dumps(upload.data))
        dirs = [_USER_DIR] + ([_RESERVED_DIR] if reserved_modules else [])
        load_capabilities()  # ConfigError (500) rather than an unrestricted check when it is missing
        caps = ["--capabilities", str(CAPABILITIES_FILE)]
        schemas = ["--schema", str(SCHEMAS_DIR)] if SCHEMAS_DIR.is_dir() else []
        check = ["check", "--strict", "--format", "json", *caps, *schemas]
        await _compiles(opa_bin, [*check, "--ignore", f"*{TEST_SUFFIX}", *dirs], root)
        if upload.tests:
            await _compiles(opa_bin, [*check, *dirs], root)
        input_schema = None
        if INPUT_SCHEMA.is_file() and not any(_SCHEMA_ANNOTATION.search(s) for s in upload.modules.values()):
            global_schema = ["--schema", str(INPUT_SCHEMA), "--ignore", f"*{TEST_SUFFIX}", _USER_DIR]
            await _compiles(opa_bin, ["check", "--strict", "--format", "json", *caps, *global_schema], root)
            input_schema = INPUT_SCHEMA.stem
        parsed: dict[str, tuple[int, bytes, bytes] | GatewayError] = {}
        limiter = anyio.CapacityLimiter(PARSE_CONCURRENCY)
        async with anyio.create_task_group() as tg:
            for name in upload.modules:
                tg.start_soon(_parse_into, opa_bin, root, name, parsed, limiter)
        asts: dict[str, dict[str, Any]] = {}
        for name in sorted(parsed):
            result = parsed[name]
            if isinstance(result, GatewayError):
                raise result
            rc, out, err = result
            if rc != 0:
                errors = _check_errors(out, err)
                raise PolicyRejected(_summary(errors), errors=errors)
            asts[name] = orjson.loads(out)
        _check_contract(upload, asts)
        fmt = await _fmt(opa_bin, root, upload)
        test_args = ["--format", "json", *caps, *schemas, "--timeout", f"{TEST_DEADLINE:g}s", *dirs]
        if upload.data:
            test_args.append(_DATA_DIR)
        tests, coverage = await _tests(opa_bin, root, upload, test_args) if upload.tests else (None, None)
    return {
        "check": {
            "strict": True,
            "capabilities_sha256": capabilities_summary()["sha256"],
            "schemas": SCHEMAS_DIR.name + "/" if schemas else None,
            "input_schema": input_schema,
        },
        "fmt": fmt,
        "tests": tests,
        "coverage": coverage,
    }


async def _compiles(opa_bin: str, args: list[str], root: Path) -> None:
    rc, out, err = await _opa(opa_bin, args, cwd=root)
    if rc != 0:
        errors = _check_errors(out, err)
        raise PolicyRejected(_summary(errors), errors=errors)


async def _fmt(opa_bin: str, root: Path, upload: PolicyUpload) -> dict[str, Any]:
    """``opa fmt --write`` over a copy of modules and tests; the files it changed, with a diff."""
    sources = {**upload.modules, **upload.tests}
    for name, source in sources.items():
        _write(root / _FMT_DIR / name, source)
    run = await _run(opa_bin, ["fmt", "--write", _FMT_DIR], cwd=root, max_output=MAX_OPA_OUTPUT)
    if run.rc != 0:
        log.warning("opa fmt failed: %s", run.problem or run.err[:500])
        return {"files": [], "diff": "", "truncated": False, "error": run.problem or "opa fmt failed"}
    files, diff, truncated = [], "", False
    for name in sorted(sources):
        formatted = (root / _FMT_DIR / name).read_text()
        if formatted == sources[name]:
            continue
        files.append(name)
        if truncated:
            continue
        text = "".join(
            difflib.unified_diff(
                sources[name].splitlines(keepends=True),
                formatted.splitlines(keepends=True),
                fromfile=f"a/{name}",
                tofile=f"b/{name}",
            )
        )
        if len(diff) + len(text) > MAX_FMT_DIFF:
            truncated = True
        else:
            diff += text
    return {"files": files, "diff": diff, "truncated": truncated}


async def _tests(
    opa_bin: str, root: Path, upload: PolicyUpload, args: list[str]
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """``opa test``, then its coverage run when every test passed: (``tests``, ``coverage``)."""
    async with _limiter(_TESTS, TEST_RUNS):
        run = await _run(opa_bin, ["test", *args], cwd=root, max_output=MAX_TEST_OUTPUT)
        if run.problem:
            return tests_not_run(f"opa test {run.problem}"), None
        try:
            tests = read_test_results(run.out, _display_name, _display_paths)
        except (ValueError, orjson.JSONDecodeError):
            log.warning("opa test printed no results (rc %s): %r", run.rc, run.err[:500])
            return tests_not_run(f"opa test failed: {_first_line(run.err) or f'exit status {run.rc}'}"), None
        if tests["status"] != "passed":
            return tests, None
        run = await _run(opa_bin, ["test", "--coverage", *args], cwd=root, max_output=MAX_TEST_OUTPUT)
    if run.problem:
        return tests, coverage_not_measured(f"opa test --coverage {run.problem}")
    try:
        return tests, coverage_of(orjson.loads(run.out), upload.modules, _display_name)
    except (ValueError, orjson.JSONDecodeError):
        log.warning("opa test --coverage printed no report (rc %s): %r", run.rc, run.err[:500])
        return tests, coverage_not_measured(f"opa test --coverage failed: {_first_line(run.err) or run.rc}")


def _first_line(blob: bytes) -> str:
    lines = blob.decode(errors="replace").strip().splitlines()
    return lines[0][:500] if lines else ""


def _write(path: Path, source: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(source)


def _limiter(var: RunVar[anyio.CapacityLimiter], tokens: int) -> anyio.CapacityLimiter:
    """The event loop's limiter held in ``var`` (one per loop: a limiter is bound to its loop)."""
    try:
        return var.get()
    except LookupError:
        limiter = anyio.CapacityLimiter(tokens)
        var.set(limiter)
        return limiter


@dataclass(frozen=True)
class _Run:
    rc: int | None
    out: bytes
    err: bytes
    problem: str | None
    """Why the run did not complete (timed out, too much output), or None."""


async def _run(opa_bin: str, args: list[str], *, cwd: Path, max_output: int) -> _Run:
    """Run ``opa`` with an empty environment, bounded in time, output and concurrency.

    Raises:
        GatewayError: The binary could not be started.
    """
    async with _limiter(_PROCESSES, OPA_PROCESSES):
        try:
            proc = await anyio.open_process([opa_bin, *args], cwd=cwd, env={"HOME": str(cwd)}, stdin=subprocess.DEVNULL)
        except OSError as exc:
            log.error("running %s %s failed", opa_bin, args[0], exc_info=exc)
            raise GatewayError("policy validation is unavailable (the opa binary could not run)") from None
        overflow = False

        def kill() -> None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()

        async def drain(stream: ByteReceiveStream | None, sink: bytearray) -> None:
            nonlocal overflow
            if stream is None:
                return
            async for chunk in stream:
                if len(sink) + len(chunk) > max_output:
                    overflow = True
                    kill()
                else:
                    sink.extend(chunk)

        out, err = bytearray(), bytearray()
        try:
            with anyio.move_on_after(OPA_TIMEOUT) as scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(drain, proc.stdout, out)
                    tg.start_soon(drain, proc.stderr, err)
                await proc.wait()
        finally:
            if proc.returncode is None:
                kill()
            with anyio.CancelScope(shield=True):
                await proc.aclose()
    problem = None
    if scope.cancelled_caught:
        problem = f"did not finish within {OPA_TIMEOUT:g} s"
    elif overflow:
        problem = f"printed more than {max_output} bytes"
    return _Run(proc.returncode, bytes(out), bytes(err), problem)


async def _opa(opa_bin: str, args: list[str], *, cwd: Path) -> tuple[int, bytes, bytes]:
    run = await _run(opa_bin, args, cwd=cwd, max_output=MAX_OPA_OUTPUT)
    if run.problem or run.rc is None:
        log.error("opa %s %s", args[0], run.problem or "ended without a status")
        raise GatewayError("policy validation is unavailable (the opa binary could not run)")
    return run.rc, run.out, run.err


async def _parse_into(
    opa_bin: str,
    root: Path,
    name: str,
    parsed: dict[str, tuple[int, bytes, bytes] | GatewayError],
    limiter: anyio.CapacityLimiter,
) -> None:
    # Errors are collected, not raised, so they do not surface wrapped in an ExceptionGroup.
    try:
        async with limiter:
            parsed[name] = await _opa(opa_bin, ["parse", "--format", "json", f"{_USER_DIR}/{name}"], cwd=root)
    except GatewayError as exc:
        parsed[name] = exc


def _display_name(file: str) -> str:
    if file.startswith(f"{_USER_DIR}/"):
        return file[len(_USER_DIR) + 1 :]
    if file.startswith(f"{_RESERVED_DIR}/"):
        return f"(reserved) {file[len(_RESERVED_DIR) + 1 :]}"
    return file


_PATH_IN_TEXT = re.compile(rf"(?<![\w./-])({_USER_DIR}|{_RESERVED_DIR})/(?=[\w./-]+\.rego\b)")


def _display_paths(text: str) -> str:
    """Rewrite the working-directory paths inside an OPA message as :func:`_display_name` does."""
    return _PATH_IN_TEXT.sub(lambda m: "" if m[1] == _USER_DIR else "(reserved) ", text)


def _check_errors(out: bytes, err: bytes) -> list[dict[str, Any]]:
    for blob in (out, err):
        try:
            doc = orjson.loads(blob)
        except orjson.JSONDecodeError:
            continue
        if isinstance(doc, dict) and isinstance(doc.get("errors"), list):
            errors = []
            for e in doc["errors"]:
                loc = e.get("location") or {}
                errors.append(
                    _forbidden_builtin(
                        {
                            "file": _display_name(str(loc.get("file", ""))),
                            "line": int(loc.get("row", 0) or 0),
                            "message": _display_paths(str(e.get("message", ""))),
                            "code": str(e.get("code", "")),
                        }
                    )
                )
            return errors
    log.warning("unrecognised opa output: %r / %r", out[:500], err[:500])
    return [{"file": "", "line": 0, "message": "opa rejected the policy"}]


def _forbidden_builtin(error: dict[str, Any]) -> dict[str, Any]:
    """Name an excluded builtin (``undefined function http.send``) for what it is."""
    match = _UNDEFINED_FUNCTION.match(error["message"])
    reason = excluded_reason(match["name"]) if match else None
    if match is None or reason is None:
        return error
    return {
        **error,
        "message": f"builtin {match['name']} is not allowed in a policy version: {reason}",
        "code": "gateway_forbidden_builtin",
        "builtin": match["name"],
    }


def _summary(errors: list[dict[str, Any]]) -> str:
    first = errors[0]
    where = f"{first['file']}:{first['line']}" if first.get("file") else "policy"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {first['message']}{more}"


def _ref_path(terms: list[dict[str, Any]]) -> list[str]:
    """Leading constant segments of a ref (stops at the first variable key)."""
    path: list[str] = []
    for i, term in enumerate(terms):
        if term.get("type") == "string" or (i == 0 and term.get("type") == "var"):
            path.append(str(term["value"]))
        else:
            break
    return path


def _check_contract(upload: PolicyUpload, asts: Mapping[str, dict[str, Any]]) -> None:
    errors: list[dict[str, Any]] = []
    rule_paths: list[list[str]] = []
    for name in sorted(asts):
        ast = asts[name]
        package = _ref_path(ast.get("package", {}).get("path", []))[1:]  # drop the leading `data`
        if not package or package[0] != "gateway":
            errors.append(
                {
                    "file": name,
                    "line": 1,
                    "message": f"package {'.'.join(package) or '?'} is outside the bundle root: "
                    "use `package gateway` or a package under `gateway.`",
                    "code": "gateway_package_root",
                }
            )
            continue
        if len(package) > 1:
            rule_paths.append(package)
        for rule in ast.get("rules", []):
            head = rule.get("head", {})
            ref = head.get("ref") or ([{"type": "var", "value": head["name"]}] if head.get("name") else [])
            rule_paths.append(package + _ref_path(ref))
    if errors:
        raise PolicyRejected(_summary(errors), errors=errors)
    if not any(p[:2] == ["gateway", "decision"] for p in rule_paths):
        errors = [
            {
                "file": "",
                "line": 0,
                "message": "no rule defines data.gateway.decision (the entrypoint the gateway queries)",
                "code": "gateway_decision_missing",
            }
        ]
        raise PolicyRejected(_summary(errors), errors=errors)
    if upload.data:
        taken = {p[1] for p in rule_paths if len(p) > 1}
        clash = sorted(set(upload.data) & taken)
        if clash:
            errors = [
                {
                    "file": "",
                    "line": 0,
                    "message": f"data keys {clash} clash with rules or packages under data.gateway",
                    "code": "gateway_data_conflict",
                }
            ]
            raise PolicyRejected(_summary(errors), errors=errors)
