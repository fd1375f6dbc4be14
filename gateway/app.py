"""Composition root: one plain ASGI app, one lifespan, two planes on two ports.

The control plane (default port 8080) and the data plane (8081) are separate
Starlette sub-applications; :class:`GatewayApp`, a plain ASGI callable, runs the
lifespan and hands every other request to the plane bound to the local port it
arrived on (``scope["server"]``), so both run in one process under one lifespan,
or alone with ``--plane control|data`` (then that plane answers on every port it
is bound to). The root adds no Starlette stack of its own: each request passes
through exactly one (its plane's), with that plane's middleware (host/origin
guard, error handling) and routes.
"""

from __future__ import annotations

import contextlib
import traceback
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.datastructures import State
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.config import Config

__all__ = ["GatewayApp", "PlaneDispatcher", "create_app"]

Lifespan = Callable[["GatewayApp"], contextlib.AbstractAsyncContextManager[dict[str, object]]]


class PlaneDispatcher:
    """Route each HTTP request to the plane bound to its local port.

    Args:
        by_port: Local port -> plane app.
        default: App for any other port (single-plane mode), or None (404
            ``{"error": "not_found"}``, JSON).
    """

    def __init__(self, by_port: dict[int, ASGIApp], default: ASGIApp | None) -> None:
        self._by_port = by_port
        self._default = default
        self._single = default if not by_port or all(a is default for a in by_port.values()) else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        app = self._single
        if app is None:
            server = scope.get("server")
            app = (self._by_port.get(server[1]) if server else None) or self._default
        if app is None:
            await JSONResponse({"error": "not_found"}, status_code=404)(scope, receive, send)
            return
        await app(scope, receive, send)


class GatewayApp:
    """The gateway's ASGI application: the ``lifespan`` protocol, then :class:`PlaneDispatcher`.

    Lifespan (ASGI 3 lifespan spec): on ``lifespan.startup`` the ``lifespan`` context is
    entered and the dict it yields is merged into the server's lifespan ``scope["state"]``
    (which the server copies into every request's scope: the planes read it as
    ``request.state``); ``lifespan.startup.failed`` with the error's text if entering
    fails (then the exception propagates, as Starlette's router does). On
    ``lifespan.shutdown`` it is exited (``lifespan.shutdown.failed`` on an error).

    Args:
        dispatcher: Serves every ``http`` (and ``websocket``) scope.
        lifespan: Called with this app; yields the lifespan state.

    Attributes:
        state: ``begin_shutdown()``: called by the server's signal handler before it
            drains connections (set during startup; a no-op before).
    """

    def __init__(self, dispatcher: ASGIApp, lifespan: Lifespan) -> None:
        self._dispatch = dispatcher
        self._lifespan = lifespan
        self.state = State()
        self.state.begin_shutdown = lambda: None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._run_lifespan(scope, receive, send)
            return
        await self._dispatch(scope, receive, send)

    async def _run_lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False
        await receive()  # lifespan.startup
        try:
            async with self._lifespan(self) as state:
                if state:
                    if "state" not in scope:
                        raise RuntimeError('The server does not support "state" in the lifespan scope.')
                    scope["state"].update(state)
                await send({"type": "lifespan.startup.complete"})
                started = True
                await receive()  # lifespan.shutdown
        except BaseException:
            text = traceback.format_exc()
            await send({"type": "lifespan.shutdown.failed" if started else "lifespan.startup.failed", "message": text})
            raise
        await send({"type": "lifespan.shutdown.complete"})


def create_app(config: Config) -> GatewayApp:
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
    async def lifespan(app: GatewayApp) -> AsyncIterator[dict[str, object]]:
        state: dict[str, object] = {"config": config}
        async with contextlib.AsyncExitStack() as stack:
            if control is not None:
                state.update(await stack.enter_async_context(controlplane_resources(config)))
            if data is not None:
                state.update(await stack.enter_async_context(dataplane_resources(config)))
            notifier: Any = state.get("cp_notifier")
            # Called by the server's signal handler before it drains connections,
            # so held long polls answer at once instead of delaying shutdown.
            app.state.begin_shutdown = getattr(notifier, "close", lambda: None)
            yield state

    return GatewayApp(PlaneDispatcher(planes, default), lifespan)
