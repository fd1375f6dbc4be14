"""In-process admin API sub-requests made by the console on behalf of the signed-in actor.

A console view never reads the database or asks the policy for data itself: it calls the
admin API through the control plane's own ASGI app (``request.app``: every middleware, the
router, the handlers), with the session's :class:`~gateway.controlplane.actor.Actor` in
``scope["gateway.console_actor"]`` (:data:`~gateway.controlplane.middleware.auth.CONSOLE_ACTOR`),
a scope key no client can set. So the control plane's OPA decides each sub-request, each is a
row of ``control_plane_audit`` (carrying the console page's request id), and approvals meet
four-eyes exactly as through the API.

:func:`call_api` buffers a JSON answer (``ApiResult``); :func:`forward_api` streams an answer
(the audit export) straight to the browser, chunk by chunk, in constant memory.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

import anyio
import orjson
from starlette.requests import Request
from starlette.types import Message, Receive, Scope, Send

from gateway.controlplane.actor import Actor
from gateway.controlplane.middleware.auth import CONSOLE_ACTOR, CONSOLE_ADMIN_TOKEN_HMAC, CONSOLE_PREFIX

__all__ = ["ApiResult", "call_api", "forward_api", "subrequest_scope"]

MAX_BUFFERED = 32 * 1024 * 1024
"""Largest answer :func:`call_api` buffers, in bytes (larger: a 502-like :class:`ApiResult`)."""
_PER_REQUEST_STATE = ("actor", "change", "refusal", "request_id")
"""Keys the control plane's middlewares and handlers put into a request's state: never copied
from the console's request into a sub-request."""


@dataclass(frozen=True, slots=True)
class ApiResult:
    """The answer of one sub-request.

    Attributes:
        status: HTTP status code.
        body: The decoded JSON body (None when empty or not JSON).
        headers: Response headers, lower-cased names.
    """

    status: int
    body: Any
    headers: Mapping[str, str]

    @property
    def ok(self) -> bool:
        """True for a 2xx answer."""
        return 200 <= self.status < 300

    @property
    def message(self) -> str:
        """The error body's ``message`` (or a generic text)."""
        if isinstance(self.body, dict) and isinstance(self.body.get("message"), str):
            return str(self.body["message"])
        return f"the admin API answered {self.status}"

    @property
    def error(self) -> str:
        """The error body's ``error`` category ("" when none)."""
        if isinstance(self.body, dict) and isinstance(self.body.get("error"), str):
            return str(self.body["error"])
        return ""


def _control_plane_root(scope: Scope) -> str:
    """The root path the control plane's app is mounted at (the console's minus ``/console``)."""
    root: str = scope.get("root_path", "")
    return root[: -len(CONSOLE_PREFIX)] if root.endswith(CONSOLE_PREFIX) else root


def subrequest_scope(
    request: Request,
    actor: Actor,
    method: str,
    path: str,
    query: Mapping[str, str] | None = None,
    *,
    body: bytes = b"",
) -> Scope:
    """The ASGI scope of a sub-request to the admin API ``path`` (e.g. ``/v1/servers``).

    Inherits the console request's server, client, scheme, lifespan state (pool, notifier)
    and request id (sent as ``X-Request-Id``); carries ``actor`` under
    :data:`~gateway.controlplane.middleware.auth.CONSOLE_ACTOR` and no ``Authorization``; a
    bootstrap session's admin-token digest, put into the console request's scope by
    ``session.current``, is carried under
    :data:`~gateway.controlplane.middleware.auth.CONSOLE_ADMIN_TOKEN_HMAC`.
    """
    outer = request.scope
    root = _control_plane_root(outer)
    state = {k: v for k, v in (outer.get("state") or {}).items() if k not in _PER_REQUEST_STATE}
    headers = [(b"host", request.headers.get("host", "console").encode("latin-1")), (b"accept", b"application/json")]
    rid = (outer.get("state") or {}).get("request_id")
    if isinstance(rid, str) and rid:
        headers.append((b"x-request-id", rid.encode("ascii")))
    if body:
        headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    full = root + path
    sub: Scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": method,
        "scheme": outer.get("scheme", "http"),
        "server": outer.get("server"),
        "client": outer.get("client"),
        "root_path": root,
        "path": full,
        "raw_path": quote(full).encode("ascii"),
        "query_string": urlencode(dict(query or {})).encode("ascii"),
        "headers": headers,
        "state": state,
        "app": outer.get("app"),
        CONSOLE_ACTOR: actor,
    }
    bound = outer.get(CONSOLE_ADMIN_TOKEN_HMAC)
    if actor.bootstrap and isinstance(bound, bytes):
        sub[CONSOLE_ADMIN_TOKEN_HMAC] = bound
    return sub


def _receiver(body: bytes, done: anyio.Event) -> Receive:
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await done.wait()  # like a client that stays connected until the answer is complete
        return {"type": "http.disconnect"}

    return receive


async def call_api(
    request: Request,
    actor: Actor,
    method: str,
    path: str,
    query: Mapping[str, str] | None = None,
    *,
    json: Any = None,
) -> ApiResult:
    """Call the admin API in-process as ``actor`` and return its (buffered, JSON) answer.

    Args:
        request: The console's request (its app is the control plane's).
        actor: The signed-in session's actor (token roles; grants are added by the middleware).
        method: ``GET`` or ``POST``.
        path: The admin API path, e.g. ``/v1/policies/3`` (quoted by the caller where needed).
        query: Query parameters (empty values should be left out by the caller).
        json: The JSON body of a ``POST`` (None: no body).

    Returns:
        The status, decoded body and headers. Never raises for an HTTP error status.
    """
    body = orjson.dumps(json) if json is not None else b""
    scope = subrequest_scope(request, actor, method, path, query, body=body)
    done = anyio.Event()
    status = 500
    headers: dict[str, str] = {}
    chunks: list[bytes] = []
    size = 0

    async def send(message: Message) -> None:
        nonlocal status, size
        if message["type"] == "http.response.start":
            status = int(message["status"])
            headers.update((k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in message.get("headers", ()))
        elif message["type"] == "http.response.body":
            chunk = message.get("body", b"")
            size += len(chunk)
            if size <= MAX_BUFFERED:
                chunks.append(chunk)
            if not message.get("more_body", False):
                done.set()

    app: Callable[[Scope, Receive, Send], Awaitable[None]] = request.app
    try:
        await app(scope, _receiver(body, done), send)
    finally:
        done.set()
    if size > MAX_BUFFERED:
        return ApiResult(502, {"error": "too_large", "message": "the answer is too large to show"}, headers)
    raw = b"".join(chunks)
    try:
        decoded = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        decoded = None
    return ApiResult(status, decoded, headers)


async def forward_api(
    request: Request,
    actor: Actor,
    path: str,
    query: Mapping[str, str],
    send: Send,
    *,
    on_start: Callable[[int, list[tuple[bytes, bytes]]], list[tuple[bytes, bytes]]],
) -> None:
    """Stream the answer of ``GET path`` (as ``actor``) to the browser through ``send``.

    ``on_start(status, headers)`` returns the headers the browser gets (e.g. adds
    ``Content-Disposition``); body chunks are passed on as they come, never buffered.
    """
    scope = subrequest_scope(request, actor, "GET", path, query)
    done = anyio.Event()

    async def relay(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": on_start(int(message["status"]), list(message.get("headers", ())))}
        elif message["type"] == "http.response.body" and not message.get("more_body", False):
            done.set()
        await send(message)

    app: Callable[[Scope, Receive, Send], Awaitable[None]] = request.app
    try:
        await app(scope, _receiver(b"", done), relay)
    finally:
        done.set()
