"""docs/api-adapter.md's policy example works: its Rego package, added to the sample policy's
library, is evaluated by the real ``opa`` against the bundle data the control plane compiles for
the shipped Petstore (``bundle_data`` of a compiled source), and refuses exactly a DELETE without
a change ticket."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from gateway.apiadapter.operations import Selection, compile_source
from gateway.config import PROJECT_ROOT
from gateway.controlplane.bundle import bundle_data

DOC = PROJECT_ROOT / "docs" / "api-adapter.md"
PETSTORE = PROJECT_ROOT / "tests" / "apiadapter" / "data" / "petstore-3.0.json"


def _rego_example() -> str:
    match = re.search(r"```rego\n(.*?)\n\s*```", DOC.read_text(encoding="utf-8"), re.S)
    assert match, "no rego block in docs/api-adapter.md"
    return "\n".join(line.removeprefix("   ") for line in match.group(1).splitlines()) + "\n"


def _registry_data() -> dict[str, Any]:
    compiled = compile_source(
        json.loads(PETSTORE.read_text()), selection=Selection.from_body({"exclude": {"operation_ids": ["uploadFile"]}})
    )
    server = {
        "name": "petstore",
        "transport": "openapi",
        "tools": compiled.tools,
        "api": {"operations": [op.to_record() for op in compiled.operations]},
    }
    return bundle_data(version=3, policy_version=1, revision="p3-pv1", servers=[server], policy_data=None)


def _decide(opa_bin: Path, tmp_path: Path, tool: str, annotations: dict[str, Any], claims: dict[str, Any]) -> Any:
    policies = tmp_path / "policies"
    if not policies.exists():
        shutil.copytree(PROJECT_ROOT / "policies" / "gateway", policies)
        (policies / "library" / "api_methods").mkdir()
        (policies / "library" / "api_methods" / "api_methods.rego").write_text(_rego_example())
        (tmp_path / "data.json").write_text(json.dumps(_registry_data()))
    request = {
        "action": "tools/call",
        "environment": "prod",
        "subject": {"sub": "carol", "roles": ["admin"], "claims": claims, "delegation": []},
        "server": {"name": "petstore", "transport": "openapi"},
        "tool": {"name": tool, "annotations": annotations},
        "arguments": {},
    }
    (tmp_path / "input.json").write_text(json.dumps(request))
    out = subprocess.run(
        [str(opa_bin), "eval", "--format", "raw", "--v1-compatible", "--data", str(policies)]
        + ["--data", str(tmp_path / "data.json"), "--input", str(tmp_path / "input.json"), "data.gateway.decision"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(out.stdout)


def test_the_documented_rule_refuses_a_delete_without_a_change_ticket(opa_bin: Path, tmp_path: Path) -> None:
    destructive = {"readOnlyHint": False, "destructiveHint": True, "idempotentHint": True}
    refused = _decide(opa_bin, tmp_path, "deletePet", destructive, {})
    assert refused["allow"] is False and refused["reasons"] == ["api_delete_needs_change_ticket"]
    allowed = _decide(opa_bin, tmp_path, "deletePet", destructive, {"change_ticket": "CHG-1"})
    assert allowed["allow"] is True
    read = _decide(opa_bin, tmp_path, "getPetById", {"readOnlyHint": True}, {})
    assert read["allow"] is True  # a GET of the same source is not concerned
