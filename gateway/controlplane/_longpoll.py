"""Long polling shared by the OPA bundle and data-plane projection endpoints."""

from __future__ import annotations

import anyio

from gateway.config import SECONDS
from gateway.controlplane._deps import Deps
from gateway.db.projections import latest_version

__all__ = ["RECHECK_INTERVAL", "current_or_newer"]

RECHECK_INTERVAL = 5 * SECONDS
"""Longest a waiter trusts LISTEN/NOTIFY alone before re-reading the database."""


async def current_or_newer(d: Deps, client_version: int | None, wait: float) -> int:
    """Return the desired projection version, waiting up to ``wait`` s while it equals ``client_version``.

    The database is the source of truth; NOTIFY only shortens the wait. A client
    whose version differs from the desired one (older, or unknown to this control
    plane) gets the desired one at once.

    Returns:
        The desired version (0 when none exists); equal to ``client_version`` means "not modified".
    """
    tenant, env = d.config.tenant, d.config.environment
    latest = await latest_version(d.pool, tenant, env)
    d.notifier.publish(latest)
    if client_version != latest or wait <= 0:
        return latest
    deadline = anyio.current_time() + wait
    while latest == client_version and not d.notifier.closing:
        remaining = deadline - anyio.current_time()
        if remaining <= 0:
            break
        await d.notifier.wait_newer(latest, min(remaining, RECHECK_INTERVAL))
        latest = await latest_version(d.pool, tenant, env)
    return latest
