"""The projection compiler: approved registry + active policy -> routing table + OPA bundle."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import anyio
import asyncpg

from gateway.config import Config
from gateway.controlplane.bundle import build_bundle, bundle_data, signature_problem
from gateway.controlplane.notifier import ProjectionNotifier
from gateway.db import api_keys, api_sources, credentials, instances, policies, projections, servers
from gateway.db.projections import StoredProjection
from gateway.policy.bundle_signing import BundleSigner, load_signer
from gateway.policy.reserved import capabilities_summary, load_reserved_modules

__all__ = ["compile_projection", "ensure_initial_projection", "mutate_and_compile", "projection_status", "revision_of"]

log = logging.getLogger(__name__)

T = TypeVar("T")


def revision_of(version: int, policy_version: int | None) -> str:
    """Return the bundle revision ``p<N>-pv<P>`` (``pv0`` before any policy approval)."""
    return f"p{version}-pv{policy_version or 0}"


async def compile_projection(
    conn: asyncpg.Connection,
    config: Config,
    reserved_modules: Mapping[str, str],
    signer: BundleSigner | None = None,
) -> StoredProjection:
    """Compile and store the next projection from the current approved state.

    Must run inside a transaction that already holds :func:`projections.lock_compiler`,
    so versions are assigned in commit order. ``NOTIFY gateway_projection`` is sent
    when that transaction commits. The bundle is signed at compile time with ``signer``
    (default :func:`~gateway.policy.bundle_signing.load_signer`), so it is stored and served
    signed.

    Raises:
        SigningKeyError: The signing key cannot be loaded (nothing is stored then).

    Returns:
        The stored projection (with its bundle).
    """
    tenant, env = config.tenant, config.environment
    version = await projections.next_version(conn)
    policy = await policies.active_policy(conn, tenant, env)
    approved = await servers.approved_servers_with_tools(conn, tenant, env)
    # Each server's credential bindings (ids, selectors, credential id/kind/version: never a
    # secret) go to the data planes' routing table only, not into the OPA bundle.
    bindings = await credentials.projection_bindings(conn, tenant, env)
    # An API source's entry also carries its operation bindings and options (routing table only).
    apis = await api_sources.projection_apis(conn, tenant, env)
    policy_version = policy["version"] if policy else None
    revision = revision_of(version, policy_version)
    servers_with_api = [{**srv, "api": apis[srv["name"]]} if srv["name"] in apis else srv for srv in approved]
    routing_table = {
        "version": version,
        "policy_version": policy_version,
        "revision": revision,
        "tenant": tenant,
        "environment": env,
        "servers": [{**srv, "credentials": bindings.get(srv["name"], [])} for srv in servers_with_api],
        # Live API keys (id, subject, roles, argon2id hash, expiry; never a key): data planes
        # verify keys against it, and a revoked key is gone from the next projection.
        "api_keys": await api_keys.projection_api_keys(conn, tenant, env),
    }
    data = bundle_data(
        version=version,
        policy_version=policy_version,
        revision=revision,
        servers=servers_with_api,
        policy_data=policy["data"] if policy else None,
    )
    blob = build_bundle(
        revision=revision,
        version=version,
        policy_version=policy_version,
        policy_modules=policy["modules"] if policy else {},
        reserved_modules=reserved_modules,
        data=data,
        signer=signer or load_signer(config),
    )
    stored = StoredProjection(
        version=version,
        policy_version=policy_version,
        revision=revision,
        routing_table=routing_table,
        bundle=blob,
        bundle_sha256=hashlib.sha256(blob).hexdigest(),
    )
    await projections.insert_projection(conn, tenant, env, stored)
    log.info("compiled projection %s (%d servers)", revision, len(approved))
    return stored


async def mutate_and_compile(
    pool: asyncpg.Pool,
    config: Config,
    notifier: ProjectionNotifier,
    mutate: Callable[[asyncpg.Connection], Awaitable[T]],
) -> tuple[T, StoredProjection]:
    """Apply an approval and compile the projection it implies, in one transaction.

    Example::

        record, projection = await mutate_and_compile(
            pool, config, notifier, lambda conn: db.policies.activate_policy(conn, t, e, 7)
        )

    Raises:
        GatewayError: Whatever ``mutate`` raises; nothing is committed then.
    """
    reserved = await anyio.to_thread.run_sync(load_reserved_modules)
    signer = await anyio.to_thread.run_sync(load_signer, config)
    async with pool.acquire() as conn, conn.transaction():
        await projections.lock_compiler(conn)
        result = await mutate(conn)
        stored = await compile_projection(conn, config, reserved, signer)
    notifier.publish(stored.version)
    return result, stored


async def ensure_initial_projection(pool: asyncpg.Pool, config: Config) -> int:
    """Compile projection 1-of-the-scope (no servers, no policy: deny all) when none exists,
    and recompile the newest one when its bundle is not signed by the current signing key
    (a new key or key id: the same state, a new version, signed with the new key).

    Returns:
        The desired (newest) projection version.
    """
    reserved = await anyio.to_thread.run_sync(load_reserved_modules)
    signer = await anyio.to_thread.run_sync(load_signer, config)
    async with pool.acquire() as conn, conn.transaction():
        await projections.lock_compiler(conn)
        latest = await projections.latest_version(conn, config.tenant, config.environment)
        if latest:
            stored = await projections.get_projection(conn, config.tenant, config.environment, latest)
            why = signature_problem(stored.bundle if stored else None, signer)
            if why is None:
                return latest
            log.warning("projection %s is re-signed with key %s as a new projection: %s", latest, signer.key_id, why)
        return (await compile_projection(conn, config, reserved, signer)).version


async def projection_status(pool: asyncpg.Pool, config: Config) -> dict[str, Any]:
    """Return the rollout view: desired version, the version every live instance runs, per-instance state.

    ``active_version`` is the minimum over every live (seen in the last 90 s) data
    plane and OPA of the version it has activated; None when there is no live
    instance or one of them has activated nothing yet. A supervised OPA sidecar counts
    from the moment it starts (its data plane registers it, ``state: starting``), so
    ``active_version`` is null until that OPA has activated a bundle.
    ``policy_capabilities`` lists the OPA builtins policy versions may call
    (:func:`gateway.policy.reserved.capabilities_summary`).
    """
    tenant, env = config.tenant, config.environment
    async with pool.acquire() as conn:
        desired = await projections.latest_version(conn, tenant, env)
        dps = await instances.list_data_planes(conn, tenant, env)
        opas = await instances.list_opa_instances(conn, tenant, env)
        live = [i["active_version"] for i in dps + opas if i["live"]]
        active = min(live) if live and None not in live else None
        policy_version = None
        if active is not None:
            stored = await projections.get_projection(conn, tenant, env, active, with_bundle=False)
            policy_version = stored.policy_version if stored else None
    return {
        "desired_version": desired,
        "active_version": active,
        "policy_version": policy_version,
        "policy_capabilities": capabilities_summary(),
        "data_planes": [
            {k: d[k] for k in ("id", "active_version", "state", "last_seen", "live", "error_category")} for d in dps
        ],
        "opa": [
            {
                k: o[k]
                for k in (
                    "id",
                    "dataplane_id",
                    "active_revision",
                    "active_version",
                    "state",
                    "last_successful_activation",
                    "errors",
                    "live",
                    "code",
                    "message",
                    "plugins",
                    "last_seen",
                )
            }
            for o in opas
        ],
    }
