"""Bearer JWT authentication for the data plane (OAuth 2.1 resource server).

Verifies signature (JWKS, RFC 7517), ``iss``, ``aud`` (RFC 8707 audience),
``exp`` and ``nbf`` (RFC 7519) with pyjwt. Verified tokens are cached by the
SHA-256 of the token until they expire, so the hot path pays one dict lookup.
A 401 carries ``WWW-Authenticate: Bearer ... resource_metadata=...``
(RFC 6750 §3, RFC 9728 §5.1). The raw token is never logged or stored.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Sequence
from urllib.parse import unquote, urlparse

import anyio
import httpx
import jwt
import orjson

from gateway.config import JwtConfig
from gateway.errors import AuthenticationFailed
from gateway.policy.input import Subject

__all__ = ["JwtVerifier", "bearer_token"]

log = logging.getLogger("gateway.auth")

_JWKS_REFRESH_MIN_INTERVAL = 30.0


def bearer_token(authorization: str | None) -> str:
    """Extract the token from an ``Authorization: Bearer`` header (RFC 6750 §2.1).

    Raises:
        AuthenticationFailed: Header missing or not a Bearer credential.
    """
    if not authorization:
        raise AuthenticationFailed("missing bearer token")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthenticationFailed("authorization is not a bearer token")
    return token.strip()


class JwtVerifier:
    """Verify bearer JWTs against a JWKS and map claims to a :class:`Subject`.

    Args:
        config: Issuer, audience, JWKS URL (``http(s)://`` or ``file://``),
            claim names, algorithms, leeway (seconds), cache size.
        http: Client used to fetch an ``http(s)`` JWKS.
    """

    def __init__(self, config: JwtConfig, http: httpx.AsyncClient) -> None:
        self._config = config
        self._http = http
        self._jwks: jwt.PyJWKSet | None = None
        self._jwks_loaded_at = 0.0
        self._lock = anyio.Lock()
        self._cache: OrderedDict[bytes, tuple[Subject, float, frozenset[str]]] = OrderedDict()

    async def _load_jwks(self) -> jwt.PyJWKSet:
        url = self._config.jwks_url
        try:
            if url.startswith("file://"):
                raw = await anyio.Path(unquote(urlparse(url).path)).read_bytes()
            else:
                resp = await self._http.get(url, timeout=5.0)
                resp.raise_for_status()
                raw = resp.content
            return jwt.PyJWKSet.from_dict(orjson.loads(raw))
        except (OSError, httpx.HTTPError, orjson.JSONDecodeError, jwt.PyJWKSetError, AttributeError) as exc:
            # AttributeError: PyJWKSet.from_dict on a JWKS that is not a JSON object
            log.error("cannot load JWKS from %s: %s", url, type(exc).__name__)
            raise AuthenticationFailed("signing keys unavailable") from exc

    async def _key_for(self, kid: str | None) -> jwt.PyJWK:
        now = time.monotonic()
        if self._jwks is None:
            async with self._lock:
                if self._jwks is None:
                    self._jwks, self._jwks_loaded_at = await self._load_jwks(), now
        key = _find_key(self._jwks, kid)
        if key is None and now - self._jwks_loaded_at > _JWKS_REFRESH_MIN_INTERVAL:
            async with self._lock:  # unknown kid: the issuer may have rotated keys
                self._jwks, self._jwks_loaded_at = await self._load_jwks(), now
            key = _find_key(self._jwks, kid)
        if key is None:
            raise AuthenticationFailed("token signed with an unknown key")
        return key

    async def verify(self, token: str, *, audiences: Sequence[str] = ()) -> Subject:
        """Verify ``token`` and return its subject.

        Args:
            token: The compact JWS from the Authorization header.
            audiences: Accepted ``aud`` values besides the configured audience.

        Raises:
            AuthenticationFailed: Bad signature, issuer, audience, expired, not
                yet valid, missing ``sub``, or unreadable token.
        """
        accepted = frozenset((self._config.audience, *audiences))
        digest = hashlib.sha256(token.encode()).digest()
        hit = self._cache.get(digest)
        now = time.time()
        if hit is not None and hit[1] > now and hit[2] <= accepted:
            self._cache.move_to_end(digest)
            return hit[0]
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise AuthenticationFailed("malformed token") from exc
        key = await self._key_for(header.get("kid"))
        try:
            claims = jwt.decode(
                token,
                key=key,
                algorithms=list(self._config.algorithms),
                audience=list(accepted),
                issuer=self._config.issuer,
                leeway=self._config.leeway,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.PyJWTError as exc:
            raise AuthenticationFailed(f"token rejected: {type(exc).__name__}") from exc
        subject = self._subject(claims)
        aud = claims.get("aud")
        token_auds = frozenset([aud] if isinstance(aud, str) else aud or [])
        self._cache[digest] = (subject, float(claims["exp"]) + self._config.leeway, token_auds & accepted)
        if len(self._cache) > self._config.cache_size:
            self._cache.popitem(last=False)
        return subject

    def _subject(self, claims: dict[str, object]) -> Subject:
        roles = claims.get(self._config.roles_claim, [])
        if isinstance(roles, str):
            roles = roles.split()
        scopes = claims.get(self._config.scopes_claim, "")
        if isinstance(scopes, str):
            scopes = scopes.split()
        client_id = claims.get("client_id", claims.get("azp"))
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise AuthenticationFailed("roles claim must be a list of strings")
        if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
            raise AuthenticationFailed("scope claim must be a string or list of strings")
        return Subject(
            sub=str(claims["sub"]),
            issuer=str(claims["iss"]),
            roles=tuple(roles),
            scopes=tuple(scopes),
            client_id=client_id if isinstance(client_id, str) else None,
            claims=claims,
        )


def _find_key(jwks: jwt.PyJWKSet, kid: str | None) -> jwt.PyJWK | None:
    if kid is None:
        return jwks.keys[0] if len(jwks.keys) == 1 else None
    for key in jwks.keys:
        if key.key_id == kid:
            return key
    return None
