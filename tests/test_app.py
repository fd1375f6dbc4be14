"""The composition root's plain ASGI app: lifespan protocol and dispatch by local port."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, MutableMapping
from typing import Any

import orjson
import pytest
from starlette.types import Receive, Scope, Send

from gateway.app import GatewayApp, PlaneDispatcher

pytestmark = pytest.mark.anyio


def _plane(name: str) -> Any:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": name.encode() + b" " + repr(scope["state"]).encode()})

    return app


async def _request(app: Any, port: int, state: dict[str, Any] | None = None) -> tuple[int, bytes]:
    scope: dict[str, Any] = {"type": "http", "method": "GET", "path": "/", "headers": [], "server": ("127.0.0.1", port)}
    scope["state"] = dict(state or {})
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(dict(message))

    await app(scope, receive, send)
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


async def _lifespan_run(app: GatewayApp, scope: dict[str, Any]) -> tuple[list[dict[str, Any]], BaseException | None]:
    incoming = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return next(incoming)

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(dict(message))

    try:
        await app(scope, receive, send)
    except Exception as exc:
        return sent, exc
    return sent, None


async def test_dispatches_by_local_port_and_answers_json_404_elsewhere() -> None:
    dispatcher = PlaneDispatcher({8080: _plane("control"), 8081: _plane("data")}, None)
    app = GatewayApp(dispatcher, lambda _app: contextlib.nullcontext({}))
    assert (await _request(app, 8080))[1].startswith(b"control")
    assert (await _request(app, 8081))[1].startswith(b"data")
    status, body = await _request(app, 9999)
    assert (status, orjson.loads(body)) == (404, {"error": "not_found"})


async def test_a_single_plane_answers_on_every_port() -> None:
    data = _plane("data")
    app = GatewayApp(PlaneDispatcher({8081: data}, data), lambda _app: contextlib.nullcontext({}))
    assert (await _request(app, 8081))[1].startswith(b"data")
    assert (await _request(app, 1234))[1].startswith(b"data")


async def test_lifespan_state_reaches_the_server_scope_and_shutdown_exits_it() -> None:
    events: list[str] = []

    @contextlib.asynccontextmanager
    async def lifespan(app: GatewayApp) -> AsyncIterator[dict[str, object]]:
        events.append("enter")
        app.state.begin_shutdown = lambda: events.append("begin_shutdown")
        yield {"dp_thing": 42}
        events.append("exit")

    app = GatewayApp(PlaneDispatcher({}, None), lifespan)
    scope: dict[str, Any] = {"type": "lifespan", "state": {}}
    sent, error = await _lifespan_run(app, scope)
    assert error is None
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert scope["state"] == {"dp_thing": 42}
    app.state.begin_shutdown()
    assert events == ["enter", "exit", "begin_shutdown"]


async def test_a_failing_startup_is_reported_and_raised() -> None:
    @contextlib.asynccontextmanager
    async def lifespan(app: GatewayApp) -> AsyncIterator[dict[str, object]]:
        raise RuntimeError("database unreachable")
        yield {}  # pragma: no cover

    app = GatewayApp(PlaneDispatcher({}, None), lifespan)
    sent, error = await _lifespan_run(app, {"type": "lifespan", "state": {}})
    assert isinstance(error, RuntimeError)
    assert [m["type"] for m in sent] == ["lifespan.startup.failed"]
    assert "database unreachable" in sent[0]["message"]


async def test_lifespan_state_needs_a_server_that_supports_it() -> None:
    @contextlib.asynccontextmanager
    async def lifespan(app: GatewayApp) -> AsyncIterator[dict[str, object]]:
        yield {"x": 1}

    sent, error = await _lifespan_run(GatewayApp(PlaneDispatcher({}, None), lifespan), {"type": "lifespan"})
    assert isinstance(error, RuntimeError)
    assert [m["type"] for m in sent] == ["lifespan.startup.failed"]
