"""A real OAuth 2.x authorization server on loopback, for tests (authlib's server core).

The protocol is authlib's (``authlib.oauth2``): client authentication, grant validation,
error responses and token generation. This module adds an in-memory store, a small
Starlette adapter (authlib ships server integrations for Flask and Django only), and the
test hooks below. It is a test fixture: no TLS, no persistence, no login, admin hooks
without authentication. Never expose it beyond 127.0.0.1.

Grants (token endpoint ``POST /token``; clients authenticate with ``client_secret_basic``
or ``client_secret_post``, whichever they were registered with; public DCR clients with
``none``):

* ``client_credentials`` (RFC 6749 section 4.4): no refresh token;
* ``authorization_code`` (section 4.1) with PKCE (RFC 7636), ``S256`` only and required;
  issues a refresh token;
* ``refresh_token`` (section 6) with rotation: every refresh answers a new refresh token and
  revokes the old one; presenting a rotated one again revokes the whole family (the user's
  refresh tokens of that client, RFC 9700 section 4.14.2);
* ``urn:ietf:params:oauth:grant-type:token-exchange`` (RFC 8693), a custom authlib grant:
  ``subject_token`` must be a JWT (``subject_token_type`` ``...:jwt``, ``...:access_token``
  or ``...:id_token``) signed by a key of ``--subject-jwks`` (a JWKS file of the test IdP),
  unexpired, with a ``sub``; answers an access token with the subject's ``sub``,
  ``aud`` = the ``audience`` (or ``resource``) parameter, and ``act: {"sub": <client_id>}``,
  plus ``issued_token_type``. No refresh token.

Access tokens are RFC 9068 JWTs (``typ: at+jwt``, RS256, key id ``as-1``) with ``iss``,
``sub`` (the user, the subject, or the client id for client credentials), ``aud`` (the
``audience`` or ``resource`` parameter, else the authorization request's, else the client
id), ``scope``, ``client_id``, ``jti``, ``iat`` and ``exp`` = ``iat + token_ttl``.

Endpoints:

* ``GET /.well-known/oauth-authorization-server``: RFC 8414 metadata;
* ``GET /jwks.json``: the public signing key;
* ``GET /authorize``: the authorization endpoint. **Test-only consent:** add
  ``approve_as=<user>`` and the request is approved as that user at once (302 to the
  ``redirect_uri`` with ``code``, ``state`` and RFC 9207 ``iss``, which the metadata
  advertises); ``deny=1`` answers ``access_denied`` the
  same way; with neither, a 200 JSON ``{"consent_required": true, ...}``;
* ``POST /token``; ``POST /revoke`` (RFC 7009, refresh and access tokens);
* ``POST /register``: RFC 7591 dynamic client registration (open, or with
  ``Authorization: Bearer <--registration-token>`` when one is set);
* ``GET /_stats``: ``{"issued": {grant_type: n}, "issued_by_client": {client_id: {grant_type: n}},
  "token_requests": n, "errors": {error: n}, "registered": [client_id, ...]}`` (``registered``:
  the clients of ``/register``, in order; kept by ``/_admin/reset``);
* ``GET /_tokens``: ``{"access": [...], "refresh": [...]}``, every token issued (canary tests);
* ``POST /_admin/revoke`` ``{"client_id"?, "user"?}``: disable a client (its token requests
  then fail with ``invalid_client``) and revoke its refresh tokens, and/or revoke every
  refresh token of a user; ``POST /_admin/restore`` ``{"client_id"}`` re-enables a client;
  ``POST /_admin/config`` ``{"token_ttl": seconds}``; ``POST /_admin/reset`` zeroes the stats.
  ``GET /_revoked`` lists the revoked access-token ``jti`` values.

Pre-registered confidential clients (``--client ID:SECRET:METHOD``, repeatable; by default
:data:`DEFAULT_CLIENTS`) may use every grant and any loopback ``redirect_uri``.

    python tests/support/oauth_server.py --port N [--issuer http://127.0.0.1:N] [--token-ttl 2]
        [--subject-jwks PATH] [--subject-issuer ISS] [--client ID:SECRET:METHOD ...]
        [--registration-token TOKEN]

From tests: :func:`start_subprocess` (a :class:`~tests.support.procs.ManagedProcess` on a free
port) or :func:`serve_in_thread` (in this process); :class:`TestIdP` mints subject tokens.
"""

from __future__ import annotations

import argparse
import contextlib
import contextvars
import hmac
import ipaddress
import json
import secrets
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import jwt as pyjwt
import uvicorn
from authlib.common.urls import add_params_to_uri
from authlib.oauth2 import rfc6749
from authlib.oauth2.rfc6749 import (
    AuthorizationServer,
    ClientMixin,
    JsonPayload,
    JsonRequest,
    OAuth2Error,
    OAuth2Payload,
    OAuth2Request,
    TokenMixin,
    grants,
)
from authlib.oauth2.rfc6749.errors import InvalidRequestError, UnauthorizedClientError
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7591 import ClientRegistrationEndpoint
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oauth2.rfc8414 import AuthorizationServerMetadata
from authlib.oauth2.rfc9068 import JWTBearerTokenGenerator
from authlib.oauth2.rfc9207 import IssuerParameter
from joserfc import jwt as jose_jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet, RSAKey
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

__all__ = [
    "DEFAULT_CLIENTS",
    "TOKEN_EXCHANGE",
    "ClientSpec",
    "OAuthServerConfig",
    "RunningOAuthServer",
    "TestIdP",
    "build_app",
    "main",
    "serve_in_thread",
    "start_subprocess",
]

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
TT_ACCESS = "urn:ietf:params:oauth:token-type:access_token"
TT_JWT = "urn:ietf:params:oauth:token-type:jwt"
TT_ID = "urn:ietf:params:oauth:token-type:id_token"
SUBJECT_TOKEN_TYPES = (TT_JWT, TT_ACCESS, TT_ID)
ALL_GRANTS = ("authorization_code", "client_credentials", "refresh_token", TOKEN_EXCHANGE)
AUTH_METHODS = ("client_secret_basic", "client_secret_post")
KEY_ID = "as-1"
CODE_TTL = 600
REFRESH_TTL = 86400


@dataclass(frozen=True)
class ClientSpec:
    """A pre-registered confidential client."""

    client_id: str
    client_secret: str
    auth_method: str = "client_secret_basic"

    @classmethod
    def parse(cls, text: str) -> ClientSpec:
        """``ID:SECRET[:METHOD]``."""
        parts = text.split(":")
        if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
            raise ValueError("--client takes ID:SECRET[:METHOD]")
        method = parts[2] if len(parts) == 3 else "client_secret_basic"
        if method not in AUTH_METHODS:
            raise ValueError(f"--client method must be one of {AUTH_METHODS}")
        return cls(parts[0], parts[1], method)

    def arg(self) -> str:
        return f"{self.client_id}:{self.client_secret}:{self.auth_method}"


DEFAULT_CLIENTS = (
    ClientSpec("basic-client", "basic-client-secret", "client_secret_basic"),
    ClientSpec("post-client", "post-client-secret", "client_secret_post"),
)
"""Registered when no ``--client`` is given."""


@dataclass
class OAuthServerConfig:
    """What the server is started with (the CLI flags)."""

    issuer: str
    token_ttl: int = 300
    subject_jwks: Path | None = None
    subject_issuer: str | None = None
    clients: Sequence[ClientSpec] = DEFAULT_CLIENTS
    registration_token: str | None = None


# ---------------------------------------------------------------- models (in memory)
@dataclass
class User:
    user_id: str

    def get_user_id(self) -> str:
        return self.user_id


@dataclass
class Client(ClientMixin):  # type: ignore[misc]
    client_id: str
    client_secret: str | None = field(repr=False)
    auth_method: str
    redirect_uris: list[str] | None = None  # None: any loopback URI (pre-registered clients)
    grant_types: Sequence[str] = ALL_GRANTS
    response_types: Sequence[str] = ("code",)
    scope: str | None = None  # None: any scope
    metadata: dict[str, Any] = field(default_factory=dict)

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str | None:
        return self.redirect_uris[0] if self.redirect_uris else None

    def get_allowed_scope(self, scope: str | None) -> str:
        if not scope:
            return ""
        if self.scope is None:
            return scope
        allowed = set(self.scope.split())
        return " ".join(s for s in scope.split() if s in allowed)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        if self.redirect_uris is not None:
            return redirect_uri in self.redirect_uris
        parts = urlsplit(redirect_uri)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return False
        if parts.hostname == "localhost":
            return True
        try:
            return ipaddress.ip_address(parts.hostname).is_loopback
        except ValueError:
            return False

    def check_client_secret(self, client_secret: str) -> bool:
        return self.client_secret is not None and hmac.compare_digest(self.client_secret, client_secret)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method == self.auth_method

    def check_response_type(self, response_type: str) -> bool:
        return response_type in self.response_types

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in self.grant_types


@dataclass
class AuthCode(rfc6749.AuthorizationCodeMixin):  # type: ignore[misc]
    code: str
    client_id: str
    redirect_uri: str | None
    scope: str
    user_id: str
    code_challenge: str | None
    code_challenge_method: str | None
    audience: str | None
    expires_at: float

    def get_redirect_uri(self) -> str | None:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope


@dataclass
class TokenRecord(TokenMixin):  # type: ignore[misc]
    """An issued access token (by ``jti``) or refresh token."""

    value: str
    kind: str  # "access_token" | "refresh_token"
    client_id: str
    user_id: str | None
    scope: str
    audience: Any
    expires_at: float
    jti: str | None = None
    revoked: bool = False
    rotated: bool = False

    def check_client(self, client: Client) -> bool:
        return self.client_id == client.client_id

    def get_scope(self) -> str:
        return self.scope

    def get_expires_in(self) -> int:
        return max(0, int(self.expires_at - time.time()))

    def is_expired(self) -> bool:
        return time.time() >= self.expires_at

    def is_revoked(self) -> bool:
        return self.revoked

    def get_user(self) -> User | None:
        return User(self.user_id) if self.user_id else None

    def get_client(self) -> Any:
        return None


class Store:
    """Everything the server knows, in memory, behind one lock."""

    def __init__(self, config: OAuthServerConfig) -> None:
        self.lock = threading.RLock()
        self.config = config
        self.clients: dict[str, Client] = {
            c.client_id: Client(c.client_id, c.client_secret, c.auth_method) for c in config.clients
        }
        self.disabled: set[str] = set()
        self.codes: dict[str, AuthCode] = {}
        self.refresh: dict[str, TokenRecord] = {}
        self.access: dict[str, TokenRecord] = {}  # by access token string
        self.issued: Counter[str] = Counter()
        self.issued_by_client: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self.token_requests = 0
        self.errors: Counter[str] = Counter()
        self.registered: list[str] = []

    def stats(self) -> dict[str, Any]:
        with self.lock:
            return {
                "issued": dict(self.issued),
                "issued_by_client": {k: dict(v) for k, v in self.issued_by_client.items()},
                "token_requests": self.token_requests,
                "errors": dict(self.errors),
                "registered": list(self.registered),
            }

    def reset_stats(self) -> None:
        with self.lock:
            self.issued.clear()
            self.issued_by_client.clear()
            self.token_requests = 0
            self.errors.clear()

    def revoke_refresh(self, *, client_id: str | None = None, user_id: str | None = None) -> int:
        n = 0
        with self.lock:
            for rec in self.refresh.values():
                if rec.revoked:
                    continue
                if (client_id is None or rec.client_id == client_id) and (user_id is None or rec.user_id == user_id):
                    rec.revoked = True
                    n += 1
        return n


# ---------------------------------------------------------------- the authlib adapter
class _Payload(OAuth2Payload):  # type: ignore[misc]
    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        self._pairs = pairs
        self._data: dict[str, str] = {}
        for k, v in pairs:
            self._data.setdefault(k, v)
        self._list: defaultdict[str, list[str]] = defaultdict(list)
        for k, v in pairs:
            self._list[k].append(v)

    @property
    def data(self) -> dict[str, str]:
        return self._data

    @property
    def datalist(self) -> defaultdict[str, list[str]]:
        return self._list


class _Request(OAuth2Request):  # type: ignore[misc]
    """A request already read from Starlette: authlib's core is synchronous."""

    def __init__(self, method: str, url: str, headers: Mapping[str, str], query: str, body: bytes) -> None:
        super().__init__(method=method, uri=url, headers=headers)
        self._args = dict(parse_qsl(query, keep_blank_values=True))
        form_pairs = parse_qsl(body.decode("utf-8", errors="replace"), keep_blank_values=True) if body else []
        self._form: dict[str, str] = {}
        for k, v in form_pairs:
            self._form.setdefault(k, v)
        self.payload = _Payload(parse_qsl(query, keep_blank_values=True) + form_pairs)
        self.form_list = _Payload(form_pairs).datalist

    @property
    def args(self) -> dict[str, str]:
        return self._args

    @property
    def form(self) -> dict[str, str]:
        return self._form


class _JsonPayload(JsonPayload):  # type: ignore[misc]
    def __init__(self, data: Any) -> None:
        self._data = data

    @property
    def data(self) -> Any:
        return self._data


class _JsonRequest(JsonRequest):  # type: ignore[misc]
    def __init__(self, method: str, url: str, headers: Mapping[str, str], body: bytes) -> None:
        super().__init__(method, url, headers)
        try:
            data = json.loads(body) if body else {}
        except ValueError:
            data = {}
        self.payload = _JsonPayload(data if isinstance(data, dict) else {})


_CURRENT: contextvars.ContextVar[_Request | None] = contextvars.ContextVar("oauth_request", default=None)


def _requested_audience(request: _Request | None) -> Any:
    """The ``audience`` (RFC 8693) or ``resource`` (RFC 8707) values of the token request."""
    if request is None:
        return None
    values = request.form_list.get("audience") or request.form_list.get("resource") or []
    if not values:
        return None
    return values[0] if len(values) == 1 else list(values)


class _TokenGenerator(JWTBearerTokenGenerator):  # type: ignore[misc]
    def __init__(self, issuer: str, keys: KeySet, store: Store) -> None:
        super().__init__(issuer, alg="RS256", refresh_token_generator=self._refresh, expires_generator=self._ttl)
        self._keys = keys
        self._store = store

    def _ttl(self, client: Client, grant_type: str) -> int:
        return self._store.config.token_ttl

    @staticmethod
    def _refresh(client: Client, grant_type: str, user: Any, scope: str) -> str:
        return secrets.token_urlsafe(32)

    def get_jwks(self) -> KeySet:
        return self._keys

    def get_audiences(self, client: Client, user: Any, scope: str) -> Any:
        request = _CURRENT.get()
        requested = _requested_audience(request)
        if requested is not None:
            return requested
        if request is not None:
            for held in (request.authorization_code, request.refresh_token):
                if held is not None and getattr(held, "audience", None):
                    return held.audience
        return client.get_client_id()

    def get_extra_claims(self, client: Client, grant_type: str, user: Any, scope: str) -> dict[str, Any]:
        if grant_type == TOKEN_EXCHANGE:
            return {"act": {"sub": client.get_client_id()}}
        return {}


class _Server(AuthorizationServer):  # type: ignore[misc]
    def __init__(self, store: Store, keys: KeySet) -> None:
        super().__init__(scopes_supported=None)
        self.store = store
        self.register_token_generator("default", _TokenGenerator(store.config.issuer, keys, store))

    def query_client(self, client_id: str) -> Client | None:
        with self.store.lock:
            if client_id in self.store.disabled:
                return None
            return self.store.clients.get(client_id)

    def save_token(self, token: dict[str, Any], request: _Request) -> None:
        grant = request.payload.grant_type or "?"
        claims = pyjwt.decode(token["access_token"], options={"verify_signature": False})
        client_id = request.client.get_client_id()
        user_id = request.user.get_user_id() if request.user is not None else None
        now = time.time()
        with self.store.lock:
            self.store.issued[grant] += 1
            self.store.issued_by_client[client_id][grant] += 1
            self.store.access[token["access_token"]] = TokenRecord(
                token["access_token"], "access_token", client_id, user_id, token.get("scope", ""),
                claims.get("aud"), float(claims["exp"]), jti=claims.get("jti"),
            )  # fmt: skip
            if "refresh_token" in token:
                self.store.refresh[token["refresh_token"]] = TokenRecord(
                    token["refresh_token"], "refresh_token", client_id, user_id, token.get("scope", ""),
                    claims.get("aud"), now + REFRESH_TTL,
                )  # fmt: skip

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        return None

    def create_oauth2_request(self, request: Any) -> _Request:
        assert isinstance(request, _Request)
        return request

    def create_json_request(self, request: Any) -> _JsonRequest:
        assert isinstance(request, _JsonRequest)
        return request

    def handle_response(self, status: int, body: Any, headers: Any) -> Response:
        hdrs = dict(headers or [])
        if isinstance(body, dict):
            hdrs.pop("Content-Type", None)
            return JSONResponse(body, status_code=status, headers=hdrs)
        return Response(body or b"", status_code=status, headers=hdrs)

    def handle_error_response(self, request: Any, error: OAuth2Error) -> Response:
        with self.store.lock:
            self.store.errors[str(error.error)] += 1
        return super().handle_error_response(request, error)


# ---------------------------------------------------------------- grants
_CLIENT_AUTH = ["client_secret_basic", "client_secret_post"]


class _ClientCredentialsGrant(grants.ClientCredentialsGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = _CLIENT_AUTH


class _AuthorizationCodeGrant(grants.AuthorizationCodeGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = [*_CLIENT_AUTH, "none"]

    def save_authorization_code(self, code: str, request: _Request) -> None:
        data = request.payload.data
        audience = data.get("resource") or data.get("audience")
        record = AuthCode(
            code, request.client.get_client_id(), data.get("redirect_uri"), request.scope or "",
            request.user.get_user_id(), data.get("code_challenge"), data.get("code_challenge_method"),
            audience, time.time() + CODE_TTL,
        )  # fmt: skip
        store: Store = self.server.store
        with store.lock:
            store.codes[code] = record

    def query_authorization_code(self, code: str, client: Client) -> AuthCode | None:
        store: Store = self.server.store
        with store.lock:
            record = store.codes.get(code)
        if record is None or record.client_id != client.client_id or time.time() >= record.expires_at:
            return None
        return record

    def delete_authorization_code(self, authorization_code: AuthCode) -> None:
        store: Store = self.server.store
        with store.lock:
            store.codes.pop(authorization_code.code, None)

    def authenticate_user(self, authorization_code: AuthCode) -> User:
        return User(authorization_code.user_id)


class _RefreshTokenGrant(grants.RefreshTokenGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = [*_CLIENT_AUTH, "none"]
    INCLUDE_NEW_REFRESH_TOKEN = True  # rotation

    def authenticate_refresh_token(self, refresh_token: str) -> TokenRecord | None:
        store: Store = self.server.store
        with store.lock:
            record = store.refresh.get(refresh_token)
        if record is None or record.is_expired():
            return None
        if record.revoked:
            if record.rotated:  # a rotated token came back: assume theft, revoke the family
                store.revoke_refresh(client_id=record.client_id, user_id=record.user_id)
            return None
        return record

    def authenticate_user(self, refresh_token: TokenRecord) -> User | None:
        return User(refresh_token.user_id) if refresh_token.user_id else None

    def revoke_old_credential(self, refresh_token: TokenRecord) -> None:
        store: Store = self.server.store
        with store.lock:
            refresh_token.revoked = True
            refresh_token.rotated = True


class _S256Required(CodeChallenge):  # type: ignore[misc]
    """PKCE for every authorization request, ``S256`` only (OAuth 2.1)."""

    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]

    def validate_code_challenge(self, grant: Any, redirect_uri: str) -> None:
        data = grant.request.payload.data
        if not data.get("code_challenge"):
            raise InvalidRequestError("Missing 'code_challenge' (PKCE is required)")
        if data.get("code_challenge_method") != "S256":
            raise InvalidRequestError("'code_challenge_method' must be S256")
        super().validate_code_challenge(grant, redirect_uri)


class TokenExchangeGrant(grants.BaseGrant, grants.TokenEndpointMixin):  # type: ignore[misc]
    """RFC 8693 token exchange as an authlib grant (authlib ships none).

    Validates client authentication (authlib's), then the subject token against the
    configured subject JWKS; issues an access token for the subject, ``act`` = the client.
    """

    GRANT_TYPE = TOKEN_EXCHANGE
    TOKEN_ENDPOINT_AUTH_METHODS = _CLIENT_AUTH

    def validate_token_request(self) -> None:
        client = self.authenticate_token_endpoint_client()
        if not client.check_grant_type(self.GRANT_TYPE):
            raise UnauthorizedClientError(f"The client is not authorized to use 'grant_type={self.GRANT_TYPE}'")
        self.request.client = client
        form = self.request.form
        subject_token, subject_type = form.get("subject_token"), form.get("subject_token_type")
        if not subject_token or not subject_type:
            raise InvalidRequestError("Missing 'subject_token' or 'subject_token_type'")
        if subject_type not in SUBJECT_TOKEN_TYPES:
            raise InvalidRequestError("Unsupported 'subject_token_type'")
        if form.get("actor_token"):
            raise InvalidRequestError("'actor_token' is not supported")
        requested = form.get("requested_token_type") or TT_ACCESS
        if requested not in (TT_ACCESS, TT_JWT):
            raise InvalidRequestError("Unsupported 'requested_token_type'")
        claims = self._verify_subject(subject_token)
        self.request.user = User(str(claims["sub"]))
        self.request.issued_token_type = requested
        self.validate_requested_scope()

    def _verify_subject(self, token: str) -> dict[str, Any]:
        store: Store = self.server.store
        path = store.config.subject_jwks
        if path is None:
            raise InvalidRequestError("This server trusts no subject token issuer (--subject-jwks)")
        try:
            keys = KeySet.import_key_set(json.loads(path.read_text()))
            decoded = jose_jwt.decode(token, keys, algorithms=["RS256", "ES256", "EdDSA"])
            rules: dict[str, Any] = {"exp": {"essential": True}, "sub": {"essential": True}}
            if store.config.subject_issuer:
                rules["iss"] = {"essential": True, "value": store.config.subject_issuer}
            jose_jwt.JWTClaimsRegistry(**rules).validate(decoded.claims)
        except (JoseError, ValueError) as exc:
            raise InvalidRequestError("Invalid 'subject_token'") from exc
        return dict(decoded.claims)

    def create_token_response(self) -> tuple[int, dict[str, Any], Any]:
        token = self.generate_token(
            user=self.request.user, scope=self.request.payload.scope, include_refresh_token=False
        )
        token["issued_token_type"] = self.request.issued_token_type
        self.save_token(token)
        return 200, token, self.TOKEN_RESPONSE_HEADER


class _Revocation(RevocationEndpoint):  # type: ignore[misc]
    CLIENT_AUTH_METHODS = _CLIENT_AUTH

    def query_token(self, token_string: str, token_type_hint: str | None) -> TokenRecord | None:
        store: Store = self.server.store
        with store.lock:
            return store.refresh.get(token_string) or store.access.get(token_string)

    def revoke_token(self, token: TokenRecord, request: _Request) -> None:
        store: Store = self.server.store
        with store.lock:
            token.revoked = True


class _Registration(ClientRegistrationEndpoint):  # type: ignore[misc]
    def __init__(self, server: _Server, metadata: dict[str, Any]) -> None:
        super().__init__(server)
        self._metadata = metadata

    def get_server_metadata(self) -> dict[str, Any]:
        return self._metadata

    def authenticate_token(self, request: _JsonRequest) -> Any:
        expected = self.server.store.config.registration_token
        if expected is None:
            return {"open": True}
        header = request.headers.get("authorization", "")
        if header[:7].lower() == "bearer " and hmac.compare_digest(header[7:], expected):
            return {"token": True}
        return None

    def resolve_public_key(self, request: _JsonRequest) -> None:
        return None

    def save_client(self, client_info: dict[str, Any], client_metadata: dict[str, Any], request: Any) -> Client:
        method = client_metadata.get("token_endpoint_auth_method", "client_secret_basic")
        client = Client(
            client_id=client_info["client_id"],
            client_secret=None if method == "none" else client_info["client_secret"],
            auth_method=method,
            redirect_uris=list(client_metadata.get("redirect_uris") or []),
            grant_types=tuple(client_metadata.get("grant_types") or ("authorization_code",)),
            response_types=tuple(client_metadata.get("response_types") or ("code",)),
            scope=client_metadata.get("scope"),
            metadata=client_metadata,
        )
        store: Store = self.server.store
        with store.lock:
            store.clients[client.client_id] = client
            store.registered.append(client.client_id)
        return client


# ---------------------------------------------------------------- the app
class _Issuer(IssuerParameter):  # type: ignore[misc]
    """RFC 9207: ``iss`` in every authorization response."""

    def __init__(self, issuer: str) -> None:
        self._issuer = issuer

    def get_issuer(self) -> str:
        return self._issuer

    def add_issuer_parameter(self, authorization_server: Any, response: Response) -> None:
        location = response.headers.get("location")
        if location:  # this server's responses are Starlette ones (authlib's hook expects its own)
            response.headers["location"] = add_params_to_uri(location, {"iss": self._issuer})


def server_metadata(issuer: str) -> dict[str, Any]:
    """RFC 8414 metadata for ``issuer`` (validated by authlib at build time)."""
    base = issuer.rstrip("/")
    return {
        "issuer": issuer,
        "authorization_endpoint": f"{base}/authorize",
        "token_endpoint": f"{base}/token",
        "jwks_uri": f"{base}/jwks.json",
        "registration_endpoint": f"{base}/register",
        "revocation_endpoint": f"{base}/revoke",
        "response_types_supported": ["code"],
        "grant_types_supported": list(ALL_GRANTS),
        "token_endpoint_auth_methods_supported": [*_CLIENT_AUTH, "none"],
        "revocation_endpoint_auth_methods_supported": list(_CLIENT_AUTH),
        "code_challenge_methods_supported": ["S256"],
        "authorization_response_iss_parameter_supported": True,
    }


def build_app(config: OAuthServerConfig) -> Starlette:
    """The server as a Starlette app (see the module docstring)."""
    key = RSAKey.generate_key(2048, parameters={"kid": KEY_ID, "use": "sig", "alg": "RS256"})
    keys = KeySet([key])
    public_jwks = {"keys": [key.as_dict(private=False)]}
    store = Store(config)
    server = _Server(store, keys)
    server.register_grant(_ClientCredentialsGrant)
    server.register_grant(_AuthorizationCodeGrant, [_S256Required(required=True)])
    server.register_grant(_RefreshTokenGrant)
    server.register_grant(TokenExchangeGrant)
    server.register_endpoint(_Revocation)
    server.register_extension(_Issuer(config.issuer))
    metadata = server_metadata(config.issuer)
    AuthorizationServerMetadata(metadata).validate()
    server.register_endpoint(_Registration(server, metadata))

    async def _read(request: Request) -> _Request:
        body = await request.body()
        return _Request(request.method, str(request.url), request.headers, request.url.query, body)

    async def well_known(request: Request) -> JSONResponse:
        return JSONResponse(metadata)

    async def jwks(request: Request) -> JSONResponse:
        return JSONResponse(public_jwks)

    async def authorize(request: Request) -> Response:
        req = await _read(request)
        token = _CURRENT.set(req)
        try:
            try:
                grant = server.get_consent_grant(request=req)
            except OAuth2Error as error:
                response: Response = server.handle_error_response(req, error)
                return response
            approve_as = req.args.get("approve_as")
            if approve_as:
                response = server.create_authorization_response(req, grant_user=User(approve_as), grant=grant)
                return response
            if req.args.get("deny"):
                response = server.create_authorization_response(req, grant_user=None, grant=grant)
                return response
            return JSONResponse(
                {
                    "consent_required": True,
                    "client_id": req.payload.client_id,
                    "scope": req.payload.scope,
                    "hint": "test server: repeat with approve_as=<user> (or deny=1)",
                }
            )
        finally:
            _CURRENT.reset(token)

    async def token_endpoint(request: Request) -> Response:
        req = await _read(request)
        with store.lock:
            store.token_requests += 1
        token = _CURRENT.set(req)
        try:
            response: Response = server.create_token_response(req)
            return response
        finally:
            _CURRENT.reset(token)

    async def revoke(request: Request) -> Response:
        response: Response = server.create_endpoint_response("revocation", await _read(request))
        return response

    async def register(request: Request) -> Response:
        req = _JsonRequest(request.method, str(request.url), request.headers, await request.body())
        try:
            response: Response = server.create_endpoint_response("client_registration", req)
        except OAuth2Error as error:
            response = server.handle_error_response(req, error)
        return response

    async def stats(request: Request) -> JSONResponse:
        return JSONResponse(store.stats())

    async def issued_tokens(request: Request) -> JSONResponse:
        with store.lock:
            return JSONResponse({"access": sorted(store.access), "refresh": sorted(store.refresh)})

    async def revoked(request: Request) -> JSONResponse:
        with store.lock:
            jtis = sorted(r.jti for r in store.access.values() if r.revoked and r.jti)
        return JSONResponse({"jti": jtis})

    async def admin(request: Request) -> JSONResponse:
        action = request.path_params["action"]
        body = await request.json() if (await request.body()) else {}
        if action == "revoke":
            n = 0
            if body.get("client_id"):
                with store.lock:
                    store.disabled.add(body["client_id"])
                n += store.revoke_refresh(client_id=body["client_id"])
            if body.get("user"):
                n += store.revoke_refresh(user_id=body["user"])
            return JSONResponse({"revoked_refresh_tokens": n})
        if action == "restore":
            with store.lock:
                store.disabled.discard(body.get("client_id", ""))
            return JSONResponse({"ok": True})
        if action == "config":
            with store.lock:
                if "token_ttl" in body:
                    store.config.token_ttl = int(body["token_ttl"])
            return JSONResponse({"token_ttl": store.config.token_ttl})
        if action == "reset":
            store.reset_stats()
            return JSONResponse({"ok": True})
        return JSONResponse({"error": "unknown admin action"}, status_code=404)

    routes = [
        Route("/.well-known/oauth-authorization-server", well_known),
        Route("/jwks.json", jwks),
        Route("/authorize", authorize, methods=["GET"]),
        Route("/token", token_endpoint, methods=["POST"]),
        Route("/revoke", revoke, methods=["POST"]),
        Route("/register", register, methods=["POST"]),
        Route("/_stats", stats),
        Route("/_revoked", revoked),
        Route("/_tokens", issued_tokens),
        Route("/_admin/{action}", admin, methods=["POST"]),
    ]
    app = Starlette(routes=routes)
    app.state.store = store
    return app


# ---------------------------------------------------------------- test helpers
class TestIdP:
    """A test identity provider: an RSA key, its public JWKS file, and tokens signed with it.

    ``TestIdP(path).token(sub="alice", aud="gateway", ttl=60)`` is a subject token the
    server (started with ``--subject-jwks path``) accepts.
    """

    __test__ = False  # not a pytest class

    def __init__(self, jwks_path: Path, issuer: str = "https://idp.test", kid: str = "idp-1") -> None:
        self.issuer = issuer
        self.kid = kid
        self._key = RSAKey.generate_key(2048, parameters={"kid": kid, "use": "sig", "alg": "RS256"})
        self.jwks_path = jwks_path
        jwks_path.write_text(json.dumps({"keys": [self._key.as_dict(private=False)]}))

    def token(self, sub: str, *, aud: str = "gateway", ttl: float = 300, **claims: Any) -> str:
        now = int(time.time())
        payload = {"iss": self.issuer, "sub": sub, "aud": aud, "iat": now, "exp": int(now + ttl), **claims}
        return jose_jwt.encode({"alg": "RS256", "kid": self.kid}, payload, self._key)


@dataclass
class RunningOAuthServer:
    """A started server: its ``url`` (the issuer), and JSON helpers for the test hooks."""

    url: str

    @property
    def token_endpoint(self) -> str:
        return f"{self.url}/token"

    def stats(self) -> dict[str, Any]:
        with httpx.Client(trust_env=False, timeout=5) as http:
            data: dict[str, Any] = http.get(f"{self.url}/_stats").raise_for_status().json()
        return data

    def issued(self, grant_type: str, client_id: str | None = None) -> int:
        stats = self.stats()
        counts = stats["issued"] if client_id is None else stats["issued_by_client"].get(client_id, {})
        return int(counts.get(grant_type, 0))

    def admin(self, action: str, body: Mapping[str, Any] | None = None) -> dict[str, Any]:
        with httpx.Client(trust_env=False, timeout=5) as http:
            data: dict[str, Any] = (
                http.post(f"{self.url}/_admin/{action}", json=dict(body or {})).raise_for_status().json()
            )
        return data


def _argv(port: int, config: OAuthServerConfig) -> list[str]:
    argv = ["--port", str(port), "--issuer", config.issuer, "--token-ttl", str(config.token_ttl)]
    if config.subject_jwks is not None:
        argv += ["--subject-jwks", str(config.subject_jwks)]
    if config.subject_issuer:
        argv += ["--subject-issuer", config.subject_issuer]
    for client in config.clients:
        argv += ["--client", client.arg()]
    if config.registration_token:
        argv += ["--registration-token", config.registration_token]
    return argv


@contextlib.contextmanager
def start_subprocess(
    log_dir: Path,
    *,
    token_ttl: int = 300,
    subject_jwks: Path | None = None,
    subject_issuer: str | None = None,
    clients: Sequence[ClientSpec] = DEFAULT_CLIENTS,
    registration_token: str | None = None,
    name: str = "oauth-server",
) -> Iterator[RunningOAuthServer]:
    """Run this module as a subprocess on a free loopback port until the block ends."""
    from tests.support.ports import free_port
    from tests.support.procs import managed_process

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    config = OAuthServerConfig(url, token_ttl, subject_jwks, subject_issuer, clients, registration_token)
    argv = [sys.executable, str(Path(__file__).resolve()), *_argv(port, config)]
    with managed_process(
        name, argv, log_dir=log_dir, wait_http=f"{url}/.well-known/oauth-authorization-server", timeout=30
    ):
        yield RunningOAuthServer(url)


@contextlib.contextmanager
def serve_in_thread(config: OAuthServerConfig | None = None, **kwargs: Any) -> Iterator[RunningOAuthServer]:
    """Run the server in a thread of this process (uvicorn, own event loop) until the block ends.

    Without ``config``, ``kwargs`` are :class:`OAuthServerConfig` fields and the issuer is
    the URL of a free loopback port.
    """
    from tests.support.ports import free_port

    port = free_port()
    if config is None:
        config = OAuthServerConfig(issuer=f"http://127.0.0.1:{port}", **kwargs)
    server = uvicorn.Server(uvicorn.Config(build_app(config), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="oauth-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the OAuth test server did not start")
        time.sleep(0.02)
    try:
        yield RunningOAuthServer(f"http://127.0.0.1:{port}")
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="OAuth 2.x authorization server for tests (loopback only)")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--issuer", help="default http://127.0.0.1:PORT")
    parser.add_argument("--token-ttl", type=int, default=300, help="access token lifetime, seconds")
    parser.add_argument("--subject-jwks", type=Path, help="JWKS file of the IdP whose JWTs token exchange accepts")
    parser.add_argument("--subject-issuer", help="require this iss in subject tokens")
    parser.add_argument("--client", action="append", type=ClientSpec.parse, help="ID:SECRET[:METHOD], repeatable")
    parser.add_argument("--registration-token", help="initial access token required by POST /register")
    args = parser.parse_args(argv)
    config = OAuthServerConfig(
        issuer=args.issuer or f"http://127.0.0.1:{args.port}",
        token_ttl=args.token_ttl,
        subject_jwks=args.subject_jwks,
        subject_issuer=args.subject_issuer,
        clients=tuple(args.client) if args.client else DEFAULT_CLIENTS,
        registration_token=args.registration_token,
    )
    uvicorn.run(build_app(config), host="127.0.0.1", port=args.port, log_level="warning", timeout_graceful_shutdown=1)


if __name__ == "__main__":
    main()
