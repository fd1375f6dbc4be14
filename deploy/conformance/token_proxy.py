"""Test-only reverse proxy that adds a bearer token: the conformance suite sends none.

``make conformance`` points the MCP conformance suite at this proxy to test the gateway. Every
request to ``http://127.0.0.1:<port><any path>`` is forwarded to one fixed target URL (the
gateway's ``/mcp/<server>``) with the same method, query string, headers and body, except:

* ``Authorization`` is replaced by ``Bearer <token>``;
* header values lose their surrounding whitespace (RFC 9110 §5.5; so the gateway never sees
  the suite's ``Mcp-Name: "  test_simple_text  "`` raw, only as an RFC-conforming
  intermediary would hand it on);
* hop-by-hop headers (RFC 9110 §7.6.1: ``Connection``, ``Keep-Alive``, ``TE``, ``Trailer``,
  ``Transfer-Encoding``, ``Upgrade``, ``Proxy-*``) and ``Content-Length`` (recomputed) are
  dropped.

``Host`` and ``Origin`` are passed through unchanged, so the gateway sees what the suite sent
(its DNS-rebinding scenario sends a foreign ``Host``): the gateway must therefore accept this
proxy's authority as its public one (``GATEWAY_PUBLIC_URL=http://127.0.0.1:<proxy port>``).
Responses are streamed back as they arrive (SSE included), status and headers unchanged
apart from hop-by-hop ones; a client that disconnects closes the upstream response too.
An unreachable target answers 502 ``{"error": "bad_gateway"}``.

Usage (the token comes from the environment, never from argv)::

    CONFORMANCE_TOKEN=<jwt> python deploy/conformance/token_proxy.py \\
        --port 8090 --target http://127.0.0.1:8081/mcp/conformance

``GET /_proxy_health`` answers ``200 {"status": "ok"}`` without forwarding.
Binds loopback only. NOT for production: it hands its token to anyone who can connect.
"""

from __future__ import annotations

import argparse
import os
import sys

import anyio
import httpx
from starlette.types import Message, Receive, Scope, Send

__all__ = ["HEALTH_PATH", "HOP_BY_HOP", "TokenProxy", "main"]

HEALTH_PATH = "/_proxy_health"
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
_DROP_REQUEST = HOP_BY_HOP | {b"authorization", b"content-length"}
_DROP_RESPONSE = HOP_BY_HOP | {b"content-length"}
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


class TokenProxy:
    """ASGI app forwarding every HTTP request to ``target`` with ``Authorization: Bearer <token>``.

    Args:
        target: Absolute URL every request goes to (its query string is replaced by the
            request's own).
        token: The bearer token to inject.
    """

    def __init__(self, target: str, token: str) -> None:
        self._target = httpx.URL(target)
        self._auth = f"Bearer {token}".encode("latin-1")
        self._client: httpx.AsyncClient | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            await self._http(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                # No read timeout: an SSE stream may stay quiet for as long as the client listens.
                timeout = httpx.Timeout(connect=5.0, read=None, write=30.0, pool=5.0)
                self._client = httpx.AsyncClient(timeout=timeout, follow_redirects=False, trust_env=False)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._client is not None:
                    await self._client.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] == HEALTH_PATH:
            await _respond(send, 200, b'{"status": "ok"}')
            return
        assert self._client is not None, "lifespan startup did not run"
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        # Field values without their optional whitespace (RFC 9110 §5.5), as any intermediary
        # parses them; the HTTP client refuses to send a value with leading whitespace.
        headers = [(k, v.strip(b" \t")) for k, v in scope["headers"] if k.lower() not in _DROP_REQUEST]
        headers.append((b"authorization", self._auth))
        url = self._target.copy_with(query=scope.get("query_string") or None)
        request = self._client.build_request(scope["method"], url, headers=headers, content=bytes(body))
        try:
            response = await self._client.send(request, stream=True)
        except httpx.HTTPError:
            await _respond(send, 502, b'{"error": "bad_gateway"}')
            return
        try:
            async with anyio.create_task_group() as tg:

                async def watch_disconnect() -> None:
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    tg.cancel_scope.cancel()

                tg.start_soon(watch_disconnect)
                await _relay(response, send)
                tg.cancel_scope.cancel()
        finally:
            await response.aclose()


async def _relay(response: httpx.Response, send: Send) -> None:
    headers = [(k, v) for k, v in response.headers.raw if k.lower() not in _DROP_RESPONSE]
    await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
    try:
        async for chunk in response.aiter_raw():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
    except httpx.HTTPError:
        pass  # the target broke the stream: end ours, as it did
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _respond(send: Send, status: int, body: bytes) -> None:
    start: Message = {
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
    }
    await send(start)
    await send({"type": "http.response.body", "body": body})


def main(argv: list[str] | None = None) -> None:
    """CLI: ``--port N --target URL [--host 127.0.0.1]``; the token is ``$CONFORMANCE_TOKEN``."""
    parser = argparse.ArgumentParser(description="Test-only bearer-token injecting reverse proxy.")
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, required=True, help="TCP port")
    parser.add_argument("--target", required=True, help="URL every request is forwarded to")
    parser.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"])
    args = parser.parse_args(argv)
    if args.host not in LOOPBACK_HOSTS:
        parser.error(f"--host must be a loopback address; got {args.host!r}")
    token = os.environ.get("CONFORMANCE_TOKEN", "")
    if not token:
        sys.exit("CONFORMANCE_TOKEN is not set")
    import uvicorn

    uvicorn.run(
        TokenProxy(args.target, token),
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        lifespan="on",
        timeout_graceful_shutdown=3,
        server_header=False,  # the target's own headers are relayed
        date_header=False,
    )


if __name__ == "__main__":
    main()
