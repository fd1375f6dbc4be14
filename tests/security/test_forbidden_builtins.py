"""A policy version may call no builtin with side effects or access to the environment.

For every entry of ``gateway.policy.reserved.EXCLUDED_BUILTINS`` (a ``prefix.*`` entry
expanded over the pinned OPA's full builtin list, ``deploy/opa/capabilities.json``) one
upload calls that builtin, with the arity and argument types its declaration asks for,
so that the module would compile if the builtin were allowed. Each upload must get
400 ``policy_rejected`` whose first error has code ``gateway_forbidden_builtin`` and names
the builtin, the file and the line, and nothing may be stored. Source: OPA
"Capabilities" (``opa check --capabilities``) and the builtin declarations in that file.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from gateway.devtools.stack import LocalStack
from gateway.policy.reserved import EXCLUDED_BUILTINS

pytestmark = [pytest.mark.integration, pytest.mark.db]

FULL_CAPABILITIES = Path(__file__).resolve().parents[2] / "deploy" / "opa" / "capabilities.json"
"""Every builtin of the pinned OPA (the restricted file is derived from it)."""
FILE = "gateway/exfil.rego"
LINE = 4
"""The line of ``FILE`` that calls the builtin."""
GATEWAY_REGO = 'package gateway\n\ndefault decision := {"allow": false, "reasons": ["x"], "obligations": {}}\n'


def _builtins() -> dict[str, dict[str, Any]]:
    doc = orjson.loads(FULL_CAPABILITIES.read_bytes())
    return {b["name"]: b for b in doc["builtins"]}


def _declarations() -> dict[str, dict[str, Any]]:
    return {name: b["decl"] for name, b in _builtins().items()}


def _forbidden() -> list[str]:
    """Every builtin an entry of ``EXCLUDED_BUILTINS`` names; each entry must name at least one."""
    declared = sorted(_declarations())
    names: list[str] = []
    for entry in EXCLUDED_BUILTINS:
        matched = [n for n in declared if n.startswith(entry[:-1])] if entry.endswith(".*") else [entry]
        assert matched and all(n in declared for n in matched), f"{entry} names no builtin of the pinned OPA"
        names += matched
    return names


def _literal(decl: dict[str, Any]) -> str:
    """A Rego term of the declared type (the first alternative of a union)."""
    kind = decl.get("type")
    if "of" in decl and isinstance(decl["of"], list):
        return _literal(decl["of"][0])
    return {
        "string": '"127.0.0.1"',
        "number": "1",
        "boolean": "true",
        "null": "null",
        "object": "{}",
        "array": "[]",
        "set": "set()",
    }.get(str(kind), "input.tool")


def _module(name: str) -> str:
    """``FILE``: a rule whose body calls ``name`` on line ``LINE``."""
    decl = _declarations()[name]
    if name == "internal.print":  # what `print(...)` compiles to; it cannot be called by this name
        call = "print(input.arguments)"
    else:
        call = f"{name}({', '.join(_literal(arg) for arg in decl.get('args', []))})"
    body = f"x := {call}" if decl.get("result") is not None else f"{call}\n\tx := 1"
    return f"package gateway.exfil\n\nleak := x if {{\n\t{body}\n}}\n"


FORBIDDEN = _forbidden()


def _versions(http: httpx.Client, stack: LocalStack) -> list[dict[str, Any]]:
    resp = http.get(f"{stack.control_url}/v1/policies", headers=stack.admin_headers)
    return resp.json()["items"]  # type: ignore[no-any-return]


def _compiles_unrestricted(opa_bin: Path, tmp_path: Path, modules: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``opa check`` of ``modules`` against the pinned OPA's *full* capabilities."""
    for name, source in modules.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(source)
    argv = [str(opa_bin), "check", "--capabilities", str(FULL_CAPABILITIES), *modules]
    return subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=30, check=False)


@pytest.mark.parametrize("builtin", FORBIDDEN)
def test_an_upload_calling_a_forbidden_builtin_is_rejected_naming_it_and_the_line(
    http: httpx.Client, stack: LocalStack, opa_bin: Path, tmp_path: Path, builtin: str
) -> None:
    modules = {"gateway.rego": GATEWAY_REGO, FILE: _module(builtin)}
    unrestricted = _compiles_unrestricted(opa_bin, tmp_path, modules)
    if _builtins()[builtin].get("deprecated"):  # Rego v1 refuses deprecated builtins whatever the capabilities
        assert unrestricted.returncode != 0 and f"deprecated built-in function calls in expression: {builtin}" in (
            unrestricted.stdout + unrestricted.stderr
        )
    else:
        assert unrestricted.returncode == 0, f"the snippet must compile when {builtin} is allowed: {unrestricted}"
    before = _versions(http, stack)
    resp = http.post(f"{stack.control_url}/v1/policies", json={"modules": modules}, headers=stack.admin_headers)
    assert resp.status_code == 400, resp.text
    body = resp.json()
    assert body["error"] == "policy_rejected"
    first = body["errors"][0]
    assert first["code"] == "gateway_forbidden_builtin", body
    assert (first["builtin"], first["file"], first["line"]) == (builtin, FILE, LINE)
    assert builtin in first["message"] and builtin in body["message"] and f"{FILE}:{LINE}" in body["message"]
    assert _versions(http, stack) == before


def test_the_same_module_with_an_allowed_builtin_is_accepted(http: httpx.Client, stack: LocalStack) -> None:
    """The control: the upload's shape is accepted, so the cases above fail on the builtin alone."""
    modules = {"gateway.rego": GATEWAY_REGO, FILE: _module("sprintf")}
    resp = http.post(f"{stack.control_url}/v1/policies", json={"modules": modules}, headers=stack.admin_headers)
    assert resp.status_code == 201, resp.text
