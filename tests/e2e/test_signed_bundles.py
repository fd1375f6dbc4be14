"""Signed bundles end to end: ``gateway serve`` on a fresh run directory signs with its
development key, its OPA sidecar verifies; a tampered projection (written straight into the
database, as someone with write access to it could) is refused by the real OPA, the refusal
shows in ``GET /v1/projection``, and calls stay on the last good bundle, or fail closed once
the data plane routes with a policy version OPA could not activate."""

from __future__ import annotations

import gzip
import io
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from mcp.shared.exceptions import MCPError

from gateway.config import Config, Secret
from gateway.controlplane.bundle import read_bundle
from gateway.db import projections
from gateway.db.pool import create_pool
from gateway.devtools.stack import LocalStack, sample_policy_modules
from gateway.policy.bundle_signing import SIGNATURES_FILE, VerificationKey, dev_key_paths, verify_bundle_files
from tests.e2e.helpers import client

pytestmark = [pytest.mark.integration, pytest.mark.db, pytest.mark.anyio]

TENANT, ENV = "tenant_local", "prod"
ALLOW_ALL = 'package gateway\n\ndecision := {"allow": true, "reasons": [], "obligations": {}}\n'


def _repack(files: dict[str, bytes]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, content in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return gzip.compress(raw.getvalue())


async def _latest(conn: asyncpg.Connection) -> projections.StoredProjection:
    stored = await projections.get_projection(conn, TENANT, ENV, await projections.latest_version(conn, TENANT, ENV))
    assert stored is not None and stored.bundle is not None
    return stored


async def _insert_tampered(
    stack: LocalStack, base: int, policy_version: int | None = None, *, unsigned: bool = False
) -> int:
    """Store a new projection whose bundle is projection ``base``'s with an allow-all policy
    swapped in and its ``.signatures.json`` kept (or dropped: ``unsigned``), for
    ``policy_version`` (default ``base``'s); return its version."""
    async with create_pool(Secret(stack.database_url)) as pool, pool.acquire() as conn:
        async with conn.transaction():
            await projections.lock_compiler(conn)
            good = await projections.get_projection(conn, TENANT, ENV, base)
            assert good is not None and good.bundle is not None
            version = await projections.next_version(conn)
            policy_version = policy_version or good.policy_version
            revision = f"p{version}-pv{policy_version}"
            files = read_bundle(good.bundle or b"")
            manifest = orjson.loads(files[".manifest"])
            manifest["revision"] = revision
            files[".manifest"] = orjson.dumps(manifest, option=orjson.OPT_SORT_KEYS)
            files.update({name: ALLOW_ALL.encode() for name in files if name.startswith("policy/")})
            assert SIGNATURES_FILE in files  # the good signature rides along, unless dropped
            if unsigned:
                del files[SIGNATURES_FILE]
            blob = _repack(files)
            table = dict(good.routing_table, version=version, revision=revision, policy_version=policy_version)
            tampered = projections.StoredProjection(version, policy_version, revision, table, blob, "0" * 64)
            await projections.insert_projection(conn, TENANT, ENV, tampered)
    return version


def _wait(stack: LocalStack, ready: Callable[[dict[str, Any]], bool], timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    view: dict[str, Any] = {}
    while time.monotonic() < deadline:
        view = stack.admin("GET", "/v1/projection")
        if ready(view):
            return view
        time.sleep(0.1)
    raise TimeoutError(f"/v1/projection never got there: {view}")


async def _call(stack: LocalStack, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """Call as alice (viewer): ``{"ok": True}`` or the JSON-RPC error's ``data``."""
    token = stack.idp.mint("alice", ["viewer"], stack.audience)
    async with client(stack, token) as c:
        try:
            result = await c.call_tool(tool, arguments)
        except MCPError as exc:
            return dict(exc.error.data or {})
    assert not result.is_error
    return {"ok": True}


async def test_a_fresh_run_directory_signs_with_a_development_key_the_sidecar_trusts(stack: LocalStack) -> None:
    private, public = dev_key_paths_of(stack)
    assert private.stat().st_mode & 0o077 == 0
    async with create_pool(Secret(stack.database_url)) as pool, pool.acquire() as conn:
        stored = await _latest(conn)
    trusted = VerificationKey.from_pem(public.read_bytes())
    assert verify_bundle_files(read_bundle(stored.bundle or b""), [trusted]) == trusted.key_id
    view = stack.admin("GET", "/v1/projection")
    assert view["opa"][0]["state"] == "ok" and view["active_version"] == stored.version


def dev_key_paths_of(stack: LocalStack) -> tuple[Path, Path]:
    """The development key paths of the stack's run directory (as any plane would find them)."""
    config = Config.from_mapping(
        {
            "plane": "data",
            "run_dir": str(stack.run_dir),
            "control_plane": {"internal_token": "x"},
            "jwt": {"issuer": "https://i", "audience": "https://a", "jwks_url": "file:///j"},
            "opa": {"bin": stack.opa_bin},
        }
    )
    return dev_key_paths(config)


async def test_a_tampered_bundle_is_refused_visibly_and_calls_never_use_it(stack: LocalStack) -> None:
    good = stack.wait_projection_active()
    assert await _call(stack, "demo__echo", {"text": "before"}) == {"ok": True}
    denied = await _call(stack, "demo__create_ticket", {"title": "x", "priority": "low"})
    assert denied["category"] == "policy_denied" and denied["reasons"] == ["tool_not_read_only"]

    # 1. Same policy version (e.g. a registry change): OPA refuses the bundle and keeps the last
    #    good one; the data plane already routes with the new projection; decisions come from
    #    the last good policy, so the swapped-in allow-all never applies.
    tampered = await _insert_tampered(stack, good["active_version"])
    view = _wait(
        stack,
        lambda v: v["opa"][0]["state"] == "error" and v["data_planes"][0]["active_version"] == tampered,
    )
    opa = view["opa"][0]
    assert view["desired_version"] == tampered and view["active_version"] == good["active_version"]
    assert opa["active_version"] == good["active_version"], "OPA stays on the last good bundle"
    assert opa["code"] == "bundle_error" and "digest mismatch" in opa["message"], opa
    assert await _call(stack, "demo__echo", {"text": "still allowed"}) == {"ok": True}
    denied = await _call(stack, "demo__create_ticket", {"title": "x", "priority": "low"})
    assert denied["category"] == "policy_denied" and denied["reasons"] == ["tool_not_read_only"]
    # The same without any signature: refused as well (a signature is required, not optional).
    unsigned = await _insert_tampered(stack, good["active_version"], unsigned=True)
    view = _wait(
        stack,
        lambda v: (
            v["data_planes"][0]["active_version"] == unsigned and ".signatures.json" in str(v["opa"][0]["message"])
        ),
    )
    opa = view["opa"][0]
    assert opa["state"] == "error" and opa["active_version"] == good["active_version"], opa
    denied = await _call(stack, "demo__create_ticket", {"title": "x", "priority": "low"})
    assert denied["category"] == "policy_denied" and denied["reasons"] == ["tool_not_read_only"]

    # 2. Another policy version (an uploaded, unapproved one, as if approved): the data plane
    #    routes with a policy version OPA could not activate, so every call fails closed.
    pending = int(stack.admin("POST", "/v1/policies", {"modules": {"gateway.rego": ALLOW_ALL}})["version"])
    stale = await _insert_tampered(stack, good["active_version"], pending)
    view = _wait(stack, lambda v: v["data_planes"][0]["active_version"] == stale and v["opa"][0]["state"] == "error")
    assert view["opa"][0]["active_version"] == good["active_version"]
    for tool, arguments in (("demo__echo", {"text": "x"}), ("demo__create_ticket", {"title": "x", "priority": "low"})):
        refused = await _call(stack, tool, arguments)
        assert refused["category"] == "policy_revision_stale", refused

    # 3. A properly signed projection (a real approval) recovers.
    stack.upload_and_approve_policy(sample_policy_modules())
    view = stack.wait_projection_active()
    assert view["opa"][0]["state"] == "ok" and view["opa"][0]["message"] in (None, "")
    assert await _call(stack, "demo__echo", {"text": "after"}) == {"ok": True}
