"""Per-user OAuth 2.1 (credential kind ``oauth_authorization_code``): connect, callback, refresh.

For remote MCP servers that protect themselves the MCP way (MCP 2025-11-25 "Authorization"):
each user connects their own upstream account once, through the control plane, and the
gateway keeps that user's refresh token sealed (:mod:`gateway.db.oauth_users`).

**Discovery** (when the credential names no endpoints), from the bound server's registered
URL only: RFC 9728 protected-resource metadata (``/.well-known/oauth-protected-resource``
inserted before the URL's path, then at the root) -> the first of its
``authorization_servers`` -> RFC 8414 metadata (``/.well-known/oauth-authorization-server``
path-inserted, then OpenID Connect Discovery ``/.well-known/openid-configuration``
path-inserted and path-appended). The metadata's ``issuer`` must equal the URL it was derived
from (RFC 8414 section 3.3) and ``code_challenge_methods_supported``, when present, must list
``S256``. Every endpoint is ``https`` (``http`` only to a loopback host).

**Client.** The credential's ``client_id`` (and ``client_secret``), or else one registered by
RFC 7591 dynamic registration at the metadata's ``registration_endpoint`` (a public client,
``token_endpoint_auth_method: none``, PKCE), kept per (credential, issuer).

**Routes** (no admin token; the handle or ``state`` is the bearer):

* ``GET /v1/oauth/connect/{handle}``: a pending connect created by the broker for one
  subject (single use, :data:`~gateway.db.oauth_users.CONNECT_TTL` s). 302 to the
  authorization endpoint (``response_type=code``, S256 ``code_challenge``, ``state``,
  ``redirect_uri`` = ``<public_url>/v1/oauth/callback``, ``scope``, RFC 8707 ``resource``).
  Unknown, expired or used: 404 HTML.
* ``GET /v1/oauth/callback?code=&state=``: exchanges the code with the verifier, seals and
  stores the subject's tokens, 200 HTML "Connected". An ``error`` from the authorization
  server, or an unknown ``state``: 400 HTML. No page echoes its input.

**The broker** (:func:`user_material`): the subject's access token while it has more than
:data:`MIN_LEFT` s left; else a refresh (RFC 6749 section 6; a rotated refresh token is
stored), one at a time per (credential, subject) in this process. No tokens, or a refresh
the authorization server refuses (``invalid_grant``: revoked, expired, reused):
:class:`~gateway.errors.CredentialNotConnected` with a new connect URL.

**SSRF.** The only URLs fetched are derived from the registered server URL (an admin's
choice) and from the authorization server metadata found there, or configured on the
credential; never a URL from a caller or a browser. Bounds: :data:`TIMEOUT` s, no redirects,
answers of at most :data:`MAX_RESPONSE_BYTES`, proxy variables ignored.

Codes, verifiers and tokens are never logged nor shown.
"""

from __future__ import annotations

import asyncio
import html
import logging
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx2
import orjson
from authlib.integrations.base_client import OAuthError
from authlib.integrations.httpx_client import AsyncOAuth2Client
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from gateway.controlplane._deps import deps
from gateway.controlplane.oauth_tokens import BoundedTransport, ResponseTooLarge
from gateway.credentials import Keyring
from gateway.db import credentials as db_credentials
from gateway.db import oauth_users as db
from gateway.errors import CredentialNotConnected, CredentialUnavailable

__all__ = [
    "CALLBACK_PATH",
    "CONNECT_PREFIX",
    "MAX_RESPONSE_BYTES",
    "MIN_LEFT",
    "TIMEOUT",
    "AuthServer",
    "DiscoveryError",
    "authorization_server_urls",
    "callback",
    "connect",
    "parse_authorization_server",
    "parse_protected_resource",
    "protected_resource_urls",
    "user_material",
]

log = logging.getLogger(__name__)

CONNECT_PREFIX = "/v1/oauth/connect/"
CALLBACK_PATH = "/v1/oauth/callback"
TIMEOUT = 10.0
"""Seconds for one request to a metadata, registration or token endpoint."""
MAX_RESPONSE_BYTES = 64 * 1024
MIN_LEFT = 2.0
"""Seconds an access token must still have to be handed out; else it is refreshed."""
CONFIGURED = "configured"
"""The issuer key of a credential with explicit endpoints."""
MAX_TOKEN_CHARS = 16 * 1024
DEFAULT_LIFETIME = 60.0

_HANDLE = re.compile(r"[A-Za-z0-9_-]{43}")
_VISIBLE = re.compile(r"[\x21-\x7e]+")
_ERROR_CODE = re.compile(r"[a-z0-9_.\-]{1,64}")
_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


class DiscoveryError(CredentialUnavailable):
    """The authorization server could not be discovered, or its metadata is unacceptable."""


@dataclass(frozen=True, slots=True)
class AuthServer:
    """What the flow needs of an authorization server (RFC 8414 metadata)."""

    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    registration_endpoint: str | None = None


# ---------------------------------------------------------------- discovery (pure parts)
def _check_url(value: Any, what: str) -> str:
    """An absolute https URL (http only to loopback), no userinfo or fragment."""
    if not isinstance(value, str) or not value or len(value) > 2048 or not value.isascii():
        raise DiscoveryError(f"{what} is not a URL")
    try:
        parts = urlsplit(value)
        host = parts.hostname
    except ValueError:
        raise DiscoveryError(f"{what} is not a URL") from None
    if not host or parts.scheme not in ("https", "http") or "@" in parts.netloc or parts.fragment:
        raise DiscoveryError(f"{what} must be an absolute https URL")
    if parts.scheme == "http" and host not in _LOOPBACK:
        raise DiscoveryError(f"{what} must be https (http only to a loopback host)")
    return value


def _inserted(url: str, well_known: str) -> str:
    parts = urlsplit(url)
    path = parts.path.rstrip("/")
    return urlunsplit((parts.scheme, parts.netloc, f"/.well-known/{well_known}{path}", "", ""))


def protected_resource_urls(resource_url: str) -> list[str]:
    """RFC 9728 section 3.1 metadata URLs of ``resource_url``: the path-inserted form first,
    then the root (MCP 2025-11-25 "Protected Resource Metadata Discovery")."""
    parts = urlsplit(resource_url)
    root = urlunsplit((parts.scheme, parts.netloc, "/.well-known/oauth-protected-resource", "", ""))
    first = _inserted(resource_url, "oauth-protected-resource")
    return [first] if first == root else [first, root]


def authorization_server_urls(issuer: str) -> list[str]:
    """RFC 8414 section 3.1 then OpenID Connect Discovery metadata URLs of ``issuer``, in the
    order MCP 2025-11-25 gives: for an issuer with a path, the OAuth path-inserted form, the
    OIDC path-inserted form, the OIDC path-appended form; without a path, the two roots."""
    parts = urlsplit(issuer)
    path = parts.path.rstrip("/")
    oauth = _inserted(issuer, "oauth-authorization-server")
    oidc = _inserted(issuer, "openid-configuration")
    if not path:
        return [oauth, oidc]
    appended = urlunsplit((parts.scheme, parts.netloc, f"{path}/.well-known/openid-configuration", "", ""))
    return [oauth, oidc, appended]


def parse_protected_resource(doc: Any) -> str:
    """The authorization server (issuer URL) of RFC 9728 metadata: its first
    ``authorization_servers`` entry.

    Raises:
        DiscoveryError: Not an object, or no acceptable authorization server.
    """
    servers = doc.get("authorization_servers") if isinstance(doc, dict) else None
    if not isinstance(servers, list) or not servers:
        raise DiscoveryError("the protected resource metadata names no authorization server")
    return _check_url(servers[0], "authorization_servers[0]")


def parse_authorization_server(doc: Any, issuer: str) -> AuthServer:
    """Validate RFC 8414 metadata fetched for ``issuer``.

    Raises:
        DiscoveryError: ``issuer`` differs (RFC 8414 section 3.3), an endpoint is missing or
            not https, or ``code_challenge_methods_supported`` lacks ``S256``.
    """
    if not isinstance(doc, dict):
        raise DiscoveryError("the authorization server metadata is not an object")
    if doc.get("issuer") != issuer:
        raise DiscoveryError("the authorization server metadata names another issuer")
    methods = doc.get("code_challenge_methods_supported")
    if methods is not None and (not isinstance(methods, list) or "S256" not in methods):
        raise DiscoveryError("the authorization server does not support PKCE S256")
    registration = doc.get("registration_endpoint")
    return AuthServer(
        issuer,
        _check_url(doc.get("authorization_endpoint"), "authorization_endpoint"),
        _check_url(doc.get("token_endpoint"), "token_endpoint"),
        _check_url(registration, "registration_endpoint") if registration is not None else None,
    )


# ---------------------------------------------------------------- HTTP
def _http() -> tuple[httpx2.AsyncClient, BoundedTransport]:
    transport = BoundedTransport(MAX_RESPONSE_BYTES)
    client = httpx2.AsyncClient(transport=transport, timeout=TIMEOUT, follow_redirects=False, trust_env=False)
    return client, transport


async def _get_json(http: httpx2.AsyncClient, url: str) -> Any | None:
    """The JSON of a 200 answer to ``GET url``; None for any other status (tried next)."""
    host = urlsplit(url).hostname or "?"
    try:
        async with asyncio.timeout(TIMEOUT):
            resp = await http.get(url, headers={"accept": "application/json"})
            body = await resp.aread()
    except (TimeoutError, ResponseTooLarge, httpx2.HTTPError) as exc:
        raise DiscoveryError(f"metadata of {host} unavailable ({type(exc).__name__})") from None
    if resp.status_code != 200:
        return None
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise DiscoveryError(f"metadata of {host} is not JSON") from None


async def discover(resource_url: str) -> AuthServer:
    """The authorization server protecting ``resource_url`` (see the module docstring).

    Raises:
        DiscoveryError: Nothing found, unreachable, or unacceptable metadata.
    """
    http, transport = _http()
    try:
        async with http:
            issuer: str | None = None
            for url in protected_resource_urls(resource_url):
                doc = await _get_json(http, url)
                if doc is not None:
                    issuer = parse_protected_resource(doc)
                    break
            if issuer is None:
                raise DiscoveryError("the server publishes no protected resource metadata (RFC 9728)")
            for url in authorization_server_urls(issuer):
                doc = await _get_json(http, url)
                if doc is not None:
                    return parse_authorization_server(doc, issuer)
            raise DiscoveryError("the authorization server publishes no metadata (RFC 8414)")
    finally:
        await transport.close_pool()


async def register_client(server: AuthServer, redirect_uri: str) -> db.RegisteredClient:
    """RFC 7591 dynamic registration of a public client (PKCE, no secret).

    Raises:
        DiscoveryError: No registration endpoint, or it refused or answered no ``client_id``.
    """
    if server.registration_endpoint is None:
        raise DiscoveryError("the authorization server offers no dynamic registration; configure a client_id")
    metadata = {
        "client_name": "MCP gateway",
        "redirect_uris": [redirect_uri],
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "token_endpoint_auth_method": "none",
    }
    host = urlsplit(server.registration_endpoint).hostname or "?"
    http, transport = _http()
    try:
        async with http, asyncio.timeout(TIMEOUT):
            resp = await http.post(server.registration_endpoint, json=metadata)
            body = await resp.aread()
    except (TimeoutError, ResponseTooLarge, httpx2.HTTPError) as exc:
        raise DiscoveryError(f"registration at {host} failed ({type(exc).__name__})") from None
    finally:
        await transport.close_pool()
    try:
        doc = orjson.loads(body) if resp.status_code in (200, 201) else None
    except orjson.JSONDecodeError:
        doc = None
    client_id = doc.get("client_id") if isinstance(doc, dict) else None
    if not isinstance(client_id, str) or not client_id or len(client_id) > 2048:
        raise DiscoveryError(f"registration at {host} refused (HTTP {resp.status_code})")
    assert isinstance(doc, dict)
    secret = doc.get("client_secret")
    method = doc.get("token_endpoint_auth_method") or "none"
    if method not in ("none", "client_secret_basic", "client_secret_post"):
        method = "client_secret_basic" if secret else "none"
    kept = secret if isinstance(secret, str) and secret and method != "none" else None  # a public client has none
    log.info("registered OAuth client at %s (RFC 7591)", host)
    return db.RegisteredClient(client_id, method, redirect_uri, kept)


# ---------------------------------------------------------------- the flow's parts
@dataclass(frozen=True, slots=True)
class _Client:
    client_id: str
    client_secret: str | None
    auth_method: str


def _oauth_client(client: _Client, transport: BoundedTransport, **kwargs: Any) -> AsyncOAuth2Client:
    return AsyncOAuth2Client(
        client_id=client.client_id,
        client_secret=client.client_secret or "",
        token_endpoint_auth_method=client.auth_method,
        transport=transport,
        timeout=TIMEOUT,
        follow_redirects=False,
        trust_env=False,
        **kwargs,
    )


async def _token_request(client: _Client, token_endpoint: str, where: str, **params: str) -> dict[str, Any]:
    """One token request; the answer's fields. Raises CredentialUnavailable (``oauth_error``
    set to the OAuth error code when the server refused)."""
    transport = BoundedTransport(MAX_RESPONSE_BYTES)
    oauth = _oauth_client(client, transport)
    try:
        async with oauth, asyncio.timeout(TIMEOUT):
            answer = await oauth.fetch_token(token_endpoint, **params)
    except OAuthError as exc:
        code = exc.error if isinstance(exc.error, str) and _ERROR_CODE.fullmatch(exc.error) else "invalid_error"
        raise CredentialUnavailable(f"{where} refused: {code}", oauth_error=code) from None
    except (TimeoutError, ResponseTooLarge, httpx2.HTTPError, ValueError) as exc:
        raise CredentialUnavailable(f"{where} failed ({type(exc).__name__})") from None
    finally:
        await transport.close_pool()
    return dict(answer)


def _tokens(answer: Mapping[str, Any], issuer: str, token_endpoint: str, previous: str | None) -> db.UserTokens:
    access = answer.get("access_token")
    if not isinstance(access, str) or len(access) > MAX_TOKEN_CHARS or not _VISIBLE.fullmatch(access):
        raise CredentialUnavailable(f"token endpoint of {issuer} answered no usable access_token")
    refresh = answer.get("refresh_token")
    refresh = refresh if isinstance(refresh, str) and 0 < len(refresh) <= MAX_TOKEN_CHARS else previous
    expires_in = answer.get("expires_in")
    if isinstance(expires_in, str) and expires_in.isdigit():
        expires_in = int(expires_in)
    if not isinstance(expires_in, int | float) or isinstance(expires_in, bool) or expires_in <= 0:
        expires_in = DEFAULT_LIFETIME
    scope = answer.get("scope")
    return db.UserTokens(
        issuer,
        token_endpoint,
        refresh,
        access,
        time.time() + float(expires_in),
        scope if isinstance(scope, str) and len(scope) <= 2048 else None,
    )


async def _resolve_server(config: Mapping[str, Any], server_url: str | None) -> AuthServer:
    if config.get("authorization_endpoint") and config.get("token_endpoint"):
        return AuthServer(CONFIGURED, str(config["authorization_endpoint"]), str(config["token_endpoint"]))
    if not server_url:
        raise DiscoveryError("the server has no URL to discover its authorization server from")
    return await discover(server_url)


async def _client_for(
    conn: Any,
    tenant: str,
    env: str,
    credential_id: str,
    config: Mapping[str, Any],
    secret: Mapping[str, Any],
    server: AuthServer,
    redirect_uri: str,
    ring: Keyring,
    *,
    register: bool,
) -> _Client:
    if config.get("client_id"):
        method = str(config.get("auth_method") or ("client_secret_basic" if secret.get("client_secret") else "none"))
        return _Client(str(config["client_id"]), secret.get("client_secret"), method)
    known = await db.load_client(conn, tenant, env, credential_id, server.issuer, ring)
    if known is None or known.redirect_uri != redirect_uri:
        if not register:
            raise CredentialUnavailable(f"credential {credential_id}: no registered client at its issuer")
        known = await register_client(server, redirect_uri)
        await db.save_client(conn, tenant, env, credential_id, server.issuer, known, ring)
    return _Client(known.client_id, known.client_secret, known.auth_method)


def _page(status: int, title: str, text: str) -> HTMLResponse:
    body = (
        "<!doctype html><html><head><meta charset=utf-8><title>"
        f"{html.escape(title)}</title></head><body><h1>{html.escape(title)}</h1><p>{html.escape(text)}</p>"
        "</body></html>"
    )
    headers = {
        "cache-control": "no-store",
        "referrer-policy": "no-referrer",
        "content-security-policy": "default-src 'none'",
        "x-content-type-options": "nosniff",
    }
    return HTMLResponse(body, status_code=status, headers=headers)


def _keyring(request: Request) -> Keyring | None:
    ring = getattr(request.app.state, "credentials_keyring", None)
    return ring if isinstance(ring, Keyring) else None


def _resource(config: Mapping[str, Any], server_url: str | None) -> str | None:
    value = config.get("resource") or server_url
    return str(value) if value else None


# ---------------------------------------------------------------- routes
async def connect(request: Request) -> Response:
    """``GET /v1/oauth/connect/{handle}`` (no token: the handle is the bearer; module docstring).

    302 to the authorization endpoint; 404 HTML for an unknown, expired or used handle;
    502 HTML when the authorization server cannot be discovered or registered with.
    """
    handle = request.path_params.get("handle", "")
    ring = _keyring(request)
    gone = _page(404, "Link expired", "This connect link is unknown, expired or already used. Retry the tool call.")
    if ring is None or not isinstance(handle, str) or not _HANDLE.fullmatch(handle):
        return gone
    d = deps(request)
    tenant, env = d.config.tenant, d.config.environment
    public = d.config.control_plane.public_url
    redirect_uri = public + CALLBACK_PATH
    async with d.pool.acquire() as conn:
        pending = await db.claim_connect(conn, tenant, env, handle)
        if pending is None:
            return gone
        meta = await db_credentials.get_credential(conn, tenant, env, pending.credential_id)
        secret = (await db_credentials.open_credential(conn, tenant, env, pending.credential_id, ring)).reveal()
        server_url = await db.server_url(conn, tenant, env, pending.server)
        config = dict(meta["config"] or {})
        try:
            auth = await _resolve_server(config, server_url)
            client = await _client_for(
                conn, tenant, env, pending.credential_id, config, secret, auth, redirect_uri, ring, register=True
            )
        except CredentialUnavailable as exc:
            log.warning("connect for credential %s: %s", pending.credential_id, exc)
            return _page(502, "Cannot connect", "The upstream's authorization server could not be reached or used.")
        state = secrets.token_urlsafe(32)
        verifier = secrets.token_urlsafe(48)
        await db.set_connect_state(
            conn,
            pending,
            ring,
            state=state,
            issuer=auth.issuer,
            token_endpoint=auth.token_endpoint,
            redirect_uri=redirect_uri,
            verifier=verifier,
        )
    transport = BoundedTransport(MAX_RESPONSE_BYTES)
    oauth = _oauth_client(client, transport, code_challenge_method="S256", redirect_uri=redirect_uri)
    extra: dict[str, str] = {}
    if config.get("scope"):
        extra["scope"] = str(config["scope"])
    if resource := _resource(config, server_url):
        extra["resource"] = resource
    url, _ = oauth.create_authorization_url(auth.authorization_endpoint, state=state, code_verifier=verifier, **extra)
    await transport.close_pool()
    log.info("connect for credential %s opened (server %s)", pending.credential_id, pending.server)
    return RedirectResponse(
        url, status_code=302, headers={"cache-control": "no-store", "referrer-policy": "no-referrer"}
    )


async def callback(request: Request) -> Response:
    """``GET /v1/oauth/callback?code=&state=`` (no token: ``state`` is the bearer).

    200 HTML once the subject's tokens are stored; 400 HTML for an ``error`` answer, an
    unknown or used ``state``, or a refused code; never echoes a parameter.
    """
    params = request.query_params
    state, code = params.get("state", ""), params.get("code", "")
    ring = _keyring(request)
    bad = _page(400, "Not connected", "This sign-in answer is unknown, expired or already used. Retry the tool call.")
    if ring is None or not _HANDLE.fullmatch(state):
        return bad
    d = deps(request)
    tenant, env = d.config.tenant, d.config.environment
    async with d.pool.acquire() as conn:
        pending = await db.finish_connect(conn, tenant, env, state, ring)
        if pending is None or pending.issuer is None or pending.token_endpoint is None:
            return bad
        if params.get("error") or not code or len(code) > 4096:
            log.info("connect for credential %s: the authorization server refused", pending.credential_id)
            return _page(400, "Not connected", "The authorization was refused or cancelled. Retry the tool call.")
        iss = params.get("iss")
        if iss is not None and pending.issuer != CONFIGURED and iss != pending.issuer:  # RFC 9207
            return _page(400, "Not connected", "The answer came from another authorization server.")
        meta = await db_credentials.get_credential(conn, tenant, env, pending.credential_id)
        if meta["status"] != "active":
            return bad
        secret = (await db_credentials.open_credential(conn, tenant, env, pending.credential_id, ring)).reveal()
        config = dict(meta["config"] or {})
        server_url = await db.server_url(conn, tenant, env, pending.server)
        auth = AuthServer(pending.issuer, "", pending.token_endpoint)
        try:
            client = await _client_for(
                conn, tenant, env, pending.credential_id, config, secret, auth, str(pending.redirect_uri), ring,
                register=False,
            )  # fmt: skip
            extra: dict[str, str] = {}
            if resource := _resource(config, server_url):
                extra["resource"] = resource
            where = f"credential {pending.credential_id}: token endpoint {urlsplit(auth.token_endpoint).hostname}"
            answer = await _token_request(
                client,
                auth.token_endpoint,
                where,
                grant_type="authorization_code",
                code=code,
                code_verifier=str(pending.verifier),
                redirect_uri=str(pending.redirect_uri),
                **extra,
            )
            tokens = _tokens(answer, pending.issuer, auth.token_endpoint, None)
        except CredentialUnavailable as exc:
            log.warning("connect for credential %s: %s", pending.credential_id, exc)
            return _page(400, "Not connected", "The authorization server did not accept the sign-in. Retry.")
        await db.store_tokens(conn, tenant, env, pending.credential_id, pending.subject, ring, tokens)
    log.info("credential %s connected for a user (server %s)", pending.credential_id, pending.server)
    return _page(200, "Connected", "Connected: you can close this tab and retry.")


# ---------------------------------------------------------------- the broker's part
_locks: dict[tuple[str, str, str], asyncio.Lock] = {}
"""One lock per (credential, issuer, sub) that ever resolved in this process."""


async def user_material(
    request: Request,
    row: Mapping[str, Any],
    secret: Mapping[str, Any],
    subject: tuple[str, str],
    server: str,
    ring: Keyring,
) -> tuple[str, float]:
    """``(access_token, expires_at)`` of ``subject`` for the ``oauth_authorization_code``
    credential of ``row`` (a :func:`gateway.db.credentials.resolvable` row).

    Raises:
        CredentialNotConnected: The subject has no tokens, or their refresh was refused.
        CredentialUnavailable: The token endpoint failed otherwise.
    """
    d = deps(request)
    tenant, env = d.config.tenant, d.config.environment
    credential_id = str(row["credential_id"])
    if not subject[0] or not subject[1]:
        raise CredentialUnavailable(f"credential {credential_id} needs the caller's identity")
    lock = _locks.setdefault((credential_id, subject[0], subject[1]), asyncio.Lock())
    async with lock:  # one refresh per user at a time: a rotated refresh token is single use
        async with d.pool.acquire() as conn:
            tokens = await db.load_tokens(conn, tenant, env, credential_id, subject, ring)
            if tokens is not None and tokens.access_token and tokens.access_expires_at - time.time() > MIN_LEFT:
                return tokens.access_token, tokens.access_expires_at
            if tokens is not None and tokens.refresh_token:
                config = dict(row["config"] or {})
                redirect = d.config.control_plane.public_url + CALLBACK_PATH
                auth = AuthServer(tokens.issuer, "", tokens.token_endpoint)
                where = f"credential {credential_id}: token endpoint {urlsplit(tokens.token_endpoint).hostname}"
                try:
                    client = await _client_for(
                        conn, tenant, env, credential_id, config, secret, auth, redirect, ring, register=False
                    )
                    extra: dict[str, str] = {}
                    server_url = await db.server_url(conn, tenant, env, server)
                    if resource := _resource(config, server_url):
                        extra["resource"] = resource
                    answer = await _token_request(
                        client,
                        tokens.token_endpoint,
                        where,
                        grant_type="refresh_token",
                        refresh_token=tokens.refresh_token,
                        **extra,
                    )
                except CredentialUnavailable as exc:
                    if exc.oauth_error not in ("invalid_grant", "invalid_client", "unauthorized_client") and (
                        "no registered client" not in str(exc)
                    ):
                        raise
                    log.info("%s: refresh refused (%s); the user must connect again", where, exc.oauth_error)
                    await db.delete_tokens(conn, tenant, env, credential_id, subject)
                else:
                    fresh = _tokens(answer, tokens.issuer, tokens.token_endpoint, tokens.refresh_token)
                    await db.store_tokens(conn, tenant, env, credential_id, subject, ring, fresh)
                    assert fresh.access_token is not None
                    return fresh.access_token, fresh.access_expires_at
            handle = await db.create_connect(conn, tenant, env, credential_id, server, subject)
    url = d.config.control_plane.public_url + CONNECT_PREFIX + handle
    raise CredentialNotConnected(f"credential {credential_id}: the caller has not connected {server}", connect_url=url)
