"""An API source as the data plane sees it: an MCP ``Upstream`` whose ``tools/call`` is one REST call.

:class:`ApiPool` keeps one :class:`ApiUpstream` per API source (by name and
:meth:`~gateway.apiadapter.binding.ApiSource.address`, so a source whose record changes in a
new projection gets a new one), each with its own ``httpx.AsyncClient`` over
:class:`~gateway.apiadapter.guard.GuardedTransport` (no redirects followed by httpx, no
proxies or environment, connections only to addresses the source may reach).
:meth:`ApiPool.get` hands out a light object bound to the caller's brokered credential that
satisfies :class:`gateway.mcp.upstream.Upstream`.

One ``tools/call``:

1. the tool's operation is looked up (unknown: JSON-RPC error ``-32602``; any method other
   than ``tools/call``: ``-32601``);
2. :func:`~gateway.apiadapter.request.build_request` makes the request (an argument that
   cannot be sent: tool error ``invalid_arguments``);
3. it is sent, the whole call — renewal and redirects included — within the source's
   ``timeout`` (else the pool's), else :class:`~gateway.errors.UpstreamTimeout`; the body is
   read up to the source's ``max_response_bytes`` (raw and decoded; ``gzip``/``deflate`` are
   decoded in bounded steps): larger is tool error ``upstream_response_too_large`` and nothing
   more is read;
4. a **401** to a request sent with a credential that has a ``renew`` hook:
   :func:`~gateway.mcp.credential.renewed` is asked once and, with other material, the
   request is sent once more; a 401 after that is the ``api_unauthorized`` tool error;
5. redirects: off by default (tool error ``upstream_redirect``); with the source's
   ``follow_redirects``, at most :data:`MAX_REDIRECTS` same-origin redirects are followed (303,
   and 301/302 after a method other than GET/HEAD, become GET without a body; 307/308 keep
   method and body); a redirect to another origin is never followed (``upstream_redirect``);
6. the response becomes a ``CallToolResult`` (:func:`~gateway.apiadapter.response.to_result`),
   every form of the credential's header and query values (of the renewed material too)
   replaced by ``[redacted]`` first. Decoding and ``outputSchema`` validation are CPU-bound
   (a 4 MiB answer validated against Petstore's schema takes seconds): a body larger than
   :data:`INLINE_BYTES`, or than :data:`INLINE_VALIDATED_BYTES` when it is validated, is
   mapped in a worker thread, at most :data:`MAPPING_THREADS` at once per pool, so the data
   plane's event loop keeps serving meanwhile (the hop costs ~0.2 ms; smaller bodies map
   inline). A response that cannot be mapped (JSON nested too deeply for validation or
   re-serialisation, an undecodable text) is the tool error ``upstream_response_invalid``.

Transport failures raise :class:`~gateway.errors.UpstreamUnavailable`; an address the source
may not reach raises :class:`~gateway.errors.UpstreamAddressRefused` (nothing was sent). Log
lines name the source, the method and the path **template** only: never a URL, a query
value, a header or an argument.
"""

from __future__ import annotations

import functools
import itertools
import logging
import ssl
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin, urlsplit, urlunsplit

import anyio
import anyio.to_thread
import httpx
import orjson
from jsonschema.exceptions import SchemaError
from jsonschema.validators import Draft202012Validator, validator_for
from referencing import Registry, Resource
from referencing.exceptions import NoSuchResource

from gateway.apiadapter.binding import ApiSource, Operation
from gateway.apiadapter.guard import GuardedTransport
from gateway.apiadapter.request import ArgumentMappingError, OutgoingRequest, build_request
from gateway.apiadapter.response import OutputValidator, secret_forms, to_result, tool_error
from gateway.errors import UnknownServer, UpstreamAddressRefused, UpstreamTimeout, UpstreamUnavailable
from gateway.mcp.credential import UpstreamCredential, renewed, with_query
from gateway.regexsafe import linear_time

if TYPE_CHECKING:
    from gateway.mcp.channel import ClientChannel
    from gateway.mcp.upstream import Upstream

__all__ = [
    "DEFAULT_TIMEOUT",
    "INLINE_BYTES",
    "INLINE_VALIDATED_BYTES",
    "MAPPING_THREADS",
    "MAX_REDIRECTS",
    "ApiPool",
    "ApiUpstream",
]

log = logging.getLogger("gateway.apiadapter")

DEFAULT_TIMEOUT = 30.0
"""Seconds one call may take when neither the source nor the pool says otherwise."""
MAX_REDIRECTS = 5
"""Most same-origin redirects followed in one call (sources with ``follow_redirects``)."""
INLINE_BYTES = 64 * 1024
"""Largest body mapped on the event loop when no ``outputSchema`` is checked (~3 ms of JSON
decoding and re-serialisation); larger ones are mapped in a worker thread."""
INLINE_VALIDATED_BYTES = 4 * 1024
"""Largest body mapped on the event loop when an ``outputSchema`` is checked (validation
with jsonschema runs at roughly 2-5 ms per KiB of JSON)."""
MAPPING_THREADS = 4
"""Most worker threads mapping responses at once, per :class:`ApiPool` (or lone :class:`ApiUpstream`)."""
_UNMAPPABLE = (RecursionError, LookupError, UnicodeError, ValueError, orjson.JSONEncodeError)
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_METHOD_NOT_FOUND = -32601
_INVALID_PARAMS = -32602


def _refuse_retrieval(uri: str) -> Resource[Any]:
    raise NoSuchResource(ref=uri)  # type: ignore[call-arg]


_NO_FETCH: Registry[Any] = Registry(retrieve=_refuse_retrieval)  # type: ignore[call-arg]
"""Output schemas resolve ``$ref`` inside themselves (``$defs``) only: nothing is ever fetched."""


@dataclass(frozen=True, slots=True)
class _Reply:
    status: int
    content_type: str | None
    location: str | None
    body: bytes | None  # None: larger than the cap
    url: str
    bad_encoding: bool = False


class _TooLarge(Exception):
    pass


class _BadEncoding(Exception):
    pass


def _decode(body: bytes, encoding: str | None, cap: int) -> bytes:
    """``body`` with its ``Content-Encoding`` undone, never producing more than ``cap`` bytes."""
    codings = [c.strip().lower() for c in (encoding or "").split(",") if c.strip()]
    for coding in reversed(codings):
        if coding == "identity":
            continue
        if coding in ("gzip", "x-gzip"):
            attempts = [zlib.MAX_WBITS | 16]
        elif coding == "deflate":
            attempts = [zlib.MAX_WBITS, -zlib.MAX_WBITS]
        else:
            raise _BadEncoding(coding)
        for n, wbits in enumerate(attempts):
            decoder = zlib.decompressobj(wbits)
            try:
                out = decoder.decompress(body, cap + 1)
            except zlib.error:
                if n + 1 < len(attempts):
                    continue
                raise _BadEncoding(coding) from None
            if len(out) > cap or decoder.unconsumed_tail:
                raise _TooLarge
            body = out
            break
    return body


def _without_query(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def _origin(url: str) -> tuple[str, str, int | None]:
    parsed = httpx.URL(url)
    return (parsed.scheme, parsed.host, parsed.port)


def _secret_values(*credentials: UpstreamCredential | None) -> list[str]:
    return [v for c in credentials if c is not None for v in (*c.headers.values(), *c.query.values())]


def _map(
    op: Operation,
    reply: _Reply,
    body: bytes,
    validator: OutputValidator | None,
    secrets: Sequence[tuple[bytes, bytes]],
) -> tuple[dict[str, Any], str | None]:
    return to_result(
        op,
        status=reply.status,
        content_type=reply.content_type,
        body=body,
        url_for_blob=_without_query(reply.url),
        output_validator=validator,
        secrets=secrets,
    )


def _rpc(msg_id: int, *, result: dict[str, Any] | None = None, error: tuple[int, str] | None = None) -> dict[str, Any]:
    if error is not None:
        return {"jsonrpc": "2.0", "id": msg_id, "error": {"code": error[0], "message": error[1]}}
    return {"jsonrpc": "2.0", "id": msg_id, "result": result}


class ApiUpstream:
    """One API source's HTTP client and its ``tools/call`` (see the module docstring).

    Args:
        source: The API source.
        timeout: Seconds one call may take when ``source.timeout`` is None.
        ssl_context: TLS verification settings (default: httpx's).
        max_connections: Most connections to the source at once.
        transport: Replaces the guarded transport (tests only).
        limiter: Bounds the worker threads that map large responses (shared by a pool's
            sources; default: this upstream's own, :data:`MAPPING_THREADS` threads).
    """

    def __init__(
        self,
        source: ApiSource,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        ssl_context: ssl.SSLContext | None = None,
        max_connections: int = 100,
        transport: httpx.AsyncBaseTransport | None = None,
        limiter: anyio.CapacityLimiter | None = None,
    ) -> None:
        self.source = source
        self.deadline = source.timeout if source.timeout is not None else timeout
        """Seconds one call may take, everything included."""
        self._client = httpx.AsyncClient(
            transport=transport
            or GuardedTransport(internal=source.internal, ssl_context=ssl_context, max_connections=max_connections),
            follow_redirects=False,
            trust_env=False,
            timeout=httpx.Timeout(self.deadline),
            headers={"accept-encoding": "gzip, deflate"},
        )
        self._validators: dict[str, OutputValidator | None] = {}
        self._limiter = limiter if limiter is not None else anyio.CapacityLimiter(MAPPING_THREADS)
        self._ids = itertools.count(1)
        self._active = 0
        self._retired = False

    @property
    def closed(self) -> bool:
        """True once the client is closed (the source left the projection)."""
        return self._client.is_closed

    async def request(
        self, method: str, params: dict[str, Any], channel: ClientChannel | None = None
    ) -> dict[str, Any]:
        """:meth:`call` without a credential."""
        return await self.call(method, params, credential=None)

    async def call(
        self, method: str, params: Mapping[str, Any], *, credential: UpstreamCredential | None
    ) -> dict[str, Any]:
        """Answer one JSON-RPC request: a ``tools/call`` becomes one REST call.

        Args:
            method: The JSON-RPC method; only ``tools/call`` is served.
            params: ``{"name": <tool>, "arguments": {...}, ...}``.
            credential: The caller's brokered material for this source, or None.

        Returns:
            A JSON-RPC response: ``result`` holds the ``CallToolResult`` (tool errors
            included); ``error`` ``-32601`` for another method, ``-32602`` for an unknown
            tool or arguments that are not an object.

        Raises:
            UpstreamTimeout: The call did not finish within :attr:`deadline` seconds.
            UpstreamUnavailable: Connecting, sending or reading failed.
            UpstreamAddressRefused: The source's host resolves to an address it may not reach.
        """
        msg_id = next(self._ids)
        if method != "tools/call":
            return _rpc(msg_id, error=(_METHOD_NOT_FOUND, "Method not found"))
        name = params.get("name")
        op = self.source.operations.get(name) if isinstance(name, str) else None
        if op is None:
            return _rpc(msg_id, error=(_INVALID_PARAMS, "Unknown tool"))
        arguments = params.get("arguments")
        if arguments is None:
            arguments = {}
        if not isinstance(arguments, Mapping):
            return _rpc(msg_id, error=(_INVALID_PARAMS, "Invalid params: arguments must be an object"))
        if self.closed:
            raise UpstreamUnavailable(f"API source {self.source.name}: replaced by a newer projection")
        self._active += 1
        try:
            result = await self._call(op, arguments, credential)
        finally:
            self._active -= 1
            if self._retired and self._active == 0:
                with anyio.CancelScope(shield=True):
                    await self._client.aclose()
        return _rpc(msg_id, result=result)

    async def _call(
        self, op: Operation, arguments: Mapping[str, Any], credential: UpstreamCredential | None
    ) -> dict[str, Any]:
        where = f"API source {self.source.name}: {op.method} {op.path}"
        try:
            outgoing = build_request(self.source, op, arguments, credential)
        except ArgumentMappingError as exc:
            log.info("%s: arguments refused (%s)", where, exc.argument or "url")
            return tool_error(f"invalid arguments: {exc}", "invalid_arguments")
        try:
            with anyio.fail_after(self.deadline):
                reply, sent = await self._send(op, outgoing, arguments, credential)
        except TimeoutError:
            log.warning("%s: no answer within %ss", where, self.deadline)
            raise UpstreamTimeout(f"{where}: no answer within {self.deadline}s") from None
        except httpx.TimeoutException as exc:
            log.warning("%s: %s", where, type(exc).__name__)
            raise UpstreamTimeout(f"{where}: {type(exc).__name__}") from None
        except UpstreamAddressRefused as exc:
            log.warning("%s: refused: %s", where, exc)
            raise UpstreamAddressRefused(f"API source {self.source.name}: {exc}") from None
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            log.warning("%s: %s", where, type(exc).__name__)
            raise UpstreamUnavailable(f"{where}: {type(exc).__name__}") from None
        cap = self.source.max_response_bytes
        if reply.body is None:
            log.info("%s -> %s: response over %s bytes", where, reply.status, cap)
            return tool_error(
                f"HTTP {reply.status}: the API's response is larger than {cap} bytes",
                "upstream_response_too_large",
                status=reply.status,
            )
        if reply.bad_encoding:
            log.info("%s -> %s: unsupported content-encoding", where, reply.status)
            return tool_error(
                f"HTTP {reply.status}: the API's response uses an unsupported content-encoding",
                "upstream_response_invalid",
                status=reply.status,
            )
        validator = self._validator(op.tool)
        secrets = secret_forms(_secret_values(credential, sent), reply.content_type)
        mapping = functools.partial(_map, op, reply, reply.body, validator, secrets)
        inline = INLINE_VALIDATED_BYTES if validator is not None else INLINE_BYTES
        try:
            if len(reply.body) > inline:
                result, category = await anyio.to_thread.run_sync(mapping, limiter=self._limiter)
            else:
                result, category = mapping()
        except _UNMAPPABLE as exc:
            log.info("%s -> %s: response cannot be mapped (%s)", where, reply.status, type(exc).__name__)
            return tool_error(
                f"HTTP {reply.status}: the API's response cannot be turned into a tool result "
                "(nested too deeply, or undecodable)",
                "upstream_response_invalid",
                status=reply.status,
            )
        log.debug("%s -> %s (%s)", where, reply.status, category or "ok")
        return result

    async def _send(
        self,
        op: Operation,
        outgoing: OutgoingRequest,
        arguments: Mapping[str, Any],
        credential: UpstreamCredential | None,
    ) -> tuple[_Reply, UpstreamCredential | None]:
        """Send, renew once after a 401, follow same-origin redirects when allowed.

        Returns the final reply and the credential material it was sent with.
        """
        renewable = credential is not None and credential.renew is not None
        current = outgoing
        hops = 0
        while True:
            reply = await self._exchange(current)
            if reply.status == 401 and renewable:
                renewable = False
                fresh = await renewed(credential)
                if fresh is not None:
                    try:
                        current = build_request(self.source, op, arguments, fresh)
                    except ArgumentMappingError:
                        return reply, credential
                    credential = fresh
                    hops = 0
                    continue
            if reply.status not in _REDIRECTS or not self.source.follow_redirects or not reply.location:
                return reply, credential
            if hops >= MAX_REDIRECTS:
                return reply, credential
            target = urljoin(current.url, reply.location).partition("#")[0]
            try:
                same_origin = _origin(target) == _origin(self.source.base_url)
            except httpx.InvalidURL:
                same_origin = False
            if not same_origin:
                return reply, credential
            if credential is not None and credential.query:
                target = with_query(target, credential.query)
            method, content, headers = current.method, current.content, current.headers
            if (reply.status == 303 and method != "HEAD") or (
                reply.status in (301, 302) and method not in ("GET", "HEAD")
            ):
                method, content = "GET", None
                headers = [h for h in headers if h[0] != "content-type"]
            current = OutgoingRequest(method, target, headers, content)
            hops += 1

    async def _exchange(self, outgoing: OutgoingRequest) -> _Reply:
        cap = self.source.max_response_bytes
        request = self._client.build_request(
            outgoing.method, outgoing.url, headers=outgoing.headers, content=outgoing.content
        )
        response = await self._client.send(request, stream=True)
        try:
            status = response.status_code
            content_type = response.headers.get("content-type")
            location = response.headers.get("location")

            def reply(body: bytes | None, bad_encoding: bool = False) -> _Reply:
                return _Reply(status, content_type, location, body, outgoing.url, bad_encoding)

            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > cap:
                return reply(None)
            chunks: list[bytes] = []
            total = 0
            async for chunk in response.aiter_raw():
                total += len(chunk)
                if total > cap:
                    return reply(None)
                chunks.append(chunk)
            try:
                return reply(_decode(b"".join(chunks), response.headers.get("content-encoding"), cap))
            except _TooLarge:
                return reply(None)
            except _BadEncoding:
                return reply(b"", bad_encoding=True)
        finally:
            await response.aclose()

    def _validator(self, tool: str) -> OutputValidator | None:
        if tool not in self._validators:
            schema = self.source.output_schemas.get(tool)
            compiled: OutputValidator | None = None
            if schema is not None:
                try:
                    cls = validator_for(schema, default=Draft202012Validator)
                    cls.check_schema(schema)
                    # RE2 for the schema's patterns (the API chooses the strings); no $ref is fetched.
                    compiled = linear_time(cls)(schema, registry=_NO_FETCH)
                except SchemaError:
                    log.warning("API source %s: tool %s has an invalid outputSchema", self.source.name, tool)
            self._validators[tool] = compiled
        return self._validators[tool]

    async def listen(
        self, notifications: dict[str, Any], sink: ClientChannel, ready: Callable[[], None] | None = None
    ) -> None:
        """An API sends no notifications: calls ``ready()`` and sleeps until cancelled."""
        if ready is not None:
            ready()
        await anyio.sleep_forever()

    async def retire(self) -> None:
        """Close the client now, or when the last call in flight ends."""
        self._retired = True
        if self._active == 0:
            await self._client.aclose()

    async def aclose(self) -> None:
        """Close the client (calls in flight fail :class:`~gateway.errors.UpstreamUnavailable`)."""
        await self._client.aclose()


class _Bound:
    """An :class:`ApiUpstream` with a caller's credential: what :meth:`ApiPool.get` returns."""

    def __init__(self, upstream: ApiUpstream, credential: UpstreamCredential | None) -> None:
        self.upstream = upstream
        self.credential = credential

    async def request(
        self, method: str, params: dict[str, Any], channel: ClientChannel | None = None
    ) -> dict[str, Any]:
        return await self.upstream.call(method, params, credential=self.credential)

    async def listen(
        self, notifications: dict[str, Any], sink: ClientChannel, ready: Callable[[], None] | None = None
    ) -> None:
        await self.upstream.listen(notifications, sink, ready)

    async def aclose(self) -> None:
        """Nothing to release: the client belongs to the pool."""


class ApiPool:
    """One :class:`ApiUpstream` per API source, kept across projections while its record is unchanged.

    Args:
        timeout: Seconds one call may take for a source without its own ``timeout``.
        ssl_context: TLS verification settings for every source (default: httpx's, made once
            and shared by every source's client).
        max_connections: Most connections to one source at once.
        mapping_threads: Most worker threads mapping large responses at once, all sources
            together (see :data:`INLINE_BYTES`).
    """

    def __init__(
        self,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        ssl_context: ssl.SSLContext | None = None,
        max_connections: int = 100,
        mapping_threads: int = MAPPING_THREADS,
    ) -> None:
        self._timeout = timeout
        self._limiter = anyio.CapacityLimiter(mapping_threads)
        self._ssl_context = ssl_context if ssl_context is not None else httpx.create_ssl_context()
        self._max_connections = max_connections
        self._upstreams: dict[str, tuple[str, ApiUpstream]] = {}

    def __contains__(self, name: object) -> bool:
        return name in self._upstreams

    async def retain(self, sources: Mapping[str, ApiSource]) -> None:
        """Serve exactly ``sources`` (name -> source) from now on.

        A source whose :meth:`~gateway.apiadapter.binding.ApiSource.address` is unchanged
        keeps its client (and connections); a new or changed one gets a new client; the
        client of a removed or changed source is closed once its calls in flight end.
        """
        kept: dict[str, tuple[str, ApiUpstream]] = {}
        retired: list[ApiUpstream] = []
        for name, source in sources.items():
            address = source.address()
            found = self._upstreams.get(name)
            if found is not None and found[0] == address:
                kept[name] = found
                continue
            kept[name] = (
                address,
                ApiUpstream(
                    source,
                    timeout=self._timeout,
                    ssl_context=self._ssl_context,
                    max_connections=self._max_connections,
                    limiter=self._limiter,
                ),
            )
        for name, (_, upstream) in self._upstreams.items():
            if kept.get(name, ("", None))[1] is not upstream:
                retired.append(upstream)
        self._upstreams = kept
        for upstream in retired:
            await upstream.retire()

    def get(self, name: str, credential: UpstreamCredential | None = None) -> Upstream:
        """The upstream of API source ``name``, bound to ``credential`` (applied to every call).

        Raises:
            UnknownServer: ``name`` is not a retained source.
        """
        found = self._upstreams.get(name)
        if found is None:
            raise UnknownServer(f"API source {name!r} is not in the active projection")
        return _Bound(found[1], credential)

    async def aclose(self) -> None:
        """Close every client."""
        upstreams = [u for _, u in self._upstreams.values()]
        self._upstreams = {}
        for upstream in upstreams:
            await upstream.aclose()
