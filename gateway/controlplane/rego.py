"""Validate an uploaded policy version with the real ``opa`` binary (check, parse, entrypoint)."""

from __future__ import annotations

import hashlib
import logging
import re
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import orjson

from gateway.config import MIB, SECONDS
from gateway.errors import GatewayError, PolicyRejected, RequestRejected
from gateway.policy.reserved import CAPABILITIES_FILE, excluded_reason, load_capabilities

__all__ = ["MAX_POLICY_BYTES", "PolicyUpload", "parse_upload", "validate_policy"]

log = logging.getLogger(__name__)

MAX_POLICY_BYTES = 1 * MIB
"""Upper bound on the summed UTF-8 size of all uploaded modules."""
MAX_FILES = 200
PARSE_CONCURRENCY = 8
"""Most ``opa parse`` processes run at once for one upload."""
OPA_TIMEOUT = 30 * SECONDS
"""Bound on each ``opa`` subprocess."""
_FILE_NAME = re.compile(r"^[A-Za-z0-9_./-]+\.rego$")
_UNDEFINED_FUNCTION = re.compile(r"^undefined function (?P<name>[A-Za-z0-9_.]+)$")
_USER_DIR = "policy"
_RESERVED_DIR = "reserved"


@dataclass(frozen=True)
class PolicyUpload:
    """A syntactically acceptable upload: module sources by file name, optional data."""

    modules: dict[str, str]
    data: dict[str, Any] | None

    @property
    def sha256(self) -> str:
        """Hex SHA-256 of the canonical JSON of modules and data."""
        doc = {"modules": self.modules, "data": self.data}
        return hashlib.sha256(orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)).hexdigest()


def parse_upload(body: Any) -> PolicyUpload:
    """Check the request body's shape, file names and size (no OPA yet).

    Args:
        body: The decoded JSON body ``{"modules": {"<file>.rego": "<source>"}, "data"?: {...}}``.

    Raises:
        RequestRejected: Wrong shape, bad file name (must match ``^[A-Za-z0-9_./-]+\\.rego$``,
            no ``..``, no leading ``/``), no modules, or more than 1 MiB in total.
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
        if name.endswith("_test.rego"):
            raise RequestRejected(f"{name!r}: test modules do not belong in a policy version")
        if not isinstance(source, str):
            raise RequestRejected(f"{name!r}: the module source must be a string")
        total += len(source.encode())
    if total > MAX_POLICY_BYTES:
        raise RequestRejected(f"the modules total {total} bytes; the limit is {MAX_POLICY_BYTES}")
    data = body.get("data")
    if data is not None and not isinstance(data, dict):
        raise RequestRejected('"data" must be an object')
    return PolicyUpload(modules=dict(modules), data=data)


async def validate_policy(opa_bin: str, upload: PolicyUpload, reserved_modules: Mapping[str, str]) -> None:
    """Compile the upload together with the reserved modules and check the bundle contract.

    Runs ``opa check --format json --capabilities <restricted>`` over the user modules plus
    the reserved ones (catching syntax, type and cross-module errors, and every call of a
    builtin listed in :data:`gateway.policy.reserved.EXCLUDED_BUILTINS`, reported with code
    ``gateway_forbidden_builtin``, the builtin's name and the line), then ``opa parse --format json``
    per user module to read its package and rule heads. Rejects a module outside the
    ``gateway`` package tree, a version that defines no ``data.gateway.decision``,
    and ``data`` keys that clash with rules.

    Raises:
        PolicyRejected: With ``errors`` = ``[{"file": <uploaded name>, "line": n, "message": ...}]``.
        GatewayError: The opa binary is missing, crashed or timed out (``internal_error``).
    """
    with tempfile.TemporaryDirectory(prefix="gw-policy-") as tmp:
        root = Path(tmp)
        for name, source in upload.modules.items():
            _write(root / _USER_DIR / name, source)
        for name, source in reserved_modules.items():
            _write(root / _RESERVED_DIR / name, source)
        dirs = [_USER_DIR] + ([_RESERVED_DIR] if reserved_modules else [])
        load_capabilities()  # ConfigError (500) rather than an unrestricted check when it is missing
        check = ["check", "--format", "json", "--capabilities", str(CAPABILITIES_FILE), *dirs]
        rc, out, err = await _opa(opa_bin, check, cwd=root)
        if rc != 0:
            errors = _check_errors(out, err)
            raise PolicyRejected(_summary(errors), errors=errors)
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


def _write(path: Path, source: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(source)


async def _opa(opa_bin: str, args: list[str], *, cwd: Path) -> tuple[int, bytes, bytes]:
    try:
        with anyio.fail_after(OPA_TIMEOUT):
            res = await anyio.run_process([opa_bin, *args], cwd=cwd, check=False, stdin=subprocess.DEVNULL)
    except (OSError, TimeoutError) as exc:
        log.error("running %s %s failed", opa_bin, args[0], exc_info=exc)
        raise GatewayError("policy validation is unavailable (the opa binary could not run)") from None
    return res.returncode, res.stdout, res.stderr


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
                            "message": str(e.get("message", "")),
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
