"""The 2024-11-05 HTTP+SSE upstream client against a real tiny SSE server in process (uvicorn, loopback).

Proven here, on both HTTP client backends: the ``endpoint`` event (relative URI resolved
against the SSE URL) and the ``initialize`` handshake with ``2024-11-05``; an endpoint on
another origin refused before anything is POSTed to it; responses matched to concurrent
requests by id (answered out of order); server-to-client pings answered; a lost stream
failing the waiting request and the next request reconnecting; a 404 for an unknown
session retried once on a fresh session; no endpoint in time, and a non-SSE answer; a
closed upstream refusing requests and ending its stream.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import orjson
import pytest
import uvicorn
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectSendStream
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from gateway.errors import UpstreamProtocolError, UpstreamTimeout, UpstreamUnavailable
from gateway.httpclient import HttpClient, create_http_client
from gateway.mcp.legacy_sse import LegacySseUpstream
from gateway.mcp.upstream import UpstreamPool
from tests.support.ports import free_port

pytestmark = pytest.mark.anyio


@dataclass
class SseServer:
    """A 2024-11-05 HTTP+SSE MCP server: ``GET /sse`` and ``POST /messages?session=<id>``.

    ``endpoint`` is the data of the endpoint event (``{sid}`` is replaced); ``send_endpoint``
    False never sends one; ``plain`` answers the GET with JSON instead of a stream.
    Tools: ``echo`` (answers at once), ``slow`` (answers after 0.3 s), ``ping_me`` (pings the
    client over the stream and answers with its reply).
    """

    tg: TaskGroup
    endpoint: str = "/messages?session={sid}"
    send_endpoint: bool = True
    plain: bool = False
    port: int = 0
    sessions: dict[str, MemoryObjectSendStream[dict[str, Any] | None]] = field(default_factory=dict)
    received: list[dict[str, Any]] = field(default_factory=list)
    streams_opened: int = 0
    streams_closed: int = 0
    replies: dict[str, anyio.Event] = field(default_factory=dict)
    client_replies: list[dict[str, Any]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/sse"

    async def sse(self, request: Request) -> Response:
        self.streams_opened += 1
        if self.plain:
            return JSONResponse({"not": "sse"})
        sid = uuid.uuid4().hex
        send, recv = anyio.create_memory_object_stream[dict[str, Any] | None](100)
        self.sessions[sid] = send

        async def events() -> AsyncIterator[bytes]:
            try:
                if self.send_endpoint:
                    yield f"event: endpoint\ndata: {self.endpoint.format(sid=sid, port=self.port)}\n\n".encode()
                async with recv:
                    async for msg in recv:
                        if msg is None:
                            return  # the server ends the stream
                        yield b"event: message\ndata: " + orjson.dumps(msg) + b"\n\n"
            finally:
                self.streams_closed += 1

        return StreamingResponse(events(), media_type="text/event-stream")

    async def messages(self, request: Request) -> Response:
        sid = request.query_params.get("session", "")
        if sid not in self.sessions:
            return Response("Could not find session", status_code=404)
        msg = orjson.loads(await request.body())
        self.received.append(msg)
        if "method" not in msg:  # the client's answer to our ping
            self.client_replies.append(msg)
            self.replies[str(msg["id"])].set()
        elif "id" in msg:
            self.tg.start_soon(self._answer, self.sessions[sid], msg)
        return Response("Accepted", status_code=202)

    async def _answer(self, stream: MemoryObjectSendStream[dict[str, Any] | None], msg: dict[str, Any]) -> None:
        method, params = msg["method"], msg.get("params") or {}
        if method == "initialize":
            result: dict[str, Any] = {
                "protocolVersion": params["protocolVersion"],
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "sse-test", "version": "1"},
            }
        elif method == "tools/call" and params["name"] == "slow":
            await anyio.sleep(0.3)
            result = {"content": [{"type": "text", "text": "slow"}]}
        elif method == "tools/call" and params["name"] == "ping_me":
            self.replies["srv-1"] = anyio.Event()
            await stream.send({"jsonrpc": "2.0", "id": "srv-1", "method": "ping"})
            await self.replies["srv-1"].wait()
            result = {"content": [{"type": "text", "text": "pinged"}]}
        elif method == "tools/call":
            result = {"content": [{"type": "text", "text": str(params["arguments"].get("text"))}]}
        else:
            result = {}
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):  # the stream may be gone
            await stream.send({"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "info"}})
            await stream.send({"jsonrpc": "2.0", "id": msg["id"], "result": result})

    async def end_streams(self) -> None:
        for send in self.sessions.values():
            with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                await send.send(None)

    def forget_sessions(self) -> None:
        """As after a restart: POSTs for the old session get 404 (the old stream stays open)."""
        self.sessions = {sid + "-gone": s for sid, s in self.sessions.items()}


@contextlib.asynccontextmanager
async def sse_server(**options: Any) -> AsyncIterator[SseServer]:
    async with anyio.create_task_group() as tg:
        server = SseServer(tg=tg, port=free_port(), **options)
        app = Starlette(
            routes=[Route("/sse", server.sse, methods=["GET"]), Route("/messages", server.messages, methods=["POST"])]
        )
        config = uvicorn.Config(app, host="127.0.0.1", port=server.port, log_level="warning", lifespan="off")
        uv = uvicorn.Server(config)
        tg.start_soon(uv.serve)
        with anyio.fail_after(10):
            while not uv.started:
                await anyio.sleep(0.01)
        try:
            yield server
        finally:
            await server.end_streams()
            uv.should_exit = True
            uv.force_exit = True


@pytest.fixture(params=["aiohttp", "httpx"])
async def http(request: pytest.FixtureRequest) -> AsyncIterator[HttpClient]:
    client = create_http_client(request.param)
    try:
        yield client
    finally:
        await client.aclose()


@contextlib.asynccontextmanager
async def upstream_for(url: str, http: HttpClient, timeout: float = 5) -> AsyncIterator[LegacySseUpstream]:
    async with anyio.create_task_group() as tg:
        upstream = LegacySseUpstream(url, http, spawner=tg, timeout=timeout)
        try:
            yield upstream
        finally:
            await upstream.aclose()
            tg.cancel_scope.cancel()


async def echo(upstream: LegacySseUpstream, text: str) -> str:
    reply = await upstream.request("tools/call", {"name": "echo", "arguments": {"text": text}})
    return str(reply["result"]["content"][0]["text"])


async def test_the_endpoint_event_and_the_2024_11_05_handshake(http: HttpClient) -> None:
    async with sse_server() as server, upstream_for(server.url, http) as upstream:
        assert await echo(upstream, "hello") == "hello"
        assert await echo(upstream, "again") == "again"
        assert upstream.protocol_version == "2024-11-05"
    methods = [m.get("method") for m in server.received]
    assert methods == ["initialize", "notifications/initialized", "tools/call", "tools/call"]
    assert server.received[0]["params"]["protocolVersion"] == "2024-11-05"
    assert server.streams_opened == 1  # one session, reused


@pytest.mark.parametrize(
    "endpoint",
    ["http://evil.test:{port}/messages?session={sid}", "https://127.0.0.1:{port}/messages", "//127.0.0.2:{port}/m"],
)
async def test_an_endpoint_on_another_origin_is_refused(http: HttpClient, endpoint: str) -> None:
    async with sse_server(endpoint=endpoint) as server, upstream_for(server.url, http) as upstream:
        with pytest.raises(UpstreamProtocolError, match="endpoint on another origin"):
            await echo(upstream, "x")
    assert server.received == []


async def test_concurrent_responses_are_matched_by_id(http: HttpClient) -> None:
    async with sse_server() as server, upstream_for(server.url, http) as upstream:
        await echo(upstream, "warm up")
        order: list[tuple[str, str]] = []

        async def slow() -> None:
            reply = await upstream.request("tools/call", {"name": "slow", "arguments": {}})
            order.append(("slow", reply["result"]["content"][0]["text"]))

        async def fast() -> None:
            await anyio.sleep(0.05)
            order.append(("fast", await echo(upstream, "fast")))

        async with anyio.create_task_group() as both:
            both.start_soon(slow)
            both.start_soon(fast)
    assert order == [("fast", "fast"), ("slow", "slow")]  # answered out of order, each to its own caller


async def test_a_server_ping_is_answered_over_post(http: HttpClient) -> None:
    async with sse_server() as server, upstream_for(server.url, http) as upstream:
        reply = await upstream.request("tools/call", {"name": "ping_me", "arguments": {}})
    assert reply["result"]["content"][0]["text"] == "pinged"
    assert server.client_replies == [{"jsonrpc": "2.0", "id": "srv-1", "result": {}}]


async def test_a_lost_stream_fails_the_waiting_request_and_the_next_one_reconnects(http: HttpClient) -> None:
    async with sse_server() as server, upstream_for(server.url, http) as upstream:
        await echo(upstream, "first")

        async def end_soon() -> None:
            await anyio.sleep(0.1)
            await server.end_streams()

        async with anyio.create_task_group() as tg:
            tg.start_soon(end_soon)
            with pytest.raises(UpstreamUnavailable, match="SSE stream was lost"):
                await upstream.request("tools/call", {"name": "slow", "arguments": {}})
        assert await echo(upstream, "after") == "after"
    assert server.streams_opened == 2


async def test_a_404_for_the_session_is_retried_once_on_a_fresh_session(http: HttpClient) -> None:
    async with sse_server() as server, upstream_for(server.url, http) as upstream:
        await echo(upstream, "first")
        server.forget_sessions()
        assert await echo(upstream, "second") == "second"
    calls = [m["params"]["arguments"]["text"] for m in server.received if m.get("method") == "tools/call"]
    assert calls == ["first", "second"] and server.streams_opened == 2


async def test_no_endpoint_in_time_is_a_timeout_and_a_json_answer_a_protocol_error(http: HttpClient) -> None:
    async with sse_server(send_endpoint=False) as server, upstream_for(server.url, http, timeout=0.5) as upstream:
        with anyio.fail_after(3), pytest.raises(UpstreamTimeout, match="no endpoint"):
            await echo(upstream, "x")
    async with sse_server(plain=True) as server, upstream_for(server.url, http) as upstream:
        with pytest.raises(UpstreamProtocolError, match="not an event stream"):
            await echo(upstream, "x")


async def test_an_unreachable_upstream_is_unavailable(http: HttpClient) -> None:
    async with upstream_for(f"http://127.0.0.1:{free_port()}/sse", http) as upstream:
        with pytest.raises(UpstreamUnavailable):
            await echo(upstream, "x")


async def test_a_closed_upstream_refuses_requests_and_ends_its_stream(http: HttpClient) -> None:
    async with sse_server() as server:
        pool = UpstreamPool(http, timeout=5)
        async with anyio.create_task_group() as tg:
            await tg.start(pool.run)
            upstream = pool.get("s", "legacy_sse", server.url)
            assert isinstance(upstream, LegacySseUpstream)
            assert await echo(upstream, "x") == "x"
            assert server.streams_closed == 0
            await pool.retain({})
            with pytest.raises(UpstreamUnavailable, match="removed from the projection"):
                await echo(upstream, "y")
            with anyio.fail_after(3):  # the server sees the client go away
                while server.streams_closed == 0:
                    await anyio.sleep(0.02)
            tg.cancel_scope.cancel()
