"""The reserved Rego and the restricted capabilities ship inside the package, and are required."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import orjson
import pytest

from gateway.errors import ConfigError
from gateway.policy import reserved
from gateway.policy.reserved import (
    EXCLUDED_BUILTINS,
    REQUIRED_MODULES,
    capabilities_summary,
    excluded_reason,
    load_reserved_modules,
    restrict_capabilities,
)

REPO = Path(__file__).resolve().parents[2]


def test_reserved_modules_are_read_from_the_package_not_the_source_tree() -> None:
    modules = load_reserved_modules()
    assert sorted(modules) == sorted(REQUIRED_MODULES)
    assert (
        modules["system/log/log.rego"].startswith("# METADATA")
        or "package system.log" in modules["system/log/log.rego"]
    )
    assert reserved.REGO_DIR.is_relative_to(Path(reserved.__file__).parent)


def test_reserved_modules_exclude_tests(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for rel in (*REQUIRED_MODULES, "gateway_runtime/main/main_test.rego"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("package x\n")
    monkeypatch.setattr(reserved, "REGO_DIR", tmp_path)
    assert sorted(load_reserved_modules()) == sorted(REQUIRED_MODULES)


@pytest.mark.parametrize("missing", REQUIRED_MODULES)
def test_a_missing_reserved_module_is_a_config_error(
    missing: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for rel in REQUIRED_MODULES:
        if rel != missing:
            (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / rel).write_text("package x\n")
    monkeypatch.setattr(reserved, "REGO_DIR", tmp_path)
    with pytest.raises(ConfigError, match=missing):
        reserved.require_assets()


def test_missing_capabilities_are_a_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reserved.load_capabilities.cache_clear()
    monkeypatch.setattr(reserved, "CAPABILITIES_FILE", tmp_path / "absent.json")
    try:
        with pytest.raises(ConfigError, match="capabilities"):
            reserved.require_assets()
    finally:
        monkeypatch.undo()
        reserved.load_capabilities.cache_clear()


def test_the_shipped_capabilities_are_the_pinned_ones_minus_the_excluded_builtins() -> None:
    pinned = orjson.loads((REPO / "deploy/opa/capabilities.json").read_bytes())
    shipped = orjson.loads(reserved.CAPABILITIES_FILE.read_bytes())
    assert shipped == restrict_capabilities(pinned), "regenerate: see gateway/policy/reserved.py"
    names = {b["name"] for b in shipped["builtins"]}
    pinned_names = {b["name"] for b in pinned["builtins"]}
    for forbidden in ("http.send", "opa.runtime", "net.lookup_ip_addr", "net.cidr_contains", "json.match_schema"):
        assert forbidden in pinned_names and forbidden not in names
    for forbidden in ("json.verify_schema", "rego.parse_module", "trace", "internal.print"):
        assert forbidden in pinned_names and forbidden not in names
    # what policies need stays
    assert {"rego.metadata.rule", "time.now_ns", "internal.member_2", "startswith"} <= names


@pytest.mark.parametrize(
    ("name", "excluded"),
    [
        pytest.param("http.send", True, id="http.send"),
        pytest.param("net.cidr_merge", True, id="net-prefix"),
        pytest.param("network.x", False, id="not-the-net-prefix"),
        pytest.param("json.marshal", False, id="json-pure"),
        pytest.param("trace", True, id="trace"),
    ],
)
def test_excluded_reason_matches_names_and_prefixes(name: str, excluded: bool) -> None:
    assert (excluded_reason(name) is not None) is excluded


def test_capabilities_summary_lists_what_policy_may_call() -> None:
    summary = capabilities_summary()
    assert "http.send" not in summary["allowed_builtins"]
    assert summary["allowed_builtins"] == sorted(summary["allowed_builtins"])
    assert summary["excluded_builtins"] == EXCLUDED_BUILTINS
    assert len(summary["sha256"]) == 64


def test_a_wheel_carries_the_assets_and_a_control_plane_without_them_refuses_to_start(tmp_path: Path) -> None:
    """Installed from a wheel, far from the source tree: the assets load; removed, `gateway serve` exits 2."""
    src = tmp_path / "src"  # a clean copy: no build/ directory left over from another build
    shutil.copytree(REPO / "gateway", src / "gateway", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(src)],
        check=True,
        capture_output=True,
        timeout=180,
    )
    (wheel,) = wheels.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for rel in REQUIRED_MODULES:
        assert f"gateway/policy/rego/{rel}" in names
    assert "gateway/policy/capabilities.json" in names
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(site)
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(site)}
    probe = "import gateway.policy.reserved as r; r.require_assets(); print(r.REGO_DIR)"
    out = subprocess.run([sys.executable, "-c", probe], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()).is_relative_to(site)
    (site / "gateway/policy/rego/system/log/log.rego").unlink()
    serve_env = {
        **env,
        "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none",
        "GATEWAY_ADMIN_TOKEN": "t",
        "OPA_BIN": sys.executable,  # any existing file: the check runs before OPA is used
    }
    out = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--plane", "control"],
        env=serve_env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert "system/log/log.rego missing" in out.stderr
