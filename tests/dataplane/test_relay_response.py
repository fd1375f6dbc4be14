"""RelayResponse under a real uvicorn server: a complete answer is not logged as a client
leaving; a client that really leaves cancels the work and is logged once."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.dataplane.relay import Outbox, RelayResponse
from tests.support.ports import free_port

LEFT = "client closed its connection: the request is cancelled"


class _State:
    def __init__(self) -> None:
        self.started = threading.Event()
        self.cancelled = threading.Event()


STATE = _State()


def _reply(request_id: int) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "result": {"content": [], "isError": False}}


async def _quick(request: Request) -> Response:
    async def work() -> dict[str, Any]:
        return _reply(1)

    return RelayResponse(Outbox(None), work, status=lambda _: 200, request_id=1)


async def _stuck(request: Request) -> Response:
    async def work() -> dict[str, Any]:
        STATE.started.set()
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            STATE.cancelled.set()
            raise
        raise AssertionError("unreachable")

    return RelayResponse(Outbox(None), work, status=lambda _: 200, request_id=2)


@pytest.fixture(scope="module")
def server() -> Iterator[int]:
    app = Starlette(routes=[Route("/quick", _quick, methods=["POST"]), Route("/stuck", _stuck, methods=["POST"])])
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not srv.started:
        assert time.monotonic() < deadline, "test server did not start"
        time.sleep(0.02)
    yield port
    srv.should_exit = True
    thread.join(timeout=10)


def test_a_complete_answer_is_not_logged_as_the_client_leaving(server: int, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gateway.mcp")
    with httpx.Client(base_url=f"http://127.0.0.1:{server}") as http:  # one kept-alive connection
        for _ in range(20):
            resp = http.post("/quick", content=b"{}")
            assert (resp.status_code, resp.json()) == (200, _reply(1))
    assert LEFT not in caplog.messages


def test_a_client_that_leaves_cancels_the_work_and_is_logged(server: int, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gateway.mcp")
    STATE.started.clear()
    STATE.cancelled.clear()
    with socket.create_connection(("127.0.0.1", server), timeout=5) as sock:
        sock.sendall(b"POST /stuck HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: 2\r\n\r\n{}")
        assert STATE.started.wait(10)
    assert STATE.cancelled.wait(10)
    deadline = time.monotonic() + 10
    while caplog.messages.count(LEFT) < 1:
        assert time.monotonic() < deadline, "the leaving client was not logged"
        time.sleep(0.02)
    assert caplog.messages.count(LEFT) == 1
