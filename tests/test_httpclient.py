"""The hot-path HTTP client port: both backends against a real local HTTP server, and the SSE parser."""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Iterator

import anyio
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from gateway.devtools.stack import free_port
from gateway.httpclient import (
    MAX_RESPONSE_BYTES,
    HttpClient,
    HttpTimeout,
    HttpTransportError,
    SseEvent,
    create_http_client,
    iter_sse,
    split_lines,
)

pytestmark = pytest.mark.anyio

SSE_CHUNKS = [
    b": keep-alive comment\r\n",
    b"event: message\r\ndata: hel",  # a line split across chunks
    b"lo\r\n\r",
    b"\ndata: a\n",  # LF-only lines too
    b"data:b\n\n",  # no space after the colon
    b'id: 7\r\nevent: custom\r\ndata: {"x": 1}\r\n\r\n',
    b"data: dropped, no blank line after it",
]


async def _sse(request: Request) -> Response:
    async def body() -> AsyncIterator[bytes]:
        for chunk in SSE_CHUNKS:
            yield chunk
            await anyio.sleep(0.01)  # separate writes: the client sees separate chunks

    return StreamingResponse(body(), media_type="text/event-stream")


async def _long_line(request: Request) -> Response:
    async def body() -> AsyncIterator[bytes]:
        block = b"x" * (1024 * 1024)
        yield b"data: "
        for _ in range(MAX_RESPONSE_BYTES // len(block) + 1):
            yield block
        yield b"\n\n"

    return StreamingResponse(body(), media_type="text/event-stream")


async def _big(request: Request) -> Response:
    size = MAX_RESPONSE_BYTES + 1
    if request.query_params.get("chunked"):

        async def body() -> AsyncIterator[bytes]:
            for start in range(0, size, 1024 * 1024):
                yield b"x" * min(1024 * 1024, size - start)

        return StreamingResponse(body(), media_type="application/json")
    return Response(b"x" * size, media_type="application/json")


async def _slow(request: Request) -> Response:
    await anyio.sleep(5)
    return Response(b"{}")


async def _stall(request: Request) -> Response:
    async def body() -> AsyncIterator[bytes]:
        yield b"{"
        await anyio.sleep(5)
        yield b"}"

    return StreamingResponse(body(), media_type="application/json")


async def _echo(request: Request) -> Response:
    return Response(await request.body(), media_type="application/json", headers={"x-method": request.method})


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    routes = [
        Route("/sse", _sse),
        Route("/long-line", _long_line),
        Route("/big", _big),
        Route("/slow", _slow),
        Route("/stall", _stall),
        Route("/echo", _echo, methods=["POST"]),
    ]
    port = free_port()
    config = uvicorn.Config(Starlette(routes=routes), host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not srv.started:
        assert time.monotonic() < deadline, "test server did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(params=["aiohttp", "httpx"])
async def client(request: pytest.FixtureRequest) -> AsyncIterator[HttpClient]:
    http = create_http_client(request.param)
    try:
        yield http
    finally:
        await http.aclose()


async def _lines(*chunks: bytes) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


async def _events(lines: AsyncIterator[bytes]) -> list[SseEvent]:
    return [event async for event in iter_sse(lines)]


async def test_split_lines_handles_crlf_and_lines_split_across_chunks() -> None:
    chunks = _lines(b"a\r", b"\nb", b"c\n\n", b"d\r\ne")
    assert [line async for line in split_lines(chunks)] == [b"a", b"bc", b"", b"d", b"e"]


async def test_split_lines_refuses_a_line_over_the_cap_but_not_one_at_it() -> None:
    at_cap = [line async for line in split_lines(_lines(b"x" * MAX_RESPONSE_BYTES, b"\n"))]
    assert [len(line) for line in at_cap] == [MAX_RESPONSE_BYTES]
    with pytest.raises(HttpTransportError):
        async for _ in split_lines(_lines(b"x" * MAX_RESPONSE_BYTES, b"x")):
            pass


async def test_iter_sse_joins_data_lines_skips_comments_and_drops_an_unterminated_event() -> None:
    lines = _lines(b": comment", b"data: a", b"data:b", b"", b"event: ping", b"data: x", b"", b"data: lost")
    assert await _events(lines) == [SseEvent("message", "a\nb"), SseEvent("ping", "x")]


async def test_iter_sse_keeps_the_last_event_id_and_dispatches_a_priming_event() -> None:
    # SEP-1699: a priming event (an id, empty data) and a retry time come first; the id persists.
    lines = _lines(b"id: s1-0", b"retry: 250", b"data:", b"", b"data: a", b"", b"id: s1-2", b"data: b", b"")
    assert await _events(lines) == [
        SseEvent("message", "", "s1-0", 250),
        SseEvent("message", "a", "s1-0"),
        SseEvent("message", "b", "s1-2"),
    ]


async def test_iter_sse_ignores_blank_lines_without_data() -> None:
    assert await _events(_lines(b"", b"event: only", b"", b"data: d", b"")) == [SseEvent("message", "d")]


async def test_events_split_across_chunks_with_crlf_and_lf_are_parsed(client: HttpClient, server: str) -> None:
    async with client.request("GET", f"{server}/sse", body=None, headers={}, timeout=5) as resp:
        assert resp.status == 200 and resp.headers["content-type"].startswith("text/event-stream")
        events = [event async for event in resp.aiter_sse()]
    assert events == [SseEvent("message", "hello"), SseEvent("message", "a\nb"), SseEvent("custom", '{"x": 1}', "7")]


async def test_an_sse_line_over_the_cap_is_a_transport_error(client: HttpClient, server: str) -> None:
    with pytest.raises(HttpTransportError):
        async with client.request("GET", f"{server}/long-line", body=None, headers={}, timeout=30) as resp:
            async for _ in resp.aiter_sse():
                pass


@pytest.mark.parametrize("query", ["", "?chunked=1"], ids=["content-length", "chunked"])
async def test_a_body_over_the_cap_is_a_transport_error(client: HttpClient, server: str, query: str) -> None:
    with pytest.raises(HttpTransportError):
        async with client.request("GET", f"{server}/big{query}", body=None, headers={}, timeout=30) as resp:
            await resp.read()


async def test_a_slow_answer_is_a_timeout(client: HttpClient, server: str) -> None:
    started = time.monotonic()
    with pytest.raises(HttpTimeout):
        async with client.request("GET", f"{server}/slow", body=None, headers={}, timeout=0.3) as resp:
            await resp.read()
    assert time.monotonic() - started < 3


async def test_a_refused_connection_is_a_transport_error(client: HttpClient) -> None:
    with pytest.raises(HttpTransportError):
        async with client.request("GET", f"http://127.0.0.1:{free_port()}/", body=None, headers={}, timeout=2):
            pass


async def test_a_post_sends_its_body_and_headers(client: HttpClient, server: str) -> None:
    headers = {"content-type": "application/json"}
    async with client.request("POST", f"{server}/echo", body=b'{"a":1}', headers=headers, timeout=5) as resp:
        assert (resp.status, await resp.read(), resp.headers["X-Method"]) == (200, b'{"a":1}', "POST")


async def test_a_body_that_stalls_inside_the_block_is_a_timeout(client: HttpClient, server: str) -> None:
    started = time.monotonic()
    with pytest.raises(HttpTimeout):
        async with client.request("GET", f"{server}/stall", body=None, headers={}, timeout=0.5) as resp:
            assert resp.status == 200  # the head arrived in time; the body does not
            await resp.read()
    assert time.monotonic() - started < 3


async def test_an_error_of_the_caller_inside_the_block_propagates_unchanged(client: HttpClient, server: str) -> None:
    headers = {"content-type": "application/json"}
    with pytest.raises(LookupError):
        async with client.request("POST", f"{server}/echo", body=b"{}", headers=headers, timeout=5):
            raise LookupError("the caller's own")
    # The connection was released: the client still works.
    async with client.request("POST", f"{server}/echo", body=b"[]", headers=headers, timeout=5) as resp:
        assert await resp.read() == b"[]"
