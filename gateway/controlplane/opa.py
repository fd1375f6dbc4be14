"""OPA's management APIs served to the sidecars: bundle download, status reports, decision logs."""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from gateway.controlplane._deps import deps
from gateway.controlplane._http import (
    check_json_text,
    etag,
    parse_etag_version,
    parse_rfc3339,
    parse_wait,
    read_json,
)
from gateway.controlplane._longpoll import current_or_newer
from gateway.controlplane.audit_ingest import MAX_CLOCK_AHEAD
from gateway.db import audit_ingest as db_ingest
from gateway.db import instances as db_instances
from gateway.db.projections import get_projection
from gateway.errors import GatewayError, NotFound, RequestRejected

__all__ = ["BUNDLE_MEDIA_TYPE", "get_bundle", "post_decision_logs", "post_status", "version_of_revision"]

log = logging.getLogger(__name__)

BUNDLE_MEDIA_TYPE = "application/vnd.openpolicyagent.bundles"
"""Sent on every bundle reply: OPA keeps long-polling only when it sees this type."""
_REVISION = re.compile(r"^p(\d+)-pv\d+$")
MAX_ID = 256


def version_of_revision(revision: object) -> int | None:
    """Return N of a ``p<N>-pv<P>`` revision, else None."""
    if isinstance(revision, str):
        m = _REVISION.match(revision)
        if m:
            return int(m.group(1))
    return None


async def get_bundle(request: Request) -> Response:
    """``GET /v1/opa/bundles/{name}``: OPA's bundle protocol with ETag ``"p<N>"`` and long polling.

    ``If-None-Match`` equal to the desired projection's ETag -> 304, after holding
    the request up to ``Prefer: ...;wait=<s>`` seconds for a newer one. Otherwise
    200 with the gzipped bundle.
    """
    d = deps(request)
    if request.path_params["name"] != d.config.opa.bundle_name:
        raise NotFound("unknown bundle")
    headers = {"Content-Type": BUNDLE_MEDIA_TYPE}
    wait = parse_wait(request.headers.get("prefer"), d.config.control_plane.long_poll_timeout)
    have = parse_etag_version(request.headers.get("if-none-match"))
    version = await current_or_newer(d, have, wait)
    if version == 0:
        raise GatewayError("no projection has been compiled")
    if version == have:
        return Response(status_code=304, headers={**headers, "ETag": etag(version)})
    stored = await get_projection(d.pool, d.config.tenant, d.config.environment, version)
    if stored is None or stored.bundle is None:
        raise GatewayError("the desired projection disappeared")
    return Response(stored.bundle, status_code=200, headers={**headers, "ETag": etag(version)})


def _as_dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _opt_str(value: Any, limit: int = 4096) -> str | None:
    return value[:limit] if isinstance(value, str) else None


def _opt_time(value: Any) -> datetime | None:
    try:
        parsed = parse_rfc3339(value, field="timestamp")
    except RequestRejected:
        return None
    return None if parsed.year <= 1 else parsed  # Go's zero time means "never"


async def post_status(request: Request) -> Response:
    """``POST /v1/opa/status``: store one OPA instance's status report.

    Keyed by ``labels.gateway_instance`` (set by the data plane that supervises the OPA,
    see ``/v1/dataplane/projection?opa_instance=``), else ``labels.id``.

    ``state`` is ``error`` when the bundle or a plugin reports an error, ``ok`` once a
    revision is active, ``pending`` before that.
    """
    d = deps(request)
    body = await read_json(request)
    if not isinstance(body, dict) or not isinstance(body.get("labels"), dict):
        raise RequestRejected("a status report needs labels")
    # A supervised sidecar is filed under the id its data plane registered it with.
    opa_id = body["labels"].get("gateway_instance") or body["labels"].get("id")
    if not isinstance(opa_id, str) or not 0 < len(opa_id) <= MAX_ID or "\x00" in opa_id:
        raise RequestRejected(f"a status report needs labels.id (1..{MAX_ID} characters, without NUL)")
    check_json_text(body, "the status report")
    name = d.config.opa.bundle_name
    bundles = _as_dict(body.get("bundles"))
    bundle = _as_dict(bundles.get(name))
    plugins = {k: v.get("state") for k, v in _as_dict(body.get("plugins")).items() if isinstance(v, dict)}
    raw_errors = bundle.get("errors")
    errors: list[Any] = raw_errors if isinstance(raw_errors, list) else []
    code, message = _opt_str(bundle.get("code")), _opt_str(bundle.get("message"))
    revision = _opt_str(bundle.get("active_revision"), 256) or None
    if code or errors or any(state == "ERROR" for state in plugins.values()):
        state = "error"
    elif revision:
        state = "ok"
    else:
        state = "pending"
    await db_instances.record_opa_status(
        d.pool,
        d.config.tenant,
        d.config.environment,
        opa_id=opa_id,
        bundle_name=name if bundle else None,
        active_revision=revision,
        active_version=version_of_revision(revision),
        state=state,
        last_successful_activation=_opt_time(bundle.get("last_successful_activation")),
        code=code,
        message=message,
        errors=errors,
        plugins=plugins,
        opa_version=_opt_str(body["labels"].get("version"), 64),
        dataplane_id=_opt_str(body["labels"].get("gateway_dataplane"), MAX_ID),
    )
    return Response(status_code=204)


async def post_decision_logs(request: Request) -> Response:
    """``POST /v1/opa/logs``: store a (gzip) JSON array of OPA decision-log events; 204.

    Idempotent per ``decision_id`` (OPA re-sends a chunk after any non-2xx). Events
    without a ``decision_id`` cannot be joined and are skipped. A body that is not
    a JSON array of objects -> 400, so OPA keeps the chunk and retries.
    """
    d = deps(request)
    body = await read_json(request)
    if not isinstance(body, list) or not all(isinstance(e, dict) for e in body):
        raise RequestRejected("decision logs must be a JSON array of objects")
    rows = []
    for event in body:
        decision_id = event.get("decision_id")
        if not isinstance(decision_id, str) or not decision_id or len(decision_id) > MAX_ID:
            log.warning("skipping an OPA decision-log event without decision_id")
            continue
        decided_at = _opt_time(event.get("timestamp"))
        if decided_at is not None and decided_at > datetime.now(UTC) + MAX_CLOCK_AHEAD:
            log.warning("skipping an OPA decision-log event dated more than a day ahead")
            continue
        bundles = event.get("bundles") if isinstance(event.get("bundles"), dict) else {}
        info = bundles.get(d.config.opa.bundle_name)
        labels = event.get("labels") if isinstance(event.get("labels"), dict) else {}
        rows.append(
            {
                "decision_id": decision_id,
                "opa_id": _opt_str(labels.get("id"), MAX_ID),
                "path": _opt_str(event.get("path"), 1024),
                "revision": _opt_str(info.get("revision"), 256) if isinstance(info, dict) else None,
                "timestamp": decided_at,
                "input": event.get("input"),
                "result": event.get("result"),
                "erased": event.get("erased"),
                "masked": event.get("masked"),
            }
        )
    if rows:
        await db_ingest.insert_opa_logs(d.pool, d.audit.partitions, d.config.tenant, d.config.environment, rows)
        metrics = (request.scope.get("state") or {}).get("cp_metrics")
        if metrics is not None:  # events counted and their lag observed once stored
            metrics.observe_ingest("decision_log", (row["timestamp"] for row in rows))
    return Response(status_code=204)
