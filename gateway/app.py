"""Composition root: one Starlette app, one lifespan, two planes on two ports.

The control plane (default port 8080) and the data plane (8081) are separate
sub-applications; a pure ASGI dispatcher picks one by the local port a request
arrived on (``scope["server"]``), so both run in one process under one
lifespan, or alone with ``--plane control|data`` (then that plane answers on
every port it is bound to).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.config import Config

__all__ = ["PlaneDispatcher", "create_app"]


class PlaneDispatcher:
    """Route each HTTP request to the plane bound to its local port.

    Args:
        by_port: Local port -> plane app.
        default: App for any other port (single-plane mode), or None (404).
    """

    def __init__(self, by_port: dict[int, ASGIApp], default: ASGIApp | None) -> None:
        self._by_port = by_port
        self._default = default

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        server = scope.get("server")
        app = self._by_port.get(server[1]) if server else None
        app = app or self._default
        if app is None:
            await JSONResponse({"error": "not_found"}, status_code=404)(scope, receive, send)
            return
        await app(scope, receive, send)


def create_app(config: Config) -> Starlette:
    """Build the gateway ASGI app for ``config.plane`` (``both``, ``control`` or ``data``)."""
    planes: dict[int, ASGIApp] = {}
    default: ASGIApp | None = None
    control = data = None
    if config.plane in ("both", "control"):
        from gateway.controlplane import controlplane_resources, create_controlplane_app

        control = create_controlplane_app(config)
        planes[config.control_plane.port] = control
    if config.plane in ("both", "data"):
        from gateway.dataplane import create_dataplane_app, dataplane_resources

        data = create_dataplane_app(config)
        planes[config.data_plane.port] = data
    if config.plane != "both":
        default = control or data

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, object]]:
        state: dict[str, object] = {"config": config}
        async with contextlib.AsyncExitStack() as stack:
            if control is not None:
                state.update(await stack.enter_async_context(controlplane_resources(config)))
            if data is not None:
                state.update(await stack.enter_async_context(dataplane_resources(config)))
            notifier = state.get("cp_notifier")
            # Called by the server's signal handler before it drains connections,
            # so held long polls answer at once instead of delaying shutdown.
            app.state.begin_shutdown = getattr(notifier, "close", lambda: None)
            yield state

    root = Starlette(lifespan=lifespan)
    # Every path goes to the dispatcher. Mount("/") would not do: its `.*` stops at a "\n"
    # in the path, which then got Starlette's text/plain 404 instead of the planes' JSON errors.
    root.router.default = PlaneDispatcher(planes, default)
    return root
