"""The control plane's long-lived resources, entered once by the root application's lifespan."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

import anyio

from gateway.config import Config
from gateway.controlplane.audit_trail import AuditTrail
from gateway.controlplane.notifier import ProjectionNotifier, listen_for_projections
from gateway.controlplane.oauth_tokens import TokenSource
from gateway.controlplane.projection import ensure_initial_projection
from gateway.db.migrate import apply_migrations, migration_status
from gateway.db.pool import create_pool
from gateway.db.projections import latest_version
from gateway.observability.metrics import ControlPlaneMetrics

__all__ = ["controlplane_resources"]

log = logging.getLogger(__name__)


@contextlib.asynccontextmanager
async def controlplane_resources(config: Config) -> AsyncIterator[dict[str, object]]:
    """Open the pool, migrate, start the audit trail, ensure a projection exists, and LISTEN for
    new projections.

    The root app's single lifespan enters this and merges the yielded dict into
    its lifespan state; handlers read ``request.state.cp_pool`` and
    ``request.state.cp_notifier``.

    Example::

        @contextlib.asynccontextmanager
        async def lifespan(app):
            async with controlplane_resources(config) as cp_state:
                yield {**cp_state, **dataplane_state}

    Yields:
        ``{"cp_pool": asyncpg.Pool, "cp_notifier": ProjectionNotifier, "cp_tokens":
        TokenSource, "cp_audit": AuditTrail, "cp_metrics": ControlPlaneMetrics}`` (the trail's
        checkpoints and maintenance run in a task while the lifespan lasts).

    Raises:
        asyncpg.PostgresError | OSError: PostgreSQL is unreachable or a migration failed.
    """
    trail = AuditTrail(config)
    async with create_pool(config.database_url) as pool:
        async with pool.acquire() as conn:
            applied = await apply_migrations(conn)
            ahead = (await migration_status(conn)).unknown
        if applied:
            log.info("database migrated: %s", ", ".join(applied))
        if ahead:
            # A rolled-back binary on the schema of a newer release: fine while every migration
            # is additive (docs/operations.md "Upgrades and rollbacks"), worth an operator's look.
            log.warning("the database has migrations this version does not know: %s", ", ".join(ahead))
        await trail.start(pool)
        await ensure_initial_projection(pool, config)
        notifier = ProjectionNotifier()

        async def catch_up() -> None:  # NOTIFYs sent while the LISTEN connection was down are gone
            notifier.publish(await latest_version(pool, config.tenant, config.environment))

        async with listen_for_projections(config.database_url, notifier, on_relisten=catch_up):
            # Read after LISTEN starts, so no compile can fall between the two.
            notifier.publish(await latest_version(pool, config.tenant, config.environment))
            tokens = TokenSource()  # OAuth tokens of the credentials broker (gateway.controlplane.broker)
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(trail.run, pool)
                    yield {
                        "cp_pool": pool,
                        "cp_notifier": notifier,
                        "cp_tokens": tokens,
                        "cp_audit": trail,
                        "cp_metrics": ControlPlaneMetrics(pool),
                    }
                    tg.cancel_scope.cancel()
            finally:
                await tokens.aclose()
