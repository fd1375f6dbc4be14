"""The bundle builder is deterministic and lays files out as OPA expects."""

from __future__ import annotations

import subprocess
from pathlib import Path

import orjson

from gateway.controlplane.bundle import BUNDLE_ROOTS, build_bundle, bundle_data, read_bundle
from gateway.controlplane.discovery import tool_sha256
from gateway.policy.reserved import load_reserved_modules

SERVERS = [
    {
        "name": "demo",
        "transport": "streamable_http",
        "url": "http://u/mcp",
        "description": "",
        "tools": [{"name": "echo", "inputSchema": {"type": "object"}, "annotations": {"readOnlyHint": True}}],
        "prompts": [{"name": "brief", "arguments": [{"name": "city", "required": True}]}],
        "capabilities": {"tools": {}, "prompts": {"listChanged": False}},
    }
]


def _bundle(**kw: object) -> bytes:
    args = dict(
        revision="p3-pv2",
        version=3,
        policy_version=2,
        policy_modules={"gateway.rego": 'package gateway\n\ndecision := {"allow": false}\n'},
        reserved_modules={"system/log/log.rego": "package system.log\n"},
        data=bundle_data(version=3, policy_version=2, revision="p3-pv2", servers=SERVERS, policy_data={"limits": 1}),
    )
    args.update(kw)
    return build_bundle(**args)  # type: ignore[arg-type]


def test_same_inputs_give_identical_bytes() -> None:
    assert _bundle() == _bundle()


def test_bundle_holds_manifest_data_policy_and_reserved_modules() -> None:
    files = read_bundle(_bundle())
    assert sorted(files) == [".manifest", "data.json", "policy/gateway.rego", "reserved/system/log/log.rego"]
    manifest = orjson.loads(files[".manifest"])
    assert manifest == {
        "revision": "p3-pv2",
        "roots": list(BUNDLE_ROOTS),
        "metadata": {"projection_version": 3, "policy_version": 2},
    }
    data = orjson.loads(files["data.json"])
    assert data["gateway_runtime"]["projection"] == {"version": 3, "policy_version": 2, "revision": "p3-pv2"}
    assert data["gateway_runtime"]["registry"]["servers"]["demo"] == {
        "transport": "streamable_http",
        "capabilities": ["prompts", "tools"],
        "tools": {"echo": {"annotations": {"readOnlyHint": True}}},
        "prompts": {"brief": {"arguments": ["city"]}},
    }
    assert data["gateway"] == {"limits": 1}


def test_opa_accepts_the_bundle_built_from_the_repository_reserved_modules(tmp_path: Path, opa_bin: Path) -> None:
    blob = _bundle(reserved_modules=load_reserved_modules())
    (tmp_path / "b.tar.gz").write_bytes(blob)
    out = subprocess.run(
        [str(opa_bin), "eval", "-b", str(tmp_path / "b.tar.gz"), "-f", "raw", "data.gateway_runtime.main.call"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert orjson.loads(out.stdout) == {"revision": "p3-pv2", "decision": {"allow": False}}


def test_tool_hash_is_over_canonical_json() -> None:
    assert tool_sha256({"b": 1, "a": 2}) == tool_sha256({"a": 2, "b": 1})
    assert tool_sha256({"a": 1}) != tool_sha256({"a": 2})
