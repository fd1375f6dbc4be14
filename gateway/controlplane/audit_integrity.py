"""Admin API of the trail's tamper evidence and volume (docs/audit-integrity.md).

* ``GET /v1/audit/verify?since=&until=`` -> the verification report
  (:func:`gateway.db.audit_verify.verify_chains`): ``{"intact", "message": "intact, N records" |
  "broken: ...", "records", "streams", "partitions", "dropped_partitions", "unprotected_records",
  "checkpoint", "first_break"}``; ``since``/``until`` (RFC 3339) pick the partitions overlapping
  the range (whole partitions are verified: the chains are per partition).
* ``GET /v1/audit/checkpoints?limit=`` -> ``{"items": [{id, created_at, key_id, body, signature
  (hex)}], "keys": {key_id: PEM}}`` newest first, with the trusted public keys, so a reviewer can
  check signatures offline (Ed25519 over the exact ``body`` bytes).
* ``POST /v1/audit/checkpoints`` -> 201 the new checkpoint (signed now even if nothing moved).
* ``GET /v1/audit/partitions`` -> ``{"items": [{stream, name, lower, upper, dropped_at}],
  "interval", "retention_days"}``.
* ``POST /v1/audit/retention`` -> ``{"dropped": [partition ...]}``: apply retention now.
"""

from __future__ import annotations

from datetime import UTC, datetime

from starlette.requests import Request
from starlette.responses import Response

from gateway.controlplane._deps import deps
from gateway.controlplane._http import JSONResponse, parse_int, parse_rfc3339
from gateway.db.audit_partitions import describe, list_partitions
from gateway.db.audit_verify import list_checkpoints, verify_chains
from gateway.errors import RequestRejected

__all__ = ["apply_retention", "create_checkpoint", "get_checkpoints", "get_partitions", "verify"]


def _range(request: Request) -> tuple[datetime | None, datetime | None]:
    since, until = request.query_params.get("since"), request.query_params.get("until")
    lower = parse_rfc3339(since, field="since") if since else None
    upper = parse_rfc3339(until, field="until") if until else None
    if lower is not None and upper is not None and upper <= lower:
        raise RequestRejected("until must be later than since")
    return lower, upper


async def verify(request: Request) -> Response:
    """``GET /v1/audit/verify`` (module docstring)."""
    d = deps(request)
    since, until = _range(request)
    report = await verify_chains(
        d.pool,
        d.config.tenant,
        d.config.environment,
        since=since,
        until=until,
        check_signature=d.audit.keys.verify,
    )
    return JSONResponse(report)


async def get_checkpoints(request: Request) -> Response:
    """``GET /v1/audit/checkpoints`` (module docstring)."""
    d = deps(request)
    limit = parse_int(request.query_params.get("limit"), "limit", default=20, minimum=1, maximum=500)
    items = await list_checkpoints(d.pool, d.config.tenant, d.config.environment, limit)
    return JSONResponse({"items": [c.describe() for c in items], "keys": d.audit.keys.public_pems()})


async def create_checkpoint(request: Request) -> Response:
    """``POST /v1/audit/checkpoints`` (module docstring)."""
    d = deps(request)
    checkpoint = await d.audit.checkpoint(d.pool, force=True)
    assert checkpoint is not None  # forced
    return JSONResponse(checkpoint.describe(), status_code=201)


async def get_partitions(request: Request) -> Response:
    """``GET /v1/audit/partitions`` (module docstring)."""
    d = deps(request)
    items = [describe(p) for p in await list_partitions(d.pool)]
    audit = d.config.audit
    return JSONResponse({"items": items, "interval": audit.partition_interval, "retention_days": audit.retention_days})


async def apply_retention(request: Request) -> Response:
    """``POST /v1/audit/retention`` (module docstring)."""
    d = deps(request)
    dropped = await d.audit.apply_retention(d.pool, datetime.now(UTC))
    return JSONResponse({"dropped": [describe(p) for p in dropped]})
