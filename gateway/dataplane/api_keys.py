"""API keys for machine agents on the data plane: verified against the projection, no round trip.

A key is ``gwk_<id>_<secret>``: ``id`` 16 lowercase hex digits (public: it names the key in
the admin API and the runtime audit), ``secret`` 43 base64url characters (256 random bits).
The control plane stores only an argon2id hash of the whole key (RFC 9106) and publishes,
per live key, ``{"id", "subject", "roles", "hash", "expires_at"}`` in the projection's routing
table (``api_keys``; :mod:`gateway.controlplane.api_keys`). A data plane verifies a presented
key with that table alone:

* a key verified before is found by the SHA-256 of the presented key (one dict lookup) and
  accepted while the *current* projection still lists its id with the same hash and it has
  not expired (the data plane's clock). Revocation therefore takes effect when the data plane
  activates the projection that no longer lists the key (normally well under a second after
  ``DELETE /v1/api-keys/{id}``; ``GET /v1/projection`` shows when every data plane has it),
  expiry at once;
* otherwise the argon2id hash is checked in a worker thread (about 50 ms at the control
  plane's parameters; at most :data:`MAX_CONCURRENT_HASHES` at once per data plane).

Failed attempts are rate-limited (:class:`FailureLimiter`): per client address (every failure)
and per existing key id (a wrong secret). An exhausted bucket refuses further attempts
unchecked with 429 ``too_many_failed_attempts`` and ``Retry-After``, so guessing and argon2
CPU cost are bounded. A key already in the verified cache is never throttled, so flooding a
key id with wrong secrets does not lock out its agent. Keys are never logged: only key ids.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

import anyio
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from gateway.errors import AuthenticationFailed, TooManyFailedAttempts
from gateway.policy.input import API_KEY_ISSUER, Subject

__all__ = [
    "KEY_PREFIX",
    "MAX_CONCURRENT_HASHES",
    "ApiKeyEntry",
    "ApiKeyVerifier",
    "FailureLimiter",
    "compile_api_keys",
    "is_api_key",
]

log = logging.getLogger("gateway.auth")

KEY_PREFIX = "gwk_"
"""Every API key starts with it (a JWT starts with ``eyJ``, so the two never mix)."""
_KEY = re.compile(r"gwk_([0-9a-f]{16})_([A-Za-z0-9_-]{43})")
MAX_CONCURRENT_HASHES = 2
"""argon2id verifications one data plane runs at once (each takes ~19 MiB and ~50 ms)."""
_CACHE_MAX = 4096
"""Verified keys remembered (by SHA-256 of the key), least recently used dropped first."""
_LIMITER_MAX = 65_536
"""Buckets (addresses and key ids) remembered at once; the oldest are dropped first."""


def is_api_key(credential: str) -> bool:
    """True when a bearer credential is shaped like a gateway API key (``gwk_`` prefix)."""
    return credential.startswith(KEY_PREFIX)


@dataclass(frozen=True, slots=True)
class ApiKeyEntry:
    """One live key as the projection carries it (never the key itself).

    Attributes:
        id: The key id (16 hex digits).
        subject: The subject the key authenticates as.
        roles: Its roles.
        hash: The argon2id PHC string of the whole key.
        expires_at: Epoch seconds after which the key is refused; None: no expiry.
    """

    id: str
    subject: str
    roles: tuple[str, ...]
    hash: str
    expires_at: float | None

    def subject_of(self) -> Subject:
        """The :class:`Subject` a caller presenting this key is (``credential_kind: api_key``)."""
        client = f"api_key:{self.id}"
        return Subject(
            sub=self.subject,
            issuer=API_KEY_ISSUER,
            roles=self.roles,
            client_id=client,
            agent=client,
            credential_kind="api_key",
            key_id=self.id,
        )


def compile_api_keys(records: Any) -> dict[str, ApiKeyEntry]:
    """The ``api_keys`` member of a routing table, by key id; malformed records are left out (logged).

    Args:
        records: ``[{"id", "subject", "roles", "hash", "expires_at"}]`` (``expires_at`` epoch
            seconds or null), or None (a table from before API keys).
    """
    out: dict[str, ApiKeyEntry] = {}
    for record in records or []:
        try:
            roles = record.get("roles") or []
            expires = record.get("expires_at")
            entry = ApiKeyEntry(
                id=str(record["id"]),
                subject=str(record["subject"]),
                roles=tuple(str(r) for r in roles),
                hash=str(record["hash"]),
                expires_at=None if expires is None else float(expires),
            )
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            log.error("an api key record of the projection is malformed (%s); it is not accepted", type(exc).__name__)
            continue
        out[entry.id] = entry
    return out


class FailureLimiter:
    """Token buckets of failed attempts, one per key (a client address or a key id).

    Each bucket holds up to ``burst`` attempts and regains one every ``interval`` seconds; a
    failure takes one. A key whose bucket holds less than one is blocked until it regains one.

    Args:
        burst: Failures allowed in a row (at least 1).
        interval: Seconds to regain one attempt.
        clock: Monotonic seconds (tests pass their own).
    """

    def __init__(self, burst: int, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._burst = float(burst)
        self._interval = interval
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def _level(self, key: str, now: float) -> float:
        hit = self._buckets.get(key)
        if hit is None:
            return self._burst
        tokens, at = hit
        level = min(self._burst, tokens + (now - at) / self._interval)
        if level >= self._burst:
            del self._buckets[key]  # full again: nothing to remember
        return level

    def retry_after(self, key: str) -> int:
        """Whole seconds until ``key`` may try again; 0 when it may now."""
        now = self._clock()
        level = self._level(key, now)
        return 0 if level >= 1 else max(1, math.ceil((1 - level) * self._interval))

    def fail(self, key: str) -> None:
        """Record one failed attempt of ``key``."""
        now = self._clock()
        self._buckets[key] = (self._level(key, now) - 1, now)
        self._buckets.move_to_end(key)
        while len(self._buckets) > _LIMITER_MAX:
            self._buckets.popitem(last=False)


class ApiKeyVerifier:
    """Verify presented API keys against the active projection's key table.

    Args:
        keys: Returns the active key table (``ActiveProjection.api_keys``), None before the
            first projection.
        limiter: Failed-attempt buckets (:class:`FailureLimiter`).
        clock: Wall-clock epoch seconds, for expiry (tests pass their own).
    """

    def __init__(
        self,
        keys: Callable[[], Mapping[str, ApiKeyEntry] | None],
        limiter: FailureLimiter,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._keys = keys
        self._limiter = limiter
        self._clock = clock
        self._hasher = PasswordHasher()
        self._hashing = anyio.CapacityLimiter(MAX_CONCURRENT_HASHES)
        self._cache: OrderedDict[bytes, tuple[ApiKeyEntry, Subject]] = OrderedDict()
        self.hash_checks = 0
        """argon2 verifications run so far (tests and operators: cache effectiveness)."""

    async def verify(self, presented: str, client: str) -> Subject:
        """The subject of the API key ``presented`` by the caller at address ``client``.

        Raises:
            TooManyFailedAttempts: ``client``, or the key id, failed too often lately (429,
                checked before anything costly; never for a key verified before).
            AuthenticationFailed: Malformed, unknown, revoked, expired or wrong key (401
                ``unauthenticated``), or no projection activated yet.
        """
        keys = self._keys()
        if keys is None:
            raise AuthenticationFailed("api keys unavailable: no projection activated yet")
        digest = hashlib.sha256(presented.encode()).digest()
        hit = self._cache.get(digest)
        now = self._clock()
        if hit is not None:
            cached, subject = hit
            if keys.get(cached.id) == cached and not _expired(cached, now):
                self._cache.move_to_end(digest)
                return subject
            del self._cache[digest]  # revoked (gone from the projection) or expired
        address = f"addr:{client}"
        self._check(address)
        match = _KEY.fullmatch(presented)
        entry = keys.get(match.group(1)) if match else None
        if entry is None:
            self._refuse(address, None, "unknown or malformed api key")
        if _expired(entry, now):
            self._refuse(address, None, f"api key {entry.id} expired")
        self._check(f"key:{entry.id}")
        if not await self._hash_matches(entry.hash, presented):
            self._refuse(address, f"key:{entry.id}", f"api key {entry.id}: wrong secret")
        subject = entry.subject_of()
        self._cache[digest] = (entry, subject)
        while len(self._cache) > _CACHE_MAX:
            self._cache.popitem(last=False)
        return subject

    def _check(self, bucket: str) -> None:
        wait = self._limiter.retry_after(bucket)
        if wait:
            log.info("api key attempt refused unchecked: too many failures (%s)", bucket)
            raise TooManyFailedAttempts("too many failed api key attempts", retry_after=wait)

    def _refuse(self, address: str, key_bucket: str | None, why: str) -> NoReturn:
        self._limiter.fail(address)
        if key_bucket is not None:
            self._limiter.fail(key_bucket)
        log.info("api key refused from %s: %s", address.removeprefix("addr:"), why)
        raise AuthenticationFailed(why)

    async def _hash_matches(self, hashed: str, presented: str) -> bool:
        def check() -> bool:
            try:
                return bool(self._hasher.verify(hashed, presented))
            except (VerificationError, InvalidHashError):
                return False

        async with self._hashing:
            self.hash_checks += 1
            return await anyio.to_thread.run_sync(check)


def _expired(entry: ApiKeyEntry, now: float) -> bool:
    return entry.expires_at is not None and now >= entry.expires_at
