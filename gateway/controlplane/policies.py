"""Admin API for policy versions: upload (checked and tested by opa), list, show, diff, approve
(gated; activate + compile)."""

from __future__ import annotations

from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import Response

from gateway.config import Config
from gateway.controlplane._deps import deps
from gateway.controlplane._http import MAX_BIGINT, JSONResponse, check_json_text, parse_int, read_json
from gateway.controlplane.actor import actor_of
from gateway.controlplane.admins import approval_comment
from gateway.controlplane.middleware.admin import authorize_resource, record_change
from gateway.controlplane.policy_checks import checks_summary, evaluate_gate, gate_message
from gateway.controlplane.policy_diff import diff_versions
from gateway.controlplane.projection import mutate_and_compile
from gateway.controlplane.rego import parse_upload, validate_policy
from gateway.controlplane.replay import replay_for_approval
from gateway.db import admin as db_admin
from gateway.db import policies as db_policies
from gateway.errors import PolicyGateFailed
from gateway.policy.reserved import load_reserved_modules

__all__ = ["approve_policy", "create_policy", "diff_policies", "get_policy", "list_policies"]


def _version(request: Request, name: str = "version") -> int:
    """A version path parameter: 1..2^63-1 in ASCII digits, else 400 naming it."""
    return parse_int(request.path_params[name], name, minimum=1, maximum=MAX_BIGINT)


def _shown(record: dict[str, Any], config: Config, *, sources: bool) -> dict[str, Any]:
    """The record as the API shows it: with ``gate`` (judged now, under the configured gate);
    without ``modules`` and ``tests`` unless ``sources``."""
    record["gate"] = evaluate_gate(record.get("checks"), config.policy_gate)
    if not sources:
        record.pop("modules", None)
        record.pop("tests", None)
    return record


async def create_policy(request: Request) -> Response:
    """``POST /v1/policies`` -> 201 ``{"version", "status": "pending_approval", "files",
    "test_files", "checks", "gate", "created_by", ...}``.

    ``modules`` may include ``*_test.rego`` test modules; they are checked and run (``opa
    test`` with coverage) and stored as ``tests``, never put into the bundle. A version that
    does not compile with the reserved modules is rejected and nothing is stored (400
    ``policy_rejected`` with ``errors: [{file, line, message, code}]``); failing tests and
    unformatted files are stored as ``checks`` (:func:`gateway.controlplane.rego.validate_policy`).
    """
    d = deps(request)
    body = await read_json(request)
    if isinstance(body, dict):
        check_json_text(body.get("modules"), "modules")
        check_json_text(body.get("data"), "data")
    upload = parse_upload(body)
    reserved = await anyio.to_thread.run_sync(load_reserved_modules)
    checks = await validate_policy(d.config.opa.bin, upload, reserved)
    async with d.pool.acquire() as conn:
        record = await db_policies.create_policy(
            conn,
            d.config.tenant,
            d.config.environment,
            modules=upload.modules,
            tests=upload.tests,
            data=upload.data,
            sha256=upload.sha256,
            checks=checks,
            created_by=actor_of(request).name,
        )
    shown = _shown(record, d.config, sources=False)
    record_change(request, kind="policy_version", resource_id=str(record["version"]), after=shown)
    return JSONResponse(shown, status_code=201)


async def list_policies(request: Request) -> Response:
    """``GET /v1/policies`` -> ``{"items": [...]}`` newest first: file names without sources, a
    summary of the checks (:func:`~gateway.controlplane.policy_checks.checks_summary`) and the gate."""
    d = deps(request)
    async with d.pool.acquire() as conn:
        items = await db_policies.list_policies(conn, d.config.tenant, d.config.environment)
    for item in items:
        _shown(item, d.config, sources=False)
        item["checks"] = checks_summary(item["checks"])
    return JSONResponse({"items": items})


async def get_policy(request: Request) -> Response:
    """``GET /v1/policies/{version}`` -> the version with ``modules``, ``tests``, ``data``,
    ``checks`` (null for versions uploaded before checks were stored) and ``gate``."""
    d = deps(request)
    async with d.pool.acquire() as conn:
        record = await db_policies.get_policy(conn, d.config.tenant, d.config.environment, _version(request))
        replay = await replay_for_approval(conn, d.config.tenant, d.config.environment, record["version"])
    return JSONResponse({**_shown(record, d.config, sources=True), "replay": replay})


async def diff_policies(request: Request) -> Response:
    """``GET /v1/policies/{a}/diff/{b}`` -> what changes from version ``a`` to version ``b``
    (:func:`gateway.controlplane.policy_diff.diff_versions`); 404 when either is unknown."""
    d = deps(request)
    a, b = _version(request, "a"), _version(request, "b")
    async with d.pool.acquire() as conn:
        old = await db_policies.get_policy(conn, d.config.tenant, d.config.environment, a)
        new = await db_policies.get_policy(conn, d.config.tenant, d.config.environment, b)
    return JSONResponse(await anyio.to_thread.run_sync(diff_versions, old, new))


async def approve_policy(request: Request) -> Response:
    """``POST /v1/policies/{version}/approve``: make it the active version and compile a projection.

    Approving an older (superseded) version is a rollback. Approving the version
    that is already active changes nothing and compiles nothing. Any other version, a rollback
    target too, must pass the approval gate (``policy_gate``, judged now against the checks
    stored at upload), else 409 ``policy_gate_failed`` naming what failed and nothing changes.
    """
    d = deps(request)
    tenant, env = d.config.tenant, d.config.environment
    version = _version(request)
    comment = approval_comment(await read_json(request))
    async with d.pool.acquire() as conn:
        current = await db_policies.get_policy(conn, tenant, env, version)
    # Four-eyes: the control-plane policy decides again, now knowing who uploaded the version.
    await authorize_resource(request, kind="policy_version", resource_id=str(version), author=current["created_by"])
    if current["status"] == "active":
        current["projection_version"] = None
        return JSONResponse(_shown(current, d.config, sources=False))
    gate = evaluate_gate(current["checks"], d.config.policy_gate)
    if not gate["passed"]:
        raise PolicyGateFailed(gate_message(version, gate))
    approver = actor_of(request).name

    async def activate(conn: Any) -> dict[str, Any]:
        record: dict[str, Any] = await db_policies.activate_policy(conn, tenant, env, version)
        await db_admin.record_policy_approval(conn, tenant, env, version, approver, comment)
        return {**record, "approved_by": approver, "approval_comment": comment}

    record, stored = await mutate_and_compile(d.pool, d.config, d.notifier, activate)
    shown = _shown(record, d.config, sources=False)
    before = _shown(current, d.config, sources=False)
    record_change(request, kind="policy_version", resource_id=str(version), before=before, after=shown, comment=comment)
    shown["projection_version"] = stored.version
    return JSONResponse(shown)
