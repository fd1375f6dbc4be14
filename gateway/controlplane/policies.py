"""Admin API for policy versions: upload (validated by opa), list, show, approve (activate + compile)."""

from __future__ import annotations

import anyio
from starlette.requests import Request
from starlette.responses import Response

from gateway.controlplane._deps import deps
from gateway.controlplane._http import MAX_BIGINT, JSONResponse, check_json_text, parse_int, read_json
from gateway.controlplane.projection import mutate_and_compile
from gateway.controlplane.rego import parse_upload, validate_policy
from gateway.db import policies as db_policies
from gateway.policy.reserved import load_reserved_modules

__all__ = ["approve_policy", "create_policy", "get_policy", "list_policies"]


def _version(request: Request) -> int:
    """The ``{version}`` path parameter: 1..2^63-1 in ASCII digits, else 400 naming ``version``."""
    return parse_int(request.path_params["version"], "version", minimum=1, maximum=MAX_BIGINT)


async def create_policy(request: Request) -> Response:
    """``POST /v1/policies`` -> 201 ``{"version", "status": "pending_approval", "files", ...}``.

    The modules are compiled with ``opa check`` together with the gateway's reserved
    modules before anything is stored; a rejected upload stores nothing (400
    ``policy_rejected`` with ``errors: [{file, line, message, code}]``).
    """
    d = deps(request)
    body = await read_json(request)
    if isinstance(body, dict):
        check_json_text(body.get("modules"), "modules")
        check_json_text(body.get("data"), "data")
    upload = parse_upload(body)
    reserved = await anyio.to_thread.run_sync(load_reserved_modules)
    await validate_policy(d.config.opa.bin, upload, reserved)
    async with d.pool.acquire() as conn:
        record = await db_policies.create_policy(
            conn, d.config.tenant, d.config.environment, modules=upload.modules, data=upload.data, sha256=upload.sha256
        )
    del record["modules"]
    return JSONResponse(record, status_code=201)


async def list_policies(request: Request) -> Response:
    """``GET /v1/policies`` -> ``{"items": [...]}`` newest first, file names without sources."""
    d = deps(request)
    async with d.pool.acquire() as conn:
        items = await db_policies.list_policies(conn, d.config.tenant, d.config.environment)
    return JSONResponse({"items": items})


async def get_policy(request: Request) -> Response:
    """``GET /v1/policies/{version}`` -> the version with ``modules`` and ``data``."""
    d = deps(request)
    async with d.pool.acquire() as conn:
        record = await db_policies.get_policy(conn, d.config.tenant, d.config.environment, _version(request))
    return JSONResponse(record)


async def approve_policy(request: Request) -> Response:
    """``POST /v1/policies/{version}/approve``: make it the active version and compile a projection.

    Approving an older (superseded) version is a rollback. Approving the version
    that is already active changes nothing and compiles nothing.
    """
    d = deps(request)
    tenant, env = d.config.tenant, d.config.environment
    version = _version(request)
    async with d.pool.acquire() as conn:
        current = await db_policies.get_policy(conn, tenant, env, version)
    if current["status"] == "active":
        del current["modules"]
        current["projection_version"] = None
        return JSONResponse(current)
    record, stored = await mutate_and_compile(
        d.pool, d.config, d.notifier, lambda conn: db_policies.activate_policy(conn, tenant, env, version)
    )
    del record["modules"]
    record["projection_version"] = stored.version
    return JSONResponse(record)
