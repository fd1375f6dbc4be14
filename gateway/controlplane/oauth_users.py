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

**Routes** (no admin token):

* ``GET /v1/oauth/connect/{handle}``: a confirmation page for a pending connect created by the
  broker for one subject (:data:`~gateway.db.oauth_users.CONNECT_TTL` s). It names the
  server and the gateway identity being linked, sets a browser-binding cookie (a fresh
  nonce) and POSTs the same nonce back. Changes nothing: unfurlers cannot use the link up.
* ``POST /v1/oauth/connect/{handle}``: refused cross-site (Fetch Metadata, ``Origin``) or
  when the form's nonce is not the cookie's; else the handle is used up, the nonce's digest
  bound to the flow, and 302 to the authorization endpoint (``response_type=code``, S256
  ``code_challenge``, ``state``, ``redirect_uri`` = ``<public_url>/v1/oauth/callback/<key>``
  with one ``key`` per (credential, issuer), ``scope``, RFC 8707 ``resource``).
* ``GET /v1/oauth/callback/{key}?code=&state=``: only in the browser that confirmed (the
  cookie), only at the flow's own ``key``, with ``iss`` (RFC 9207) required when the
  authorization server advertises it and equal to the issuer when present; exchanges the
  code with the verifier, seals and stores the subject's tokens, 200 HTML "Connected".
  Anything else: 400 HTML. No page echoes its input.

These are the account-linking CSRF and mix-up defences of RFC 9700 (sections 4.7 and 4.4).

**The broker** (:func:`user_material`): the subject's access token while it has more than
:data:`MIN_LEFT` s left; else a refresh (RFC 6749 section 6; a rotated refresh token is
stored), one at a time per (credential, subject) across control-plane processes (a lease on
the row). No tokens, or a refresh
the authorization server refuses (``invalid_grant``: revoked, expired, reused):
:class:`~gateway.errors.CredentialNotConnected` with a new connect URL.

**SSRF.** The only URLs fetched are derived from the registered server URL (an admin's
choice) and from the authorization server metadata found there, or configured on the
credential; never a URL from a caller or a browser. Discovered endpoints must resolve to public
addresses unless the registered server is itself on a non-public one
(:mod:`gateway.controlplane.egress`). Bounds: :data:`TIMEOUT` s, no redirects, answers of at
most :data:`MAX_RESPONSE_BYTES`, proxy variables ignored. The database is never held across
an outbound request.

Codes, verifiers and tokens are never logged nor shown.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import html
import logging
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

import httpx2
import orjson
from authlib.integrations.base_client import OAuthError
from authlib.integrations.httpx_client import AsyncOAuth2Client
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from gateway.controlplane._deps import deps
from gateway.controlplane.egress import EgressRefused, EgressTransport, allows_private
from gateway.controlplane.oauth_tokens import BoundedTransport, ResponseTooLarge
from gateway.credentials import Keyring
from gateway.db import credentials as db_credentials
from gateway.db import oauth_users as db
from gateway.errors import CredentialNotConnected, CredentialUnavailable

__all__ = [
    "CALLBACK_PREFIX",
    "CONFIGURED",
    "CONNECT_PREFIX",
    "COOKIE_PREFIX",
    "MAX_RESPONSE_BYTES",
    "MIN_LEFT",
    "REFRESH_LEASE",
    "TIMEOUT",
    "AuthServer",
    "DiscoveryError",
    "authorization_server_urls",
    "callback",
    "callback_key",
    "configured_issuer",
    "connect",
    "connect_page",
    "parse_authorization_server",
    "parse_protected_resource",
    "protected_resource_urls",
    "redirect_uri",
    "refresh_shared",
    "user_material",
]

log = logging.getLogger(__name__)

CONNECT_PREFIX = "/v1/oauth/connect/"
CALLBACK_PREFIX = "/v1/oauth/callback/"
COOKIE_PREFIX = "gw_oauth_"
MAX_FORM_BYTES = 1024
TIMEOUT = 10.0
"""Seconds for one request to a metadata, registration or token endpoint."""
MAX_RESPONSE_BYTES = 64 * 1024
MIN_LEFT = 2.0
"""Seconds an access token must still have to be handed out; else it is refreshed."""
CONFIGURED = "configured"
"""The issuer key of a credential with explicit endpoints."""
MAX_TOKEN_CHARS = 16 * 1024
DEFAULT_LIFETIME = 60.0
REFRESH_LEASE = TIMEOUT + 5.0
"""Seconds a control-plane process may hold a user's refresh lease (one token request)."""
FORCE_INTERVAL = 30.0
"""Seconds after a forced refresh (an upstream answered 401) during which another forced
refresh answers the stored tokens as they are instead of refreshing again."""

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
    iss_required: bool = False
    """``authorization_response_iss_parameter_supported`` (RFC 9207 section 3), or a pinned
    issuer: the callback must then carry ``iss``."""


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
        doc.get("authorization_response_iss_parameter_supported") is True,
    )


# ---------------------------------------------------------------- HTTP
def _http(allow_private: bool) -> tuple[httpx2.AsyncClient, BoundedTransport]:
    transport = EgressTransport(MAX_RESPONSE_BYTES, allow_private=allow_private)
    client = httpx2.AsyncClient(transport=transport, timeout=TIMEOUT, follow_redirects=False, trust_env=False)
    return client, transport


async def _get_json(http: httpx2.AsyncClient, url: str) -> Any | None:
    """The JSON of a 200 answer to ``GET url``; None for any other status (tried next)."""
    host = urlsplit(url).hostname or "?"
    try:
        async with asyncio.timeout(TIMEOUT):
            resp = await http.get(url, headers={"accept": "application/json"})
            body = await resp.aread()
    except EgressRefused as exc:
        raise DiscoveryError(f"metadata of {host}: {exc}") from None
    except (TimeoutError, ResponseTooLarge, httpx2.HTTPError) as exc:
        raise DiscoveryError(f"metadata of {host} unavailable ({type(exc).__name__})") from None
    if resp.status_code != 200:
        return None
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise DiscoveryError(f"metadata of {host} is not JSON") from None


async def discover(resource_url: str, *, allow_private: bool = False) -> AuthServer:
    """The authorization server protecting ``resource_url`` (see the module docstring); every
    request to a public address only unless ``allow_private``.

    Raises:
        DiscoveryError: Nothing found, unreachable, a non-public address, or unacceptable
            metadata.
    """
    http, transport = _http(allow_private)
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


async def register_client(server: AuthServer, redirect_uri: str, *, allow_private: bool = False) -> db.RegisteredClient:
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
    http, transport = _http(allow_private)
    try:
        async with http, asyncio.timeout(TIMEOUT):
            resp = await http.post(server.registration_endpoint, json=metadata)
            body = await resp.aread()
    except EgressRefused as exc:
        raise DiscoveryError(f"registration at {host}: {exc}") from None
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


async def _token_request(
    client: _Client, token_endpoint: str, where: str, *, allow_private: bool, **params: str
) -> dict[str, Any]:
    """One token request; the answer's fields. Raises CredentialUnavailable (``oauth_error``
    set to the OAuth error code when the server refused)."""
    transport = EgressTransport(MAX_RESPONSE_BYTES, allow_private=allow_private)
    oauth = _oauth_client(client, transport)
    try:
        async with oauth, asyncio.timeout(TIMEOUT):
            answer = await oauth.fetch_token(token_endpoint, **params)
    except OAuthError as exc:
        code = exc.error if isinstance(exc.error, str) and _ERROR_CODE.fullmatch(exc.error) else "invalid_error"
        raise CredentialUnavailable(f"{where} refused: {code}", oauth_error=code) from None
    except EgressRefused as exc:
        raise CredentialUnavailable(f"{where}: {exc}") from None
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


def callback_key(credential_id: str, issuer: str) -> str:
    """The last path segment of the redirect URI of (credential, issuer): 128 bits of
    SHA-256, base64url (22 characters). One redirect URI per authorization server is the
    mix-up defence of RFC 9700 section 4.4.2.2."""
    raw = hashlib.sha256(f"{credential_id}\n{issuer}".encode()).digest()[:16]
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def redirect_uri(public_url: str, credential_id: str, issuer: str) -> str:
    """``<public_url>/v1/oauth/callback/<callback_key>``: what the gateway registers (RFC 7591)
    or what an admin registers for a configured client (shown by ``GET /v1/credentials/{id}``)."""
    return f"{public_url}{CALLBACK_PREFIX}{callback_key(credential_id, issuer)}"


def configured_issuer(config: Mapping[str, Any]) -> str | None:
    """The issuer of a credential with configured endpoints: its pinned ``issuer``, else
    :data:`CONFIGURED`; None when its endpoints are discovered."""
    if config.get("authorization_endpoint") and config.get("token_endpoint"):
        return str(config.get("issuer") or CONFIGURED)
    return None


def _configured(config: Mapping[str, Any]) -> AuthServer | None:
    issuer = configured_issuer(config)
    if issuer is None:
        return None
    pinned = issuer != CONFIGURED
    return AuthServer(issuer, str(config["authorization_endpoint"]), str(config["token_endpoint"]), iss_required=pinned)


def _allow_private_token_endpoint(config: Mapping[str, Any], token_endpoint: str, allow_private: bool) -> bool:
    return allow_private or token_endpoint == config.get("token_endpoint")


async def _client_for(
    pool: Any,
    tenant: str,
    env: str,
    credential_id: str,
    config: Mapping[str, Any],
    secret: Mapping[str, Any],
    server: AuthServer,
    redirect: str,
    ring: Keyring,
    *,
    register: bool,
    allow_private: bool = False,
) -> _Client:
    """The configured client, or the one registered at ``server`` for ``redirect`` (registering
    when ``register``). The database is used in short acquisitions, never across HTTP."""
    if config.get("client_id"):
        method = str(config.get("auth_method") or ("client_secret_basic" if secret.get("client_secret") else "none"))
        return _Client(str(config["client_id"]), secret.get("client_secret"), method)
    async with pool.acquire() as conn:
        known = await db.load_client(conn, tenant, env, credential_id, server.issuer, ring)
    if known is None or known.redirect_uri != redirect:
        if not register:
            raise CredentialUnavailable(f"credential {credential_id}: no registered client at its issuer")
        known = await register_client(server, redirect, allow_private=allow_private)
        async with pool.acquire() as conn:
            await db.save_client(conn, tenant, env, credential_id, server.issuer, known, ring)
    return _Client(known.client_id, known.client_secret, known.auth_method)


_HEADERS = {
    "cache-control": "no-store",
    "referrer-policy": "no-referrer",
    "content-security-policy": "default-src 'none'; frame-ancestors 'none'",
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
}


def _page(status: int, title: str, text: str, *, form: str = "") -> HTMLResponse:
    body = (
        "<!doctype html><html><head><meta charset=utf-8><title>"
        f"{html.escape(title)}</title></head><body><h1>{html.escape(title)}</h1><p>{html.escape(text)}</p>"
        f"{form}</body></html>"
    )
    return HTMLResponse(body, status_code=status, headers=dict(_HEADERS))


def _keyring(request: Request) -> Keyring | None:
    ring = getattr(request.app.state, "credentials_keyring", None)
    return ring if isinstance(ring, Keyring) else None


def _resource(config: Mapping[str, Any], server_url: str | None) -> str | None:
    value = config.get("resource") or server_url
    return str(value) if value else None


def _cookie_name(key: str) -> str:
    """The browser-binding cookie of the connect whose handle digest is ``key``."""
    return COOKIE_PREFIX + key[:16]


def _set_cookie(response: Response, public_url: str, name: str, value: str, max_age: int) -> None:
    parts = urlsplit(public_url)
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path=parts.path.rstrip("/") + "/v1/oauth/",
        secure=parts.scheme == "https",
        httponly=True,
        samesite="lax",
    )


def _cross_site(request: Request, public_url: str) -> bool:
    """True when the browser says the POST came from another site (Fetch Metadata, or an
    ``Origin`` other than the control plane's public origin)."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return True
    origin = request.headers.get("origin")
    if origin is None:
        return False
    public = urlsplit(public_url)
    return origin != f"{public.scheme}://{public.netloc}"


async def _form_field(request: Request, name: str) -> str | None:
    if request.headers.get("content-type", "").split(";", 1)[0].strip() != "application/x-www-form-urlencoded":
        return None
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            return None
    try:
        fields = parse_qs(body.decode("ascii"), max_num_fields=4, strict_parsing=False)
    except (UnicodeDecodeError, ValueError):
        return None
    values = fields.get(name)
    return values[0] if values and len(values) == 1 else None


# ---------------------------------------------------------------- routes
async def connect_page(request: Request) -> Response:
    """``GET /v1/oauth/connect/{handle}`` (no token): the confirmation page.

    Names the server and the gateway identity being linked, sets the browser-binding cookie
    (``gw_oauth_<16 hex>``: a fresh 256-bit nonce, ``HttpOnly``, ``SameSite=Lax``, ``Secure``
    on https, path ``/v1/oauth/``) and offers a form that POSTs the same nonce back. Changes
    nothing on the server, so link unfurlers and prefetchers cannot use the link up.
    404 HTML for an unknown, expired or used handle.
    """
    handle = request.path_params.get("handle", "")
    if _keyring(request) is None or not isinstance(handle, str) or not _HANDLE.fullmatch(handle):
        return _gone()
    d = deps(request)
    async with d.pool.acquire() as conn:
        pending = await db.peek_connect(conn, d.config.tenant, d.config.environment, handle)
    if pending is None:
        return _gone()
    nonce = secrets.token_urlsafe(32)
    issuer, sub = pending.subject
    form = (
        '<form method="post"><input type="hidden" name="confirm" value="'
        f'{html.escape(nonce)}"><button type="submit">Continue to sign in</button></form>'
    )
    text = (
        f"The gateway will act for the gateway user {sub} (issuer {issuer}) with the {pending.server} account "
        "you sign in with next. Continue only if you are that user and you asked for this link yourself."
    )
    response = _page(200, f"Connect your {pending.server} account", text, form=form)
    _set_cookie(response, d.config.control_plane.public_url, _cookie_name(pending.key), nonce, int(db.CONNECT_TTL))
    return response


def _gone() -> HTMLResponse:
    return _page(404, "Link expired", "This connect link is unknown, expired or already used. Retry the tool call.")


async def connect(request: Request) -> Response:
    """``POST /v1/oauth/connect/{handle}`` (no token: the handle, the confirmation page's
    nonce and its cookie together are the bearer; module docstring).

    302 to the authorization endpoint; 403 HTML for a cross-site POST or a nonce that does
    not match this browser's cookie; 404 HTML for an unknown, expired or used handle;
    502 HTML when the authorization server cannot be discovered or registered with.
    """
    handle = request.path_params.get("handle", "")
    ring = _keyring(request)
    if ring is None or not isinstance(handle, str) or not _HANDLE.fullmatch(handle):
        return _gone()
    d = deps(request)
    tenant, env = d.config.tenant, d.config.environment
    public = d.config.control_plane.public_url
    forbidden = _page(
        403, "Not confirmed", "Open the connect link in your browser and confirm there. Retry the tool call."
    )
    if _cross_site(request, public):
        return forbidden
    nonce = await _form_field(request, "confirm")
    cookie = request.cookies.get(_cookie_name(db.digest(handle)))
    if not nonce or not cookie or not hmac.compare_digest(nonce.encode(), cookie.encode()):
        return forbidden
    async with d.pool.acquire() as conn:
        pending = await db.claim_connect(conn, tenant, env, handle)
        if pending is None:
            return _gone()
        meta = await db_credentials.get_credential(conn, tenant, env, pending.credential_id)
        secret = (await db_credentials.open_credential(conn, tenant, env, pending.credential_id, ring)).reveal()
        server_url = await db.server_url(conn, tenant, env, pending.server)
    config = dict(meta["config"] or {})
    try:
        auth = _configured(config)
        allow_private = False
        if auth is None:
            if not server_url:
                raise DiscoveryError("the server has no URL to discover its authorization server from")
            allow_private = allows_private(server_url)
            auth = await discover(server_url, allow_private=allow_private)
        redirect = redirect_uri(public, pending.credential_id, auth.issuer)
        client = await _client_for(
            d.pool, tenant, env, pending.credential_id, config, secret, auth, redirect, ring,
            register=True, allow_private=allow_private,
        )  # fmt: skip
    except CredentialUnavailable as exc:
        log.warning("connect for credential %s: %s", pending.credential_id, exc)
        return _page(502, "Cannot connect", "The upstream's authorization server could not be reached or used.")
    state = secrets.token_urlsafe(32)
    flow = db.ConnectFlow(auth.issuer, auth.token_endpoint, redirect, secrets.token_urlsafe(48), auth.iss_required)
    async with d.pool.acquire() as conn:
        await db.set_connect_state(conn, pending, ring, state=state, browser_nonce=nonce, flow=flow)
    transport = BoundedTransport(MAX_RESPONSE_BYTES)
    oauth = _oauth_client(client, transport, code_challenge_method="S256", redirect_uri=redirect)
    extra: dict[str, str] = {}
    if config.get("scope"):
        extra["scope"] = str(config["scope"])
    if resource := _resource(config, server_url):
        extra["resource"] = resource
    url, _ = oauth.create_authorization_url(
        auth.authorization_endpoint, state=state, code_verifier=flow.verifier, **extra
    )
    await transport.close_pool()
    log.info("connect for credential %s opened (server %s)", pending.credential_id, pending.server)
    return RedirectResponse(
        url, status_code=302, headers={"cache-control": "no-store", "referrer-policy": "no-referrer"}
    )


async def callback(request: Request) -> Response:
    """``GET /v1/oauth/callback/{key}?code=&state=[&iss=]`` (no token: ``state`` and the
    browser-binding cookie are the bearer).

    200 HTML once the subject's tokens are stored; 400 HTML for an ``error`` answer, an
    unknown or used ``state``, a ``key`` that is not the flow's (credential, issuer), a
    missing or foreign ``iss`` (RFC 9207), a browser other than the one that confirmed, or a
    refused code; never echoes a parameter.
    """
    params = request.query_params
    state, code, key = params.get("state", ""), params.get("code", ""), request.path_params.get("key", "")
    ring = _keyring(request)
    bad = _page(400, "Not connected", "This sign-in answer is unknown, expired or already used. Retry the tool call.")
    if ring is None or not _HANDLE.fullmatch(state):
        return bad
    d = deps(request)
    tenant, env = d.config.tenant, d.config.environment
    # Only the browser that confirmed the connect can use its state up (its cookie's nonce).
    nonces = [v for k, v in request.cookies.items() if k.startswith(COOKIE_PREFIX) and v][:16]
    async with d.pool.acquire() as conn:
        pending = await db.finish_connect(conn, tenant, env, state, ring, nonces)
        elsewhere = pending is None and await db.state_pending(conn, tenant, env, state)
    if elsewhere:
        log.warning("connect: a callback reached a browser that did not confirm it")
        return _page(
            400,
            "Not connected",
            "This sign-in was started in another browser. Retry the tool call and use its link here.",
        )
    if pending is None or pending.flow is None or pending.browser_hash is None:
        return bad
    flow = pending.flow
    if not isinstance(key, str) or not hmac.compare_digest(key, callback_key(pending.credential_id, flow.issuer)):
        log.warning("connect for credential %s: the answer reached another issuer's callback", pending.credential_id)
        return _page(400, "Not connected", "The answer came from another authorization server.")
    if params.get("error") or not code or len(code) > 4096:
        log.info("connect for credential %s: the authorization server refused", pending.credential_id)
        return _page(400, "Not connected", "The authorization was refused or cancelled. Retry the tool call.")
    iss = params.get("iss")
    if (iss is None and flow.iss_required) or (iss is not None and flow.issuer != CONFIGURED and iss != flow.issuer):
        log.warning("connect for credential %s: missing or foreign iss (RFC 9207)", pending.credential_id)
        return _page(400, "Not connected", "The answer came from another authorization server.")
    async with d.pool.acquire() as conn:
        meta = await db_credentials.get_credential(conn, tenant, env, pending.credential_id)
        if meta["status"] != "active":
            return bad
        secret = (await db_credentials.open_credential(conn, tenant, env, pending.credential_id, ring)).reveal()
        server_url = await db.server_url(conn, tenant, env, pending.server)
    config = dict(meta["config"] or {})
    auth = AuthServer(flow.issuer, "", flow.token_endpoint)
    try:
        client = await _client_for(
            d.pool, tenant, env, pending.credential_id, config, secret, auth, flow.redirect_uri, ring, register=False
        )
        extra: dict[str, str] = {}
        if resource := _resource(config, server_url):
            extra["resource"] = resource
        where = f"credential {pending.credential_id}: token endpoint {urlsplit(flow.token_endpoint).hostname}"
        allow_private = _allow_private_token_endpoint(config, flow.token_endpoint, allows_private(server_url))
        answer = await _token_request(
            client,
            flow.token_endpoint,
            where,
            allow_private=allow_private,
            grant_type="authorization_code",
            code=code,
            code_verifier=flow.verifier,
            redirect_uri=flow.redirect_uri,
            **extra,
        )
        tokens = _tokens(answer, flow.issuer, flow.token_endpoint, None)
    except CredentialUnavailable as exc:
        log.warning("connect for credential %s: %s", pending.credential_id, exc)
        return _page(400, "Not connected", "The authorization server did not accept the sign-in. Retry.")
    async with d.pool.acquire() as conn:
        stored = await db.store_tokens(conn, tenant, env, pending.credential_id, pending.subject, ring, tokens)
    if stored is None:
        return bad  # revoked meanwhile
    log.info("credential %s connected for a user (server %s)", pending.credential_id, pending.server)
    response = _page(200, "Connected", "Connected: you can close this tab and retry.")
    _set_cookie(response, d.config.control_plane.public_url, _cookie_name(pending.key), "", 0)
    return response


# ---------------------------------------------------------------- the broker's part
_locks: dict[tuple[str, str, str], asyncio.Lock] = {}
"""One lock per (credential, issuer, sub) that ever resolved in this process."""


def _usable(tokens: db.UserTokens | None, force: bool) -> bool:
    if tokens is None or not tokens.access_token or tokens.access_expires_at - time.time() <= MIN_LEFT:
        return False
    # Forced (an upstream refused the access token): refresh, unless a forced refresh was done
    # less than FORCE_INTERVAL ago (bounds an upstream that refuses every token to one refresh
    # per interval per user, across data planes and control-plane processes).
    return not force or (tokens.forced_age is not None and tokens.forced_age < FORCE_INTERVAL)


async def user_material(
    request: Request,
    row: Mapping[str, Any],
    secret: Mapping[str, Any],
    subject: tuple[str, str],
    server: str,
    ring: Keyring,
    *,
    force: bool = False,
) -> tuple[str, float]:
    """``(access_token, expires_at)`` of ``subject`` for the ``oauth_authorization_code``
    credential of ``row`` (a :func:`gateway.db.credentials.resolvable` row).

    ``force`` (an upstream answered 401 to the access token): refresh even if it has not
    expired, unless a forced refresh was done less than :data:`FORCE_INTERVAL` s ago.

    One refresh per (credential, subject) at a time: in this process by a lock, across
    control-plane processes by the row's refresh lease (:data:`REFRESH_LEASE` s); a caller
    that finds the lease taken waits for the holder's result instead of refreshing with the
    same single-use refresh token.

    Raises:
        CredentialNotConnected: The subject has no tokens, or their refresh was refused.
        CredentialUnavailable: The token endpoint failed otherwise.
    """
    d = deps(request)
    credential_id = str(row["credential_id"])
    if not subject[0] or not subject[1]:
        raise CredentialUnavailable(f"credential {credential_id} needs the caller's identity")
    lock = _locks.setdefault((credential_id, subject[0], subject[1]), asyncio.Lock())
    async with lock:
        return await refresh_shared(
            d.pool,
            d.config.tenant,
            d.config.environment,
            d.config.control_plane.public_url,
            row,
            secret,
            subject,
            server,
            ring,
            force=force,
        )


async def refresh_shared(
    pool: Any,
    tenant: str,
    env: str,
    public_url: str,
    row: Mapping[str, Any],
    secret: Mapping[str, Any],
    subject: tuple[str, str],
    server: str,
    ring: Keyring,
    *,
    force: bool = False,
) -> tuple[str, float]:
    """:func:`user_material` without the process lock (what two processes do at once).

    Raises: as :func:`user_material`.
    """
    credential_id = str(row["credential_id"])
    config = dict(row["config"] or {})
    async with pool.acquire() as conn:
        tokens = await db.load_tokens(conn, tenant, env, credential_id, subject, ring)
        server_url = await db.server_url(conn, tenant, env, server)
    for _attempt in range(3):
        if tokens is not None and _usable(tokens, force):
            assert tokens.access_token is not None
            return tokens.access_token, tokens.access_expires_at
        if tokens is None or not tokens.refresh_token:
            break
        # Everything but the token request happens before the lease is taken, so the lease
        # covers one bounded request (TIMEOUT < REFRESH_LEASE) and the conditional store.
        auth = AuthServer(tokens.issuer, "", tokens.token_endpoint)
        try:
            client = await _client_for(
                pool, tenant, env, credential_id, config, secret, auth,
                redirect_uri(public_url, credential_id, tokens.issuer), ring, register=False,
            )  # fmt: skip
        except CredentialUnavailable:  # the registered client is gone: the user connects again
            async with pool.acquire() as conn:
                await db.delete_tokens(conn, tenant, env, credential_id, subject, tokens.generation)
            break
        async with pool.acquire() as conn:
            claimed = await db.claim_refresh(
                conn, tenant, env, credential_id, subject, tokens.generation, REFRESH_LEASE, forced=force
            )
        if not claimed:
            tokens = await _await_refresh(pool, tenant, env, credential_id, subject, ring, tokens.generation)
            continue
        try:
            return await _refresh(pool, tenant, env, credential_id, config, client, server_url, subject, ring, tokens)
        except _RefreshRefused:
            break
    async with pool.acquire() as conn:
        handle = await db.create_connect(conn, tenant, env, credential_id, server, subject)
    url = public_url + CONNECT_PREFIX + handle
    raise CredentialNotConnected(f"credential {credential_id}: the caller has not connected {server}", connect_url=url)


class _RefreshRefused(Exception):
    """The authorization server refused the refresh token (the user must connect again)."""


async def _await_refresh(
    pool: Any, tenant: str, env: str, credential_id: str, subject: tuple[str, str], ring: Keyring, generation: int
) -> db.UserTokens | None:
    """Poll the row until another process's refresh moved it past ``generation`` (or deleted
    it), at most :data:`REFRESH_LEASE` s; the tokens then (the same ones on timeout, whose
    lease has expired by then and can be claimed)."""
    deadline = time.monotonic() + REFRESH_LEASE
    delay = 0.02
    tokens: db.UserTokens | None = None
    while time.monotonic() < deadline:
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.25)
        async with pool.acquire() as conn:
            tokens = await db.load_tokens(conn, tenant, env, credential_id, subject, ring)
        if tokens is None or tokens.generation != generation:
            return tokens
    return tokens


async def _refresh(
    pool: Any,
    tenant: str,
    env: str,
    credential_id: str,
    config: Mapping[str, Any],
    client: _Client,
    server_url: str | None,
    subject: tuple[str, str],
    ring: Keyring,
    tokens: db.UserTokens,
) -> tuple[str, float]:
    """Refresh under the lease taken at ``tokens.generation``; store or delete conditionally."""
    assert tokens.refresh_token is not None
    where = f"credential {credential_id}: token endpoint {urlsplit(tokens.token_endpoint).hostname}"
    try:
        extra: dict[str, str] = {}
        if resource := _resource(config, server_url):
            extra["resource"] = resource
        allow_private = _allow_private_token_endpoint(config, tokens.token_endpoint, allows_private(server_url))
        answer = await _token_request(
            client,
            tokens.token_endpoint,
            where,
            allow_private=allow_private,
            grant_type="refresh_token",
            refresh_token=tokens.refresh_token,
            **extra,
        )
        fresh = _tokens(answer, tokens.issuer, tokens.token_endpoint, tokens.refresh_token)
    except CredentialUnavailable as exc:
        refused = exc.oauth_error in ("invalid_grant", "invalid_client", "unauthorized_client")
        async with pool.acquire() as conn:
            if refused:
                log.info("%s: refresh refused (%s); the user must connect again", where, exc.oauth_error)
                await db.delete_tokens(conn, tenant, env, credential_id, subject, tokens.generation)
            else:
                await db.release_refresh(conn, tenant, env, credential_id, subject, tokens.generation)
        if refused:
            raise _RefreshRefused from None
        raise
    async with pool.acquire() as conn:
        stored = await db.store_tokens(
            conn, tenant, env, credential_id, subject, ring, fresh, expected_generation=tokens.generation
        )
    if stored is None:
        log.info("%s: the row moved on during the refresh (lease expired or revoked); not stored", where)
    assert fresh.access_token is not None
    return fresh.access_token, fresh.access_expires_at
