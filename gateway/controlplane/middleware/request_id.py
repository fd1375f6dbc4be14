"""Give every control-plane request an id (``X-Request-Id`` in and out)."""

from __future__ import annotations

import uuid

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["RequestIdMiddleware"]


class RequestIdMiddleware:
    """Set ``scope["state"]["request_id"]`` and echo it as ``X-Request-Id``.

    A client-supplied ``X-Request-Id`` is kept only when it is a UUID, so the id
    is always safe to log and to return.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = ""
        for key, value in scope.get("headers", ()):
            if key == b"x-request-id":
                try:
                    rid = str(uuid.UUID(value.decode("latin-1")))
                except ValueError:
                    rid = ""
        rid = rid or str(uuid.uuid4())
        # The server gives each request its own shallow copy of the lifespan state.
        scope.setdefault("state", {})["request_id"] = rid

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)["x-request-id"] = rid
            await send(message)

        await self.app(scope, receive, send_with_id)
