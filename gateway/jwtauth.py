"""Bearer JWT verification (OAuth 2.1 resource server), shared by both planes.

The data plane authenticates every caller with it (:mod:`gateway.dataplane.auth` re-exports
it); the control plane's credential broker verifies, with the same configuration and the
same rules, the caller's token a data plane forwards for a per-user credential
(:mod:`gateway.controlplane.broker`).

Verifies signature (JWKS, RFC 7517), ``iss``, ``aud`` (RFC 8707 audience),
``exp`` and ``nbf`` (RFC 7519) with pyjwt, then the rules pyjwt leaves open:
``sub`` must be a non-blank string, and ``exp``/``nbf``/``iat`` must be JSON
numbers (not strings or booleans), finite, and between the epoch and the end
of year 9999 (RFC 7519 §2 "NumericDate"). Verified tokens are cached by the
SHA-256 of the token until they expire, so the hot path pays one dict lookup.
A 401 carries ``WWW-Authenticate: Bearer ... resource_metadata=...``
(RFC 6750 §3, RFC 9728 §5.1). The raw token is never logged or stored.

Claims -> :class:`~gateway.policy.input.Subject` (the policy input's ``subject``): ``sub``,
``iss``; roles, groups and scopes from the configured claims (``roles``, ``groups``,
``scope`` by default); the agent (``azp``, else ``client_id``) and ``client_id`` (``client_id``,
else ``azp``); the RFC 8693 ``act`` chain as ``delegation``, outermost first, at most
:data:`MAX_DELEGATION_DEPTH` actors (deeper: 401 ``delegation_too_deep``); ``credential_kind``
``jwt``.

Signing keys: the JWKS is fetched once, then again only for a ``kid`` it does
not hold, and at most once per ``jwks_refresh_interval``. Concurrent requests
that need a fetch share one (single flight), so a token is never blocked for
more than one fetch; a ``kid`` still unknown after a fetch is remembered
(``jwks_unknown_kid_ttl``, bounded) and refused without another fetch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from urllib.parse import unquote, urlparse

import anyio
import httpx
import jwt
import orjson

from gateway.config import JwtConfig
from gateway.errors import AuthenticationFailed, DelegationTooDeep
from gateway.logredact import redact_url
from gateway.policy.input import Subject

__all__ = ["MAX_DELEGATION_DEPTH", "JwtVerifier", "bearer_token", "delegation_chain"]

log = logging.getLogger("gateway.auth")

_FAILED_FETCH_BACKOFF = 1.0
"""Seconds during which a failed JWKS fetch is not retried (the waiters share its failure)."""
_UNKNOWN_KIDS_MAX = 1024
"""Unknown ``kid`` values remembered at once (oldest dropped first)."""
_NUMERIC_DATE_MAX = 253402300800
"""Epoch seconds of 10000-01-01T00:00:00Z: NumericDates must be below it."""
_NUMERIC_DATES = ("exp", "nbf", "iat")
MAX_DELEGATION_DEPTH = 8
"""Most nested RFC 8693 ``act`` actors a token may carry; a deeper chain is refused (401
``delegation_too_deep``) rather than cut, so a policy never judges a truncated chain."""


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
        http: Client used to fetch an ``http(s)`` JWKS; None: a short-lived client per
            fetch (fetches are rare: once, then only for an unknown ``kid``), so a verifier
            that owns no connection pool needs no closing.
        on_fetch: Called with ``"ok"`` or ``"error"`` after each JWKS fetch (a metric).
    """

    def __init__(
        self,
        config: JwtConfig,
        http: httpx.AsyncClient | None = None,
        *,
        on_fetch: Callable[[str], None] | None = None,
    ) -> None:
        self._config = config
        self._http = http
        self._on_fetch = on_fetch
        self._jwks: jwt.PyJWKSet | None = None
        self._jwks_loaded_at = 0.0
        self._fetches = 0
        """Fetch attempts so far (successful or not): the single-flight generation."""
        self._failed_at: float | None = None
        self._lock = anyio.Lock()
        self._unknown_kids: OrderedDict[str | None, float] = OrderedDict()
        self._cache: OrderedDict[bytes, tuple[Subject, float, frozenset[str]]] = OrderedDict()

    async def _load_jwks(self) -> jwt.PyJWKSet:
        url = self._config.jwks_url
        try:
            if url.startswith("file://"):
                raw = await anyio.Path(unquote(urlparse(url).path)).read_bytes()
            elif self._http is not None:
                raw = await _fetch(self._http, url)
            else:
                async with httpx.AsyncClient() as http:
                    raw = await _fetch(http, url)
            return jwt.PyJWKSet.from_dict(orjson.loads(raw))
        except (OSError, httpx.HTTPError, orjson.JSONDecodeError, jwt.PyJWKSetError, AttributeError) as exc:
            # AttributeError: PyJWKSet.from_dict on a JWKS that is not a JSON object
            log.error("cannot load JWKS from %s: %s", redact_url(url), type(exc).__name__)
            raise AuthenticationFailed("signing keys unavailable") from exc

    async def _key_for(self, kid: str | None) -> jwt.PyJWK:
        jwks = self._jwks
        if jwks is not None:
            key = _find_key(jwks, kid)
            if key is not None:
                return key
            if not self._may_refetch(kid):
                raise AuthenticationFailed("token signed with an unknown key")
        await self._refresh(self._fetches)
        if self._jwks is None:
            raise AuthenticationFailed("signing keys unavailable")
        key = _find_key(self._jwks, kid)
        if key is None:
            self._remember_unknown(kid)
            raise AuthenticationFailed("token signed with an unknown key")
        return key

    def _may_refetch(self, kid: str | None) -> bool:
        """Whether an unknown ``kid`` justifies fetching the JWKS again (keys may have rotated)."""
        now = time.monotonic()
        seen = self._unknown_kids.get(kid)
        if seen is not None:
            if now - seen < self._config.jwks_unknown_kid_ttl:
                return False
            del self._unknown_kids[kid]
        return now - self._jwks_loaded_at >= self._config.jwks_refresh_interval

    def _remember_unknown(self, kid: str | None) -> None:
        self._unknown_kids[kid] = time.monotonic()
        self._unknown_kids.move_to_end(kid)
        while len(self._unknown_kids) > _UNKNOWN_KIDS_MAX:
            self._unknown_kids.popitem(last=False)

    async def _refresh(self, seen: int) -> None:
        """Fetch the JWKS unless another task fetched it since this one looked (``seen``).

        Raises:
            AuthenticationFailed: This fetch, or the one it waited for, failed.
        """
        async with self._lock:
            if self._fetches != seen:  # single flight: share the fetch that just ran
                if self._jwks is None:
                    raise AuthenticationFailed("signing keys unavailable")
                return
            now = time.monotonic()
            if self._failed_at is not None and now - self._failed_at < _FAILED_FETCH_BACKOFF:
                raise AuthenticationFailed("signing keys unavailable")
            try:
                jwks = await self._load_jwks()
            except AuthenticationFailed:
                self._failed_at = now
                if self._on_fetch is not None:
                    self._on_fetch("error")
                raise
            else:
                # Remembered unknown kids stay: the key set is searched before them.
                self._jwks, self._jwks_loaded_at, self._failed_at = jwks, now, None
                if self._on_fetch is not None:
                    self._on_fetch("ok")
            finally:
                self._fetches += 1  # counted once done, so tasks queued behind it share it

    async def verify(self, token: str, *, audiences: Sequence[str] = ()) -> Subject:
        """Verify ``token`` and return its subject.

        Args:
            token: The compact JWS from the Authorization header.
            audiences: Accepted ``aud`` values besides the configured audience.

        Raises:
            AuthenticationFailed: Bad signature, issuer, audience, expired, not
                yet valid, missing or blank ``sub``, ``exp``/``nbf``/``iat`` not a
                NumericDate in range, or unreadable token.
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
        _check_identity_claims(claims)
        subject = dataclasses.replace(self._subject(claims), token=token)
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
        groups = claims.get(self._config.groups_claim, [])
        if isinstance(groups, str):  # one group (group names may hold spaces)
            groups = [groups]
        client_id = claims.get("client_id", claims.get("azp"))
        agent = claims.get("azp", claims.get("client_id"))
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise AuthenticationFailed("roles claim must be a list of strings")
        if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
            raise AuthenticationFailed("scope claim must be a string or list of strings")
        if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
            raise AuthenticationFailed("groups claim must be a string or list of strings")
        return Subject(
            sub=str(claims["sub"]),
            issuer=str(claims["iss"]),
            roles=tuple(roles),
            scopes=tuple(scopes),
            client_id=client_id if isinstance(client_id, str) else None,
            claims=claims,
            groups=tuple(groups),
            agent=agent if isinstance(agent, str) else None,
            delegation=delegation_chain(claims),
            credential_kind="jwt",
        )


def delegation_chain(claims: Mapping[str, object]) -> tuple[dict[str, str], ...]:
    """The RFC 8693 §4.1 ``act`` chain of ``claims``, outermost (the current actor) first.

    ``{"sub": "alice", "act": {"sub": "agent-1", "act": {"sub": "planner"}}}`` gives
    ``({"sub": "agent-1"}, {"sub": "planner"})``. Each entry keeps ``sub`` and, when they are
    strings, ``iss`` and ``client_id``; other actor claims are dropped. At most
    :data:`MAX_DELEGATION_DEPTH` actors.

    Raises:
        DelegationTooDeep: More than :data:`MAX_DELEGATION_DEPTH` nested actors (401
            ``delegation_too_deep``).
        AuthenticationFailed: An ``act`` that is not an object with a non-blank string ``sub``,
            or whose ``iss``/``client_id`` is not a string.
    """
    chain: list[dict[str, str]] = []
    act = claims.get("act")
    while act is not None:
        if len(chain) == MAX_DELEGATION_DEPTH:
            raise DelegationTooDeep(f"token rejected: delegation chain deeper than {MAX_DELEGATION_DEPTH} actors")
        if not isinstance(act, Mapping):
            raise AuthenticationFailed("token rejected: act claim is not an object")
        sub = act.get("sub")
        if not isinstance(sub, str) or not sub.strip():
            raise AuthenticationFailed("token rejected: act claim without a subject")
        actor = {"sub": sub}
        for name in ("iss", "client_id"):
            value = act.get(name)
            if value is None:
                continue
            if not isinstance(value, str):
                raise AuthenticationFailed(f"token rejected: act {name} is not a string")
            actor[name] = value
        chain.append(actor)
        act = act.get("act")
    return tuple(chain)


def _check_identity_claims(claims: dict[str, object]) -> None:
    """Refuse what pyjwt lets through: a blank ``sub`` and non-numeric or absurd dates.

    pyjwt only checks that ``int(value)`` works, so ``"123"``, ``true`` and ``1e300``
    pass it. Every blank-``sub`` token would otherwise share one session owner.
    """
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub.strip():
        raise AuthenticationFailed("token rejected: empty subject")
    for name in _NUMERIC_DATES:
        if name not in claims:
            continue
        value = claims[name]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise AuthenticationFailed(f"token rejected: {name} is not a number")
        if not (math.isfinite(value) and 0 <= value < _NUMERIC_DATE_MAX):
            raise AuthenticationFailed(f"token rejected: {name} is out of range")


async def _fetch(http: httpx.AsyncClient, url: str) -> bytes:
    resp = await http.get(url, timeout=5.0)
    resp.raise_for_status()
    return resp.content


def _find_key(jwks: jwt.PyJWKSet, kid: str | None) -> jwt.PyJWK | None:
    if kid is None:
        return jwks.keys[0] if len(jwks.keys) == 1 else None
    for key in jwks.keys:
        if key.key_id == kid:
            return key
    return None
