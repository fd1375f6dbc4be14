"""Resolve a handler's dependencies: the app's Config, and pool/notifier from the lifespan state."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg
from starlette.requests import Request

from gateway.config import Config
from gateway.controlplane.audit_trail import AuditTrail
from gateway.controlplane.notifier import ProjectionNotifier
from gateway.errors import GatewayError

__all__ = ["Deps", "deps"]


@dataclass(frozen=True)
class Deps:
    """What a control-plane handler needs."""

    config: Config
    pool: asyncpg.Pool
    notifier: ProjectionNotifier
    audit: AuditTrail


def deps(request: Request) -> Deps:
    """Return the handler dependencies of ``request``.

    Raises:
        GatewayError: The root lifespan did not enter ``controlplane_resources``.
    """
    state = request.scope.get("state") or {}
    pool, notifier, audit = state.get("cp_pool"), state.get("cp_notifier"), state.get("cp_audit")
    if pool is None or notifier is None or audit is None:
        raise GatewayError("control plane resources are not initialised (root lifespan wiring)")
    return Deps(config=request.app.state.config, pool=pool, notifier=notifier, audit=audit)
