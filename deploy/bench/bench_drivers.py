"""The benchmark's MCP clients: raw httpx requests and the ``mcp`` SDK ``Client``, in both eras.

Every driver exposes the same three coroutines, so one case definition serves every
combination of client x era x target (the upstream directly, or the gateway):

* ``call(tool, arguments)`` -- one ``tools/call``; raises :class:`BenchError` on a JSON-RPC
  error or an ``isError`` result (a benchmark of refusals would measure the wrong thing);
* ``list()`` -- one ``tools/list``; returns the tool definitions;
* ``close()`` -- ends the session (``DELETE`` for a 2025-11-25 session).

Eras:

* ``2026-07-28`` -- stateless: each request carries ``_meta`` protocol version and client
  capabilities plus the ``Mcp-Method``/``Mcp-Name`` headers; nothing is set up beforehand.
* ``2025-11-25`` -- ``initialize`` + ``notifications/initialized`` once (not timed), then every
  request carries ``Mcp-Session-Id`` and ``MCP-Protocol-Version``; the answer may be JSON or a
  one-event SSE stream.

Clients:

* :class:`RawClient` -- one shared ``httpx.AsyncClient`` (keep-alive pool), bodies encoded with
  orjson: the thinnest client Python offers, so its own cost is small next to the server's.
* :class:`SdkClient` -- ``mcp.Client`` over ``mcp.client.streamable_http.streamable_http_client``
  (``mode="2026-07-28"`` or ``"legacy"``), its own ``httpx2.AsyncClient``; result caching off.
  Its per-call cost (pydantic models, anyio streams, the dispatcher) is what an application
  using the SDK pays.
"""

from __future__ import annotations

import itertools
from contextlib import AsyncExitStack
from typing import Any

import httpx
import httpx2
import orjson
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

__all__ = ["ERAS", "LEGACY", "MODERN", "BenchError", "Driver", "RawClient", "SdkClient", "open_driver"]

MODERN = "2026-07-28"
LEGACY = "2025-11-25"
ERAS = (MODERN, LEGACY)
_META = {"io.modelcontextprotocol/protocolVersion": MODERN, "io.modelcontextprotocol/clientCapabilities": {}}


class BenchError(RuntimeError):
    """A request the benchmark expected to succeed did not (status, JSON-RPC error, ``isError``)."""


class RawClient:
    """Raw JSON-RPC over one shared ``httpx.AsyncClient``.

    Args:
        http: The shared client (its pool is sized by the caller).
        url: The MCP endpoint (``http://127.0.0.1:<port>/mcp`` or ``.../mcp/<server>``).
        token: Bearer token (the gateway) or None (the upstream).
        era: :data:`MODERN` or :data:`LEGACY`.
    """

    def __init__(self, http: httpx.AsyncClient, url: str, token: str | None, era: str) -> None:
        self._http, self._url, self._era = http, url, era
        self._ids = itertools.count(1)
        self._headers = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
        if token:
            self._headers["authorization"] = f"Bearer {token}"
        self._session_id: str | None = None

    async def open(self) -> RawClient:
        """Run the 2025-11-25 handshake (a no-op for 2026-07-28)."""
        if self._era == LEGACY:
            params = {"protocolVersion": LEGACY, "capabilities": {}, "clientInfo": {"name": "bench", "version": "1"}}
            body = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": params}
            resp = await self._http.post(self._url, content=orjson.dumps(body), headers=self._headers)
            _answer(resp, 0)
            self._session_id = resp.headers.get("mcp-session-id")
            self._headers["mcp-protocol-version"] = LEGACY
            if self._session_id:
                self._headers["mcp-session-id"] = self._session_id
            note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
            (await self._http.post(self._url, content=orjson.dumps(note), headers=self._headers)).raise_for_status()
        return self

    async def _request(self, method: str, params: dict[str, Any], name: str | None = None) -> dict[str, Any]:
        msg_id = next(self._ids)
        headers = self._headers
        if self._era == MODERN:
            params = {**params, "_meta": _META}
            headers = {**headers, "mcp-protocol-version": MODERN, "mcp-method": method}
            if name is not None:
                headers["mcp-name"] = name
        body = orjson.dumps({"jsonrpc": "2.0", "id": msg_id, "method": method, "params": params})
        return _answer(await self._http.post(self._url, content=body, headers=headers), msg_id)

    async def call(self, tool: str, arguments: dict[str, Any]) -> None:
        result = await self._request("tools/call", {"name": tool, "arguments": arguments}, tool)
        if result.get("isError"):
            raise BenchError(f"tools/call {tool}: isError: {str(result)[:300]}")

    async def list(self) -> list[dict[str, Any]]:
        tools: list[dict[str, Any]] = (await self._request("tools/list", {}))["tools"]
        return tools

    async def close(self) -> None:
        if self._session_id:
            try:
                await self._http.delete(self._url, headers=self._headers)
            except httpx.HTTPError:
                pass


def _answer(resp: httpx.Response, msg_id: int) -> dict[str, Any]:
    """The ``result`` of the JSON-RPC response to ``msg_id`` in a JSON or SSE body."""
    if resp.status_code != 200:
        raise BenchError(f"HTTP {resp.status_code}: {resp.text[:300]}")
    if resp.headers.get("content-type", "").startswith("text/event-stream"):
        messages = [orjson.loads(line[5:]) for line in resp.content.splitlines() if line.startswith(b"data:")]
        messages = [m for m in messages if m and m.get("id") == msg_id]
        if not messages:
            raise BenchError(f"no response to id {msg_id} in the SSE stream")
        msg = messages[-1]
    else:
        msg = orjson.loads(resp.content)
    if "error" in msg:
        raise BenchError(f"JSON-RPC error: {str(msg['error'])[:300]}")
    result: dict[str, Any] = msg["result"]
    return result


class SdkClient:
    """The ``mcp`` SDK ``Client`` (streamable HTTP), one session per instance.

    Args:
        url: The MCP endpoint.
        token: Bearer token (the gateway) or None (the upstream).
        era: :data:`MODERN` (``mode="2026-07-28"``) or :data:`LEGACY` (``mode="legacy"``).
    """

    def __init__(self, url: str, token: str | None, era: str) -> None:
        self._url, self._token, self._era = url, token, era
        self._stack = AsyncExitStack()
        self._client: Client | None = None

    async def open(self) -> SdkClient:
        """Connect (the handshake for 2025-11-25) and list the tools once (a 2026-07-28 client
        must have listed a tool before calling it)."""
        headers = {"authorization": f"Bearer {self._token}"} if self._token else {}
        http = await self._stack.enter_async_context(
            httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(60, read=120))
        )
        mode = "legacy" if self._era == LEGACY else MODERN
        client = Client(streamable_http_client(self._url, http_client=http), mode=mode, cache=None)
        self._client = await self._stack.enter_async_context(client)
        await self._client.list_tools()
        return self

    async def call(self, tool: str, arguments: dict[str, Any]) -> None:
        assert self._client is not None
        result = await self._client.call_tool(tool, arguments)
        if result.is_error:
            raise BenchError(f"tools/call {tool}: isError: {str(result.content)[:300]}")

    async def list(self) -> list[Any]:
        assert self._client is not None
        return list((await self._client.list_tools()).tools)

    async def close(self) -> None:
        await self._stack.aclose()


Driver = RawClient | SdkClient


async def open_driver(kind: str, http: httpx.AsyncClient, url: str, token: str | None, era: str) -> Driver:
    """An opened driver: ``kind`` is ``"raw"`` or ``"sdk"``."""
    if kind == "raw":
        return await RawClient(http, url, token, era).open()
    if kind == "sdk":
        return await SdkClient(url, token, era).open()
    raise ValueError(f"unknown client kind {kind!r}")
