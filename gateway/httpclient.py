"""The hot-path HTTP client port: one interface, two swappable backends.

The data plane makes two HTTP round trips per governed call (OPA, upstream),
so the client's own overhead is on the critical path. ``make bench`` decides
the default: on loopback, one OPA round trip measured 0.35 ms with aiohttp
against 0.95 ms with httpx (``deploy/bench/clients.py``), so ``aiohttp`` is
the default and ``httpx`` stays available (``GATEWAY_HTTP_CLIENT=httpx``).

Server-sent events (WHATWG HTML §9.2.6) are parsed by :func:`iter_sse` over
:func:`split_lines` for both backends, so both enforce the same
:data:`MAX_RESPONSE_BYTES` cap on one line.

Both backends keep connections alive and pooled; neither follows redirects
nor keeps cookies (an MCP proxy must not).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol

import aiohttp
import aiohttp.http_exceptions
import anyio
import httpx

__all__ = [
    "AiohttpClient",
    "HttpClient",
    "HttpResponse",
    "HttpTimeout",
    "HttpTransportError",
    "HttpxClient",
    "MAX_RESPONSE_BYTES",
    "SseEvent",
    "create_http_client",
    "iter_sse",
    "split_lines",
]


@dataclass(frozen=True, slots=True)
class SseEvent:
    """One dispatched event: ``event`` defaults to ``message``.

    ``id`` is the stream's last event id when the event was dispatched (it persists from
    earlier events, as the standard's ``lastEventId``); ``retry`` the reconnection time in
    milliseconds this event set, if any. An event block with an ``id`` or ``retry`` but no
    ``data`` (a priming event, MCP 2025-11-25 SEP-1699) is dispatched with ``data == ""``.
    """

    event: str
    data: str
    id: str | None = None
    retry: int | None = None


async def iter_sse(lines: AsyncIterator[bytes]) -> AsyncIterator[SseEvent]:
    """Turn body lines (terminators stripped) into events.

    Comment lines (``:``) are skipped, ``data`` lines are joined with ``\n``,
    a blank line dispatches; a trailing event without a blank line is dropped,
    as the standard requires. ``id`` (without NUL) and ``retry`` (digits) are kept
    (see :class:`SseEvent`). Source: WHATWG HTML "Server-sent events", 9.2.6.
    """
    event = ""
    data: list[str] = []
    last_id: str | None = None
    retry: int | None = None
    fields = False
    async for raw in lines:
        line = raw.decode("utf-8", errors="replace")
        if not line:
            if data or fields:
                yield SseEvent(event or "message", "\n".join(data), last_id, retry)
            event, data, retry, fields = "", [], None, False
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "data":
            data.append(value)
        elif name == "event":
            event = value
        elif name == "id" and "\x00" not in value:
            last_id, fields = value, True
        elif name == "retry" and value.isdigit():
            retry, fields = int(value), True


class HttpTransportError(Exception):
    """Connection refused/reset, DNS failure or a broken response (any backend)."""


class HttpTimeout(HttpTransportError):
    """No complete answer within the timeout."""


class HttpResponse(Protocol):
    """A response whose body has not been read yet."""

    status: int
    headers: Mapping[str, str]
    """Case-insensitive mapping."""

    async def read(self) -> bytes:
        """The whole body."""
        ...

    def aiter_sse(self) -> AsyncIterator[SseEvent]:
        """The body as server-sent events (``text/event-stream``)."""
        ...


class HttpClient(Protocol):
    """The port the policy engine and the upstream client use."""

    def request(
        self, method: str, url: str, *, body: bytes | None, headers: Mapping[str, str], timeout: float | None
    ) -> contextlib.AbstractAsyncContextManager[HttpResponse]:
        """Send one request; the context releases the connection.

        ``timeout`` is seconds for the whole exchange, body included; None sets no
        deadline at all (a long-lived SSE stream: the caller bounds it with its own
        cancel scope).

        Raises:
            HttpTimeout: Connect or read timed out (``timeout`` seconds overall).
            HttpTransportError: Any other transport failure.
        """
        ...

    async def aclose(self) -> None:
        """Close every pooled connection."""
        ...


MAX_RESPONSE_BYTES = 16 * 1024 * 1024
"""Largest body (or single SSE line) accepted from OPA or an upstream; more is a
transport error (the SDK's own SSE event cap is 1 MiB)."""


async def split_lines(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Split a body into lines (``\n`` or ``\r\n``, terminator stripped), however the
    chunks fall; a last line without a terminator is yielded too.

    Ours rather than a library's: aiohttp's ``readline()`` refuses lines over its buffer
    size with an exception outside ``ClientError``, and httpx's line iterator (used by
    httpx-sse) has no bound at all — and a tool result is one SSE line.

    Raises:
        HttpTransportError: A line longer than :data:`MAX_RESPONSE_BYTES`.
    """
    buf = bytearray()
    async for chunk in chunks:
        search_from = len(buf)
        buf += chunk
        while (end := buf.find(b"\n", search_from)) != -1:
            line = bytes(buf[:end])
            del buf[: end + 1]
            search_from = 0
            yield line.rstrip(b"\r")
        if len(buf) > MAX_RESPONSE_BYTES:
            raise HttpTransportError(f"SSE line exceeds {MAX_RESPONSE_BYTES} bytes")
    if buf:
        yield bytes(buf).rstrip(b"\r")


async def _read_capped(chunks: AsyncIterator[bytes]) -> bytes:
    parts: list[bytes] = []
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > MAX_RESPONSE_BYTES:
            raise HttpTransportError(f"response exceeds {MAX_RESPONSE_BYTES} bytes")
        parts.append(chunk)
    return b"".join(parts)


class _AiohttpResponse:
    __slots__ = ("_resp", "headers", "status")

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self._resp = resp
        self.status = resp.status
        self.headers: Mapping[str, str] = resp.headers

    async def read(self) -> bytes:
        declared = self._resp.content_length
        if declared is not None and declared > MAX_RESPONSE_BYTES:
            raise HttpTransportError(f"response of {declared} bytes exceeds {MAX_RESPONSE_BYTES}")
        return await _read_capped(self._resp.content.iter_any())

    def aiter_sse(self) -> AsyncIterator[SseEvent]:
        return iter_sse(split_lines(self._resp.content.iter_any()))


def _transport_error(exc: BaseException) -> HttpTransportError | None:
    """The port's error for an aiohttp failure (None: not one; it propagates as is)."""
    if isinstance(exc, TimeoutError):
        return HttpTimeout("timed out")
    if isinstance(exc, aiohttp.ClientError | aiohttp.http_exceptions.HttpProcessingError):
        return HttpTransportError(type(exc).__name__)
    return None


class _AiohttpExchange:
    """One request's context (what :meth:`AiohttpClient.request` returns): sends on enter,
    releases the connection on exit; aiohttp's failures, on enter or inside the block,
    leave as :class:`HttpTimeout`/:class:`HttpTransportError` (``from`` the original).

    A plain class rather than ``contextlib.asynccontextmanager``: no generator and no
    wrapper object per request on the hot path.
    """

    __slots__ = ("_client", "_ctx", "_request")

    def __init__(
        self,
        client: aiohttp.ClientSession,
        request: tuple[str, str, bytes | None, Mapping[str, str], aiohttp.ClientTimeout],
    ) -> None:
        self._client = client
        self._request = request
        self._ctx: Any = None

    async def __aenter__(self) -> HttpResponse:
        method, url, body, headers, timeout = self._request
        try:
            self._ctx = self._client.request(
                method, url, data=body, headers=headers, timeout=timeout, allow_redirects=False
            )
            resp = await self._ctx.__aenter__()
        except BaseException as exc:
            mapped = _transport_error(exc)
            if mapped is None:
                raise
            raise _with_timeout(mapped, timeout) from exc
        return _AiohttpResponse(resp)

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            await self._ctx.__aexit__(exc_type, exc, tb)
        except BaseException as failure:
            mapped = _transport_error(failure)
            if mapped is None:
                raise
            raise _with_timeout(mapped, self._request[4]) from failure
        if exc is not None:
            mapped = _transport_error(exc)
            if mapped is not None:
                raise _with_timeout(mapped, self._request[4]) from exc


def _with_timeout(error: HttpTransportError, timeout: aiohttp.ClientTimeout) -> HttpTransportError:
    return HttpTimeout(f"timed out after {timeout.total}s") if isinstance(error, HttpTimeout) else error


class AiohttpClient:
    """:class:`HttpClient` on an ``aiohttp.ClientSession`` (keep-alive pool).

    Args:
        max_connections: Pool size across all hosts.
    """

    def __init__(self, *, max_connections: int = 200) -> None:
        connector = aiohttp.TCPConnector(limit=max_connections, keepalive_timeout=60, ttl_dns_cache=300)
        self._session = aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=True,
            skip_auto_headers=("User-Agent",),
        )
        self._timeouts: dict[float | None, aiohttp.ClientTimeout] = {}

    def _timeout(self, seconds: float | None) -> aiohttp.ClientTimeout:
        """One immutable ``ClientTimeout`` per distinct value (a handful: OPA's, each upstream's)."""
        timeout = self._timeouts.get(seconds)
        if timeout is None:
            if len(self._timeouts) >= 64:  # bounded, whatever the callers pass
                self._timeouts.clear()
            timeout = self._timeouts[seconds] = aiohttp.ClientTimeout(total=seconds)
        return timeout

    def request(
        self, method: str, url: str, *, body: bytes | None, headers: Mapping[str, str], timeout: float | None
    ) -> contextlib.AbstractAsyncContextManager[HttpResponse]:
        # aiohttp copies the headers into its own multidict: no copy of ours is needed.
        return _AiohttpExchange(self._session, (method, url, body, headers, self._timeout(timeout)))

    async def aclose(self) -> None:
        await self._session.close()


class _HttpxResponse:
    def __init__(self, resp: httpx.Response) -> None:
        self._resp = resp
        self.status = resp.status_code
        self.headers: Mapping[str, str] = resp.headers

    async def read(self) -> bytes:
        return await _read_capped(self._resp.aiter_bytes())

    def aiter_sse(self) -> AsyncIterator[SseEvent]:
        return iter_sse(split_lines(self._resp.aiter_bytes()))


class HttpxClient:
    """:class:`HttpClient` on an ``httpx.AsyncClient``."""

    def __init__(self, *, max_connections: int = 200) -> None:
        limits = httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections, keepalive_expiry=60
        )
        self._client = httpx.AsyncClient(limits=limits, follow_redirects=False)

    @contextlib.asynccontextmanager
    async def request(
        self, method: str, url: str, *, body: bytes | None, headers: Mapping[str, str], timeout: float | None
    ) -> AsyncIterator[HttpResponse]:
        try:
            # httpx's timeout is per read; fail_after makes it a deadline for the whole exchange.
            with anyio.fail_after(timeout):
                async with self._client.stream(method, url, content=body, headers=headers, timeout=timeout) as resp:
                    yield _HttpxResponse(resp)
        except (httpx.TimeoutException, TimeoutError) as exc:
            raise HttpTimeout(f"timed out after {timeout}s") from exc
        except httpx.HTTPError as exc:
            raise HttpTransportError(type(exc).__name__) from exc

    async def aclose(self) -> None:
        await self._client.aclose()


def create_http_client(kind: str, *, max_connections: int = 200) -> HttpClient:
    """Build the configured backend (``aiohttp`` or ``httpx``)."""
    if kind == "httpx":
        return HttpxClient(max_connections=max_connections)
    return AiohttpClient(max_connections=max_connections)
