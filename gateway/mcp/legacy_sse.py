"""Upstream MCP client for the 2024-11-05 HTTP+SSE transport ("legacy SSE"), pooled.

Source: MCP 2024-11-05 ``basic/transports`` "HTTP with SSE":

* the client opens ``GET <sse url>`` (``Accept: text/event-stream``) and keeps it
  open; the server's first event is ``endpoint``, whose data is the URI to POST
  messages to (usually relative, e.g. ``/messages?sessionId=…``). It is resolved
  against the SSE URL (RFC 3986 §5) and must stay on the SSE URL's origin
  (scheme, host, port): otherwise the upstream could make the gateway POST
  anywhere, so it is refused (``upstream_protocol_error``);
* every client message is one POST to that URI (answered ``202 Accepted``); every
  server message, responses included, arrives as a ``message`` event on the GET
  stream. Responses are matched to requests by JSON-RPC ``id``, so concurrent
  calls share one session.

The session starts with ``initialize`` (``protocolVersion: "2024-11-05"``; any
handshake-era revision the server answers is accepted) and
``notifications/initialized``. When the stream ends or breaks, requests waiting
on it fail (``upstream_unavailable``: a call may have run, so it is not
repeated) and the next request opens a new stream. A POST answered 404 (the
session is unknown to the server, e.g. after its restart) was not processed, so
it is retried once on a fresh session. Stream lines are parsed by
:func:`gateway.httpclient.iter_sse` with its :data:`~gateway.httpclient.MAX_RESPONSE_BYTES`
line cap (a longer line breaks the stream). Server-to-client notifications and
requests are relayed to the client of the request they belong to, as
:class:`~gateway.mcp.channel.InFlight` attributes them (``ping`` is answered ``{}``);
a cancelled request is announced with ``notifications/cancelled``.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin, urlsplit

import anyio
import orjson
from anyio.abc import TaskGroup, TaskStatus

from gateway.errors import UpstreamError, UpstreamProtocolError, UpstreamTimeout, UpstreamUnavailable
from gateway.httpclient import HttpClient, HttpTimeout, HttpTransportError
from gateway.mcp._common import CLIENT_INFO, Pending, loads_message, safe_url
from gateway.mcp.channel import (
    ClientChannel,
    InFlight,
    UseCount,
    cancelled_notification,
    is_notification,
    is_server_request,
    keep_listening,
    listen_on,
)
from gateway.mcp.credential import UpstreamCredential, UpstreamCredentialRejected, adopt_renewal, with_query
from gateway.mcp.messages import HANDSHAKE_VERSIONS

__all__ = ["LEGACY_SSE_VERSION", "LegacySseUpstream"]

log = logging.getLogger("gateway.upstream")

LEGACY_SSE_VERSION = "2024-11-05"
"""The revision the gateway requests in ``initialize`` over this transport."""
_DEFAULT_PORTS = {"http": 80, "https": 443}
_STREAM_HEADERS = {"accept": "text/event-stream", "cache-control": "no-store"}
_POST_HEADERS = {"content-type": "application/json", "accept": "application/json, text/event-stream"}


class _SessionGone(Exception):
    """The POST endpoint answered 404: the server no longer knows the session."""


@dataclass(eq=False)
class _Stream:
    """One GET stream (= one upstream session) and the requests waiting on it."""

    endpoint: str = ""
    protocol_version: str | None = None
    alive: bool = True
    closed: bool = False
    scope: anyio.CancelScope | None = None
    done: anyio.Event = field(default_factory=anyio.Event)
    pending: Pending = field(default_factory=Pending)
    inflight: InFlight = field(default_factory=lambda: InFlight(30.0))
    material: UpstreamCredential | None = None
    """The credential material the ``GET`` stream was opened with."""

    def close(self) -> None:
        self.closed = True
        if self.scope is not None:
            self.scope.cancel()

    def fail_pending(self, reason: str) -> None:
        self.alive = False
        self.pending.fail(UpstreamUnavailable, reason)


class LegacySseUpstream:
    """A pooled session to one 2024-11-05 HTTP+SSE upstream (implements ``Upstream``).

    Args:
        url: The SSE endpoint, e.g. ``http://127.0.0.1:3001/sse``.
        http: The shared client; the stream is one long request without a deadline
            (``timeout=None``) until the ``endpoint`` event, which must come within ``timeout``.
        spawner: Runs the stream reader (the pool's task group); a reader never raises into it.
        timeout: Seconds for connecting (up to the ``endpoint`` event) and for the
            handshake; seconds one request/response exchange may stay idle (a message
            relayed for it restarts the clock, see :class:`~gateway.mcp.channel.InFlight`).
        client_capabilities: Declared in ``initialize`` (the capabilities of the client
            this session serves; ``{}`` for the gateway's own).
        streams: The client for the long-lived ``GET`` stream (default: ``http``).
        max_duration: Most seconds one exchange may take, however lively (default: no limit).
    """

    def __init__(
        self,
        url: str,
        http: HttpClient,
        *,
        spawner: TaskGroup,
        timeout: float,
        client_capabilities: dict[str, Any] | None = None,
        streams: HttpClient | None = None,
        max_duration: float | None = None,
    ) -> None:
        self.url = url
        self._credential: UpstreamCredential | None = None
        self._max_duration = math.inf if max_duration is None else max(timeout, max_duration)
        self._streams = streams or http
        self._capabilities = client_capabilities or {}
        self._safe_url = safe_url(url)
        self._http = http
        self._spawner = spawner
        self._timeout = timeout
        self._ids = itertools.count(1)
        self._stream: _Stream | None = None
        self._lock = anyio.Lock()
        self._closed = False
        self._use = UseCount()

    @property
    def busy(self) -> bool:
        """A request or a listener is using the session (the pool does not close it then)."""
        return self._use.busy

    @property
    def protocol_version(self) -> str | None:
        """The negotiated upstream revision, while a session is open."""
        stream = self._stream
        return stream.protocol_version if stream is not None and stream.alive else None

    async def request(
        self, method: str, params: dict[str, Any], channel: ClientChannel | None = None
    ) -> dict[str, Any]:
        """Send one request on the pooled session; open (or re-open) the session first if needed.

        Messages the upstream sends meanwhile are relayed to ``channel`` as
        :class:`~gateway.mcp.channel.InFlight` attributes them.

        Returns:
            The upstream's JSON-RPC response message (``result`` or ``error``).

        Raises:
            UpstreamUnavailable: Connection refused/reset, HTTP 5xx, the stream lost
                while waiting, or this upstream was closed (removed from the projection).
            UpstreamTimeout: No ``endpoint`` event, or no response, within the timeout.
            UpstreamProtocolError: Not MCP over HTTP+SSE: a cross-origin ``endpoint``,
                no event stream, a refused ``initialize``, a POST refused with 4xx.
        """
        try:
            with self._use.using(), anyio.fail_after(self._max_duration):
                try:
                    return await self._request(method, params, channel)
                except UpstreamCredentialRejected:
                    if not await self._renew():
                        raise
                    # A 401 means the upstream processed nothing: one retry with the new material.
                    return await self._request(method, params, channel)
        except TimeoutError:
            raise UpstreamTimeout(f"upstream {self._safe_url} did not finish within {self._max_duration}s") from None

    async def _renew(self) -> bool:
        """After a 401 (the ``GET`` or a message ``POST``): other material from the refused
        material's source (once), and no stream opened with the refused material. False when
        there is none to try."""
        refused = self._credential
        if refused is None or not await adopt_renewal(refused, lambda: self._credential, self.use_credential):
            return False
        log.info("upstream %s refused a credential (HTTP 401): retrying once with renewed material", self._safe_url)
        stream = self._stream
        if stream is not None and stream.material is not None and stream.material.same_material(refused):
            self._drop(stream)
        return True

    async def _request(self, method: str, params: dict[str, Any], channel: ClientChannel | None) -> dict[str, Any]:
        try:
            for attempt in range(2):
                stream = await self._connect()
                try:
                    return await self._exchange(stream, method, params, channel)
                except _SessionGone:
                    self._drop(stream)
                    if attempt:
                        raise UpstreamProtocolError(f"upstream {self._safe_url} refused a fresh session") from None
            raise AssertionError("unreachable")  # pragma: no cover
        except UpstreamError:
            raise
        except Exception as exc:  # adapter boundary: nothing foreign escapes as a 500
            raise UpstreamProtocolError(f"upstream {self._safe_url}: {type(exc).__name__}") from exc

    async def listen(
        self, notifications: dict[str, Any], sink: ClientChannel, ready: Callable[[], None] | None = None
    ) -> None:
        """Deliver notifications outside any call to ``sink`` until cancelled
        (:func:`~gateway.mcp.channel.listen_on` on each stream in turn)."""

        async def once() -> None:
            stream = await self._connect()

            async def request(method: str, params: dict[str, Any]) -> Any:
                return await self._exchange(stream, method, params)

            await listen_on(stream.inflight.listeners, notifications, sink, request, stream.done.wait, ready)

        with self._use.using():
            await keep_listening(f"upstream {self._safe_url}", once, lambda: True)

    async def aclose(self) -> None:
        """Close the stream (ends the upstream session); later requests are refused."""
        self._closed = True
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.close()
            with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                await stream.done.wait()

    # ------------------------------------------------------------ session
    async def _connect(self) -> _Stream:
        async with self._lock:
            if self._closed:
                raise UpstreamUnavailable(f"upstream {self._safe_url} was removed from the projection")
            if self._stream is not None and self._stream.alive:
                return self._stream
            stream = _Stream(inflight=InFlight(self._timeout))
            try:
                await self._spawner.start(self._read_stream, stream)
                init = {
                    "protocolVersion": LEGACY_SSE_VERSION,
                    "capabilities": self._capabilities,
                    "clientInfo": CLIENT_INFO,
                }
                msg = await self._exchange(stream, "initialize", init)
                result = msg.get("result")
                if not isinstance(result, dict):
                    raise UpstreamProtocolError(f"upstream {self._safe_url} refused initialize")
                negotiated = result.get("protocolVersion")
                if negotiated not in HANDSHAKE_VERSIONS:
                    raise UpstreamProtocolError(
                        f"upstream {self._safe_url} negotiated unsupported version {negotiated!r}"
                    )
                stream.protocol_version = str(negotiated)
                await self._post(stream, {"jsonrpc": "2.0", "method": "notifications/initialized"})
            except BaseException:
                stream.close()
                raise
            self._stream = stream
            log.info("upstream %s: legacy SSE session, protocol %s", self._safe_url, stream.protocol_version)
            return stream

    def _drop(self, stream: _Stream) -> None:
        stream.close()
        if self._stream is stream:
            self._stream = None

    def use_credential(self, credential: UpstreamCredential | None) -> None:
        """Send ``credential``'s headers and query parameters with the stream's ``GET`` and
        every message ``POST`` from now on (a ``GET`` already open keeps what it had)."""
        self._credential = credential

    def _resolve_endpoint(self, data: str) -> str:
        """The POST URI of an ``endpoint`` event, absolute; refused unless on the SSE URL's origin."""
        try:
            endpoint = urljoin(self.url, data.strip())
            base, target = urlsplit(self.url), urlsplit(endpoint)
            origin = (base.scheme, base.hostname, base.port or _DEFAULT_PORTS.get(base.scheme))
            other = (target.scheme, target.hostname, target.port or _DEFAULT_PORTS.get(target.scheme))
        except ValueError:
            raise UpstreamProtocolError(f"upstream {self._safe_url} sent a malformed endpoint") from None
        if not data.strip() or other != origin:
            raise UpstreamProtocolError(
                f"upstream {self._safe_url} sent an endpoint on another origin ({safe_url(endpoint)}); refused"
            )
        return endpoint

    async def _read_stream(self, stream: _Stream, *, task_status: TaskStatus[None]) -> None:
        """Hold the GET stream: report the endpoint (``task_status``), then dispatch messages until it ends.

        Before ``started`` every failure is raised to the connecting request (as an
        ``UpstreamError``); after it nothing is raised into the pool's task group.
        """
        started = False
        try:
            with anyio.CancelScope() as scope:
                stream.scope = scope
                if stream.closed:
                    scope.cancel()
                scope.deadline = anyio.current_time() + self._timeout
                cred = stream.material = self._credential
                url = with_query(self.url, cred.query) if cred is not None else self.url
                headers = {**cred.headers, **_STREAM_HEADERS} if cred is not None else _STREAM_HEADERS
                async with self._streams.request("GET", url, body=None, headers=headers, timeout=None) as resp:
                    ctype = resp.headers.get("content-type", "")
                    if resp.status == 401 and cred is not None:
                        raise UpstreamCredentialRejected(f"upstream {self._safe_url} refused the credential (HTTP 401)")
                    if resp.status >= 500:
                        raise UpstreamUnavailable(f"upstream {self._safe_url} answered HTTP {resp.status}")
                    if resp.status != 200 or not ctype.startswith("text/event-stream"):
                        raise UpstreamProtocolError(
                            f"upstream {self._safe_url} answered HTTP {resp.status} {ctype!r}, not an event stream"
                        )
                    async for event in resp.aiter_sse():
                        if event.event == "endpoint" and not started:
                            stream.endpoint = self._resolve_endpoint(event.data)
                            scope.deadline = math.inf
                            started = True
                            task_status.started()
                        elif event.event == "message" and started and event.data:
                            await self._dispatch(stream, event.data)
            if not started:
                if scope.cancelled_caught and not stream.closed:
                    raise UpstreamTimeout(f"upstream {self._safe_url} sent no endpoint within {self._timeout}s")
                raise UpstreamUnavailable(f"upstream {self._safe_url} closed the stream before its endpoint event")
            if not stream.closed:
                log.warning("upstream %s: the SSE stream ended; the next request reconnects", self._safe_url)
        except HttpTimeout as exc:
            if not started:
                raise UpstreamTimeout(f"upstream {self._safe_url} timed out") from exc
            log.warning("upstream %s: the SSE stream timed out", self._safe_url)
        except HttpTransportError as exc:
            if not started:
                raise UpstreamUnavailable(f"upstream {self._safe_url}: {exc}") from exc
            log.warning("upstream %s: the SSE stream broke (%s); the next request reconnects", self._safe_url, exc)
        except UpstreamError:
            if not started:
                raise
            log.warning("upstream %s: the SSE stream failed", self._safe_url, exc_info=True)
        except Exception as exc:  # adapter boundary: never into the pool's task group
            if not started:
                raise UpstreamProtocolError(f"upstream {self._safe_url}: {type(exc).__name__}") from exc
            log.exception("upstream %s: the SSE stream reader failed", self._safe_url)
        finally:
            stream.fail_pending(f"upstream {self._safe_url}: the SSE stream was lost")
            stream.done.set()

    async def _dispatch(self, stream: _Stream, data: str) -> None:
        try:
            msg = loads_message(data, self._safe_url)
        except UpstreamProtocolError:
            log.warning("upstream %s sent an SSE message that is not a JSON object; ignored", self._safe_url)
            return
        if is_server_request(msg):  # answered off the reader: asking a client takes a while
            self._spawner.start_soon(self._answer, stream, msg)
            return
        if is_notification(msg):
            await stream.inflight.notification(msg)
            return
        stream.pending.deliver(msg)

    async def _answer(self, stream: _Stream, msg: dict[str, Any]) -> None:
        try:
            await self._post(stream, await stream.inflight.answer(msg))
        except Exception:  # noqa: BLE001 - best effort; never into the pool's task group
            log.debug("upstream %s: could not answer %s", self._safe_url, msg["method"])

    # ------------------------------------------------------------ messages
    async def _post(self, stream: _Stream, message: dict[str, Any]) -> None:
        try:
            cred = self._credential
            endpoint = with_query(stream.endpoint, cred.query) if cred is not None else stream.endpoint
            headers = {**cred.headers, **_POST_HEADERS} if cred is not None else _POST_HEADERS
            async with self._http.request(
                "POST", endpoint, body=orjson.dumps(message), headers=headers, timeout=self._timeout
            ) as resp:
                await resp.read()
                status = resp.status
        except HttpTimeout as exc:
            raise UpstreamTimeout(f"upstream {self._safe_url} timed out after {self._timeout}s") from exc
        except HttpTransportError as exc:
            raise UpstreamUnavailable(f"upstream {self._safe_url}: {exc}") from exc
        if status == 404:
            raise _SessionGone
        if status == 401 and cred is not None:
            raise UpstreamCredentialRejected(f"upstream {self._safe_url} refused the credential (HTTP 401)")
        if status >= 500:
            raise UpstreamUnavailable(f"upstream {self._safe_url} answered a message with HTTP {status}")
        if not 200 <= status < 300:
            raise UpstreamProtocolError(f"upstream {self._safe_url} refused a message with HTTP {status}")

    async def _exchange(
        self, stream: _Stream, method: str, params: dict[str, Any], channel: ClientChannel | None = None
    ) -> dict[str, Any]:
        if not stream.alive:
            raise UpstreamUnavailable(f"upstream {self._safe_url}: the SSE stream was lost")
        req_id = next(self._ids)
        slot = stream.pending.open(req_id)
        clock = anyio.CancelScope(deadline=anyio.current_time() + self._timeout)
        key, params = stream.inflight.enter(params, channel, clock)
        try:
            with clock:
                await self._post(stream, {"jsonrpc": "2.0", "id": req_id, "method": method, "params": params})
                await slot.event.wait()
        except anyio.get_cancelled_exc_class():
            if method != "initialize":  # the client cancelled: tell the upstream (best effort)
                with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                    await self._post_quietly(stream, cancelled_notification(req_id))
            raise
        finally:
            stream.pending.close(req_id)
            stream.inflight.leave(key)
        if clock.cancelled_caught:
            raise UpstreamTimeout(f"upstream {self._safe_url} was idle for {self._timeout}s")
        return Pending.outcome(slot)

    async def _post_quietly(self, stream: _Stream, message: dict[str, Any]) -> None:
        try:
            await self._post(stream, message)
        except (UpstreamError, _SessionGone):
            log.debug("upstream %s: a notification was not delivered", self._safe_url)
