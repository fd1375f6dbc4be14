"""The data planes' projection feed: routing table with ETag and long polling; records each poller."""

from __future__ import annotations

import re

from starlette.requests import Request
from starlette.responses import Response

from gateway.controlplane._deps import deps
from gateway.controlplane._http import MAX_BIGINT, JSONResponse, etag, parse_etag_version, parse_int, parse_wait
from gateway.controlplane._longpoll import current_or_newer
from gateway.db import instances as db_instances
from gateway.db.projections import get_projection
from gateway.errors import GatewayError, RequestRejected

__all__ = ["get_projection_feed"]

_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
_CATEGORY = re.compile(r"[a-z0-9_]{1,64}")
_OPA_INSTANCE = re.compile(r"[A-Za-z0-9_.:/-]{1,256}")


async def get_projection_feed(request: Request) -> Response:
    """``GET /v1/dataplane/projection?dataplane_id=&active_version=&error=&opa_instance=``.

    ``opa_instance`` names the OPA sidecar the data plane supervises (its
    ``gateway_instance`` label); it is registered as an OPA instance that has
    activated nothing yet, unless that OPA already reported its status.

    Records the caller's ``active_version``, ``state`` (``ok``, or ``error`` when
    ``error=<category>`` is given) and ``last_seen``, then answers like the bundle
    endpoint: 304 when ``If-None-Match`` (or, without it, a non-zero
    ``active_version``) names the desired version, after waiting up to
    ``Prefer: wait=<s>``; else 200 with the routing table and ``ETag: "p<N>"``.
    """
    d = deps(request)
    q = request.query_params
    dataplane_id = q.get("dataplane_id", "")
    if not _ID.fullmatch(dataplane_id):
        raise RequestRejected("dataplane_id must match ^[A-Za-z0-9_.:-]{1,128}$")
    active = parse_int(q.get("active_version"), "active_version", default=0, maximum=MAX_BIGINT)
    error = q.get("error")
    if error is not None and not _CATEGORY.fullmatch(error):
        raise RequestRejected("error must be a snake_case category")
    opa_instance = q.get("opa_instance")
    if opa_instance is not None and not _OPA_INSTANCE.fullmatch(opa_instance):
        raise RequestRejected("opa_instance must match ^[A-Za-z0-9_.:/-]{1,256}$")
    if opa_instance is not None:
        # Before the data plane's own report: its OPA never looks absent while the data plane looks active.
        await db_instances.register_opa_instance(
            d.pool, d.config.tenant, d.config.environment, opa_id=opa_instance, dataplane_id=dataplane_id
        )
    await db_instances.record_data_plane(
        d.pool,
        d.config.tenant,
        d.config.environment,
        dataplane_id=dataplane_id,
        active_version=active or None,
        state="error" if error else "ok",
        error_category=error,
    )
    have = parse_etag_version(request.headers.get("if-none-match"))
    if have is None and active:
        have = active
    wait = parse_wait(request.headers.get("prefer"), d.config.control_plane.long_poll_timeout)
    version = await current_or_newer(d, have, wait)
    if version == 0:
        raise GatewayError("no projection has been compiled")
    if version == have:
        return Response(status_code=304, headers={"ETag": etag(version)})
    stored = await get_projection(d.pool, d.config.tenant, d.config.environment, version, with_bundle=False)
    if stored is None:
        raise GatewayError("the desired projection disappeared")
    return JSONResponse(stored.routing_table, headers={"ETag": etag(version)})
