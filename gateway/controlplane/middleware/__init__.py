"""Pure ASGI middleware of the control plane, one per module."""

from gateway.controlplane.middleware.auth import BearerAuthMiddleware
from gateway.controlplane.middleware.request_id import RequestIdMiddleware

__all__ = ["BearerAuthMiddleware", "RequestIdMiddleware"]
