"""The control plane's OAuth 2.0 token client: it holds the client secrets, the data plane
only ever receives the short-lived access tokens fetched here.

Two grants, for the two OAuth credential kinds (``gateway.credentials.kinds``):

* ``oauth_client_credentials``: RFC 6749 section 4.4, with ``scope`` and, when configured,
  ``audience`` sent as an extra parameter;
* ``oauth_token_exchange``: RFC 8693; the caller's (already verified) token is the
  ``subject_token`` (type ``urn:ietf:params:oauth:token-type:jwt``), with ``audience``,
  ``scope`` and ``requested_token_type`` when configured.

Clients authenticate with ``client_secret_basic`` or ``client_secret_post`` (RFC 6749
section 2.3.1), as the credential's ``auth_method`` says. The protocol is authlib's
(``AsyncOAuth2Client``); this module adds caching, single flight, bounds and error mapping:

* **Caching.** Client-credentials tokens are cached per (credential id, ``version``) until
  ``expires_at - skew``; token-exchange tokens per (credential id, ``version``, SHA-256 of
  the subject token) until ``min(token expiry, subject token exp) - skew``, where
  ``skew = min(30 s, 10 % of the remaining lifetime)``. ``version`` is whatever the caller
  changes on rotation (the credential's fingerprint or ``rotated_at``), so a rotated secret
  is never answered with a token fetched under the old one. The cache is an LRU of
  :data:`MAX_ENTRIES` entries; :meth:`TokenSource.invalidate` drops a credential's entries.
  A token without ``expires_in`` is taken to live :data:`DEFAULT_LIFETIME` seconds.
* **Forced refresh.** ``refresh=True`` (an upstream answered 401 to the cached token) drops
  the key's cached token and fetches a new one, at most once per key per
  ``refresh_interval`` seconds (:data:`REFRESH_INTERVAL`); within it the cached token is
  answered (it was fetched moments ago), so a misconfigured upstream that refuses every
  token cannot make each call reach the token endpoint.
* **Single flight.** Concurrent requests for one key share one token request.
* **Bounds.** :data:`TIMEOUT` seconds for the whole exchange, no redirects, answers of at
  most :data:`MAX_RESPONSE_BYTES`, access tokens of at most :data:`MAX_TOKEN_CHARS` visible
  ASCII characters (they go into an ``Authorization`` header). Proxy variables of the
  environment are ignored.
* **Errors.** Every failure is :class:`~gateway.errors.CredentialUnavailable`; its message
  names the credential id, the token endpoint's host and the OAuth error code only, never a
  secret, a token or the endpoint's ``error_description``, and it chains no cause.

Times are Unix seconds (wall clock: token and subject ``exp`` values are).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx2
import jwt
import orjson
from authlib.integrations.base_client import OAuthError
from authlib.integrations.httpx_client import AsyncOAuth2Client

from gateway.errors import CredentialUnavailable

__all__ = [
    "BoundedTransport",
    "DEFAULT_LIFETIME",
    "MAX_ENTRIES",
    "ResponseTooLarge",
    "subject_exp",
    "MAX_RESPONSE_BYTES",
    "MAX_TOKEN_CHARS",
    "REFRESH_INTERVAL",
    "SUBJECT_TOKEN_TYPE",
    "TIMEOUT",
    "TOKEN_EXCHANGE_GRANT",
    "Token",
    "TokenSource",
]

log = logging.getLogger(__name__)

TIMEOUT = 10.0
"""Seconds for one token request, connect to last byte."""
MAX_RESPONSE_BYTES = 64 * 1024
"""Largest token endpoint answer read."""
MAX_TOKEN_CHARS = 16 * 1024
"""Longest access token accepted."""
MAX_ENTRIES = 10_000
"""Cached tokens kept (least recently used dropped first)."""
DEFAULT_LIFETIME = 60.0
"""Seconds a token without ``expires_in`` is taken to live."""
REFRESH_INTERVAL = 30.0
"""Least seconds between two forced refreshes (``refresh=True``) of one cached token."""
MAX_SKEW = 30.0
"""Most seconds a token is dropped from the cache before it expires (also capped at 10 %)."""
MIN_LEFT = 2.0
"""Seconds a cached token must still have (half its lifetime at most): a token's ``exp`` may be
up to a second before what ``expires_in`` said, and it still has to reach the upstream."""
TOKEN_EXCHANGE_GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
SUBJECT_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:jwt"
AUTH_METHODS = ("client_secret_basic", "client_secret_post")

_VISIBLE = re.compile(r"[\x21-\x7e]+")
_ERROR_CODE = re.compile(r"[a-z0-9_.\-]{1,64}")


@dataclass(frozen=True, slots=True)
class Token:
    """An access token to present upstream.

    ``expires_at`` is in Unix seconds: the token endpoint's expiry, and for token exchange
    no later than the subject token's ``exp``. ``token_type`` is as answered (``Bearer``
    when absent); ``issued_token_type`` is RFC 8693's, ``None`` for client credentials.
    ``repr`` never shows the token.
    """

    access_token: str = field(repr=False)
    expires_at: float
    token_type: str = "Bearer"
    issued_token_type: str | None = None


@dataclass(slots=True)
class _Entry:
    token: Token
    fresh_until: float


_Key = tuple[str, str, str, str, str]  # (grant, credential id, version, config digest, subject digest)


class ResponseTooLarge(Exception):
    """An answer went over :class:`BoundedTransport`'s byte limit."""


class _BoundedStream(httpx2.AsyncByteStream):
    def __init__(self, inner: httpx2.AsyncByteStream, limit: int) -> None:
        self._inner, self._limit = inner, limit

    async def __aiter__(self) -> AsyncIterator[bytes]:
        seen = 0
        async for chunk in self._inner:
            seen += len(chunk)
            if seen > self._limit:
                raise ResponseTooLarge
            yield chunk

    async def aclose(self) -> None:
        await self._inner.aclose()


class BoundedTransport(httpx2.AsyncBaseTransport):
    """Caps every answer at ``limit`` bytes; shared by the per-request clients, closed by
    :meth:`TokenSource.aclose` only."""

    def __init__(self, limit: int) -> None:
        self._inner = httpx2.AsyncHTTPTransport(trust_env=False)
        self._limit = limit

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        response = await self._inner.handle_async_request(request)
        length = response.headers.get("content-length", "")
        if length.isdigit() and int(length) > self._limit:
            await response.aclose()
            raise ResponseTooLarge
        assert isinstance(response.stream, httpx2.AsyncByteStream)
        return httpx2.Response(
            response.status_code,
            headers=response.headers,
            stream=_BoundedStream(response.stream, self._limit),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:  # the clients come and go; the pool stays
        return None

    async def close_pool(self) -> None:
        await self._inner.aclose()


def _skew(lifetime: float) -> float:
    lifetime = max(lifetime, 0.0)
    return max(min(MAX_SKEW, 0.1 * lifetime), min(MIN_LEFT, lifetime / 2))


def subject_exp(subject_token: str) -> float | None:
    """The ``exp`` of a JWT subject token, read without verification (the data plane
    verified the caller's token); ``None`` when it is not a JWT or has no numeric ``exp``."""
    try:
        claims = jwt.decode(subject_token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return None
    exp = claims.get("exp")
    return float(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else None


def _config_digest(config: Mapping[str, Any]) -> str:
    fields = ("token_url", "client_id", "scope", "audience", "auth_method", "requested_token_type")
    return hashlib.sha256(orjson.dumps([config.get(f) for f in fields])).hexdigest()[:32]


class TokenSource:
    """Fetches and caches OAuth access tokens for credentials (see the module docstring).

    One instance per control plane process; call :meth:`aclose` at shutdown. ``clock``
    (Unix seconds), ``timeout`` and ``refresh_interval`` are for tests.
    """

    def __init__(
        self,
        *,
        max_entries: int = MAX_ENTRIES,
        timeout: float = TIMEOUT,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
        clock: Callable[[], float] = time.time,
        refresh_interval: float = REFRESH_INTERVAL,
    ) -> None:
        self._max_entries = max_entries
        self._timeout = timeout
        self._clock = clock
        self._transport = BoundedTransport(max_response_bytes)
        self._cache: OrderedDict[_Key, _Entry] = OrderedDict()
        self._inflight: dict[_Key, asyncio.Task[Token]] = {}
        self._refresh_interval = refresh_interval
        self._forced: OrderedDict[_Key, float] = OrderedDict()
        """Key -> clock time of its last forced refresh."""
        self._counts = {"hits": 0, "fetches": 0, "errors": 0, "forced": 0}

    # ------------------------------------------------------------ public API
    async def client_credentials(
        self,
        credential_id: str,
        config: Mapping[str, Any],
        client_secret: str,
        *,
        version: str = "",
        refresh: bool = False,
    ) -> Token:
        """A token for an ``oauth_client_credentials`` credential.

        ``config`` is the credential's validated config (``token_url``, ``client_id``,
        ``scope``?, ``audience``?, ``auth_method``?). ``refresh``: see "Forced refresh" in
        the module docstring. Raises ``CredentialUnavailable``.
        """
        key: _Key = ("cc", credential_id, version, _config_digest(config), "")
        params: dict[str, str] = {}
        if config.get("scope"):
            params["scope"] = str(config["scope"])
        if config.get("audience"):
            params["audience"] = str(config["audience"])

        async def fetch() -> tuple[Token, float]:
            token = await self._request(credential_id, config, client_secret, "client_credentials", params)
            lifetime = token.expires_at - self._clock()
            return token, token.expires_at - _skew(lifetime)

        return await self._get(key, fetch, refresh=refresh)

    async def token_exchange(
        self,
        credential_id: str,
        config: Mapping[str, Any],
        client_secret: str,
        subject_token: str,
        *,
        version: str = "",
        refresh: bool = False,
    ) -> Token:
        """A token for an ``oauth_token_exchange`` credential, on behalf of ``subject_token``
        (the caller's verified JWT; only its SHA-256 is kept, as the cache key).

        ``config``: ``token_url``, ``client_id``, ``audience``?, ``scope``?,
        ``auth_method``?, ``requested_token_type``?. The answer's ``expires_at`` is no
        later than the subject token's ``exp``. ``refresh``: see "Forced refresh" in the
        module docstring. Raises ``CredentialUnavailable``.
        """
        subject_digest = hashlib.sha256(subject_token.encode()).hexdigest()
        key: _Key = ("tx", credential_id, version, _config_digest(config), subject_digest)
        params = {"subject_token": subject_token, "subject_token_type": SUBJECT_TOKEN_TYPE}
        for name in ("audience", "scope", "requested_token_type"):
            if config.get(name):
                params[name] = str(config[name])
        subject_expires = subject_exp(subject_token)

        async def fetch() -> tuple[Token, float]:
            token = await self._request(credential_id, config, client_secret, TOKEN_EXCHANGE_GRANT, params)
            if subject_expires is not None and subject_expires < token.expires_at:
                token = Token(token.access_token, subject_expires, token.token_type, token.issued_token_type)
            lifetime = token.expires_at - self._clock()
            return token, token.expires_at - _skew(lifetime)

        return await self._get(key, fetch, refresh=refresh)

    def invalidate(self, credential_id: str) -> int:
        """Forget every cached token of ``credential_id`` (revocation, rotation); a fetch
        already under way for it is not cached when it ends. Returns the entries dropped."""
        stale = [key for key in self._cache if key[1] == credential_id]
        for key in stale:
            del self._cache[key]
        for key in [key for key in self._inflight if key[1] == credential_id]:
            del self._inflight[key]
        return len(stale)

    def stats(self) -> dict[str, int]:
        """``{"entries", "inflight", "hits", "fetches", "errors", "forced"}`` (counts since start;
        ``forced``: refreshes that dropped a cached token)."""
        return {"entries": len(self._cache), "inflight": len(self._inflight), **self._counts}

    async def aclose(self) -> None:
        """Close the connection pool (pending fetches fail)."""
        await self._transport.close_pool()

    # ------------------------------------------------------------ cache and single flight
    async def _get(
        self, key: _Key, fetch: Callable[[], Awaitable[tuple[Token, float]]], *, refresh: bool = False
    ) -> Token:
        if refresh and key not in self._inflight:  # a fetch under way brings a new token anyway
            now = self._clock()
            last = self._forced.get(key)
            if last is None or now - last >= self._refresh_interval:
                self._forced[key] = now
                self._forced.move_to_end(key)
                while len(self._forced) > self._max_entries:
                    self._forced.popitem(last=False)
                if self._cache.pop(key, None) is not None:
                    self._counts["forced"] += 1
            else:
                log.info("credential %s: refresh asked again within %.0f s: cached token kept", key[1], now - last)
        entry = self._cache.get(key)
        if entry is not None:
            if self._clock() < entry.fresh_until:
                self._cache.move_to_end(key)
                self._counts["hits"] += 1
                return entry.token
            del self._cache[key]
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.create_task(self._run(key, fetch))
            task.add_done_callback(_consume)
            self._inflight[key] = task
        return await asyncio.shield(task)  # one waiter's cancellation leaves the others theirs

    async def _run(self, key: _Key, fetch: Callable[[], Awaitable[tuple[Token, float]]]) -> Token:
        me = asyncio.current_task()
        try:
            token, fresh_until = await fetch()
        except BaseException:
            if self._inflight.get(key) is me:
                del self._inflight[key]
            raise
        if self._inflight.get(key) is me:  # not invalidated meanwhile
            del self._inflight[key]
            if fresh_until > self._clock():
                self._cache[key] = _Entry(token, fresh_until)
                self._cache.move_to_end(key)
                while len(self._cache) > self._max_entries:
                    self._cache.popitem(last=False)
        return token

    # ------------------------------------------------------------ the token request
    async def _request(
        self,
        credential_id: str,
        config: Mapping[str, Any],
        client_secret: str,
        grant_type: str,
        params: Mapping[str, str],
    ) -> Token:
        token_url = str(config.get("token_url") or "")
        host = urlsplit(token_url).hostname or "?"
        where = f"credential {credential_id}: token endpoint {host}"
        auth_method = config.get("auth_method") or AUTH_METHODS[0]
        if auth_method not in AUTH_METHODS or not config.get("client_id"):
            raise self._fail(f"{where}: the credential's config is incomplete")
        self._counts["fetches"] += 1
        client = AsyncOAuth2Client(
            client_id=str(config["client_id"]),
            client_secret=client_secret,
            token_endpoint_auth_method=auth_method,
            transport=self._transport,
            timeout=self._timeout,
            follow_redirects=False,
            trust_env=False,
        )
        try:
            async with client, asyncio.timeout(self._timeout):
                answer = await client.fetch_token(token_url, grant_type=grant_type, **params)
        except OAuthError as exc:
            code = exc.error if isinstance(exc.error, str) and _ERROR_CODE.fullmatch(exc.error) else "invalid_error"
            raise self._fail(f"{where} refused: {code}", code) from None
        except TimeoutError:
            raise self._fail(f"{where} did not answer within {self._timeout:g} s") from None
        except ResponseTooLarge:
            raise self._fail(f"{where} answered more than {self._transport._limit} bytes") from None
        except httpx2.HTTPStatusError as exc:
            raise self._fail(f"{where} answered HTTP {exc.response.status_code}") from None
        except httpx2.HTTPError as exc:
            raise self._fail(f"{where} unreachable ({type(exc).__name__})") from None
        except ValueError:  # authlib: the answer is not a JSON object
            raise self._fail(f"{where} answered something that is not a token") from None
        token = self._parse(answer, where)
        log.debug("%s: token fetched (%s, expires in %.0f s)", where, grant_type, token.expires_at - self._clock())
        return token

    def _parse(self, answer: Mapping[str, Any], where: str) -> Token:
        access_token = answer.get("access_token")
        if (
            not isinstance(access_token, str)
            or len(access_token) > MAX_TOKEN_CHARS
            or not _VISIBLE.fullmatch(access_token)
        ):
            raise self._fail(f"{where} answered no usable access_token")
        token_type = answer.get("token_type") or "Bearer"
        if not isinstance(token_type, str) or len(token_type) > 64 or not _VISIBLE.fullmatch(token_type):
            raise self._fail(f"{where} answered a malformed token_type")
        expires_in = answer.get("expires_in")
        if isinstance(expires_in, str) and expires_in.isdigit():
            expires_in = int(expires_in)
        if not isinstance(expires_in, int | float) or isinstance(expires_in, bool) or expires_in <= 0:
            expires_in = DEFAULT_LIFETIME
        issued = answer.get("issued_token_type")
        issued_type = issued if isinstance(issued, str) and len(issued) <= 256 else None
        return Token(access_token, self._clock() + float(expires_in), token_type, issued_type)

    def _fail(self, message: str, oauth_error: str | None = None) -> CredentialUnavailable:
        self._counts["errors"] += 1
        log.warning("%s", message)
        return CredentialUnavailable(message, oauth_error=oauth_error)


def _consume(task: asyncio.Task[Token]) -> None:
    """Mark a shared fetch's exception retrieved (its waiters may all be gone)."""
    if not task.cancelled():
        task.exception()
