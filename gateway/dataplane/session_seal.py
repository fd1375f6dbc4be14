"""Sealed session ids: a handshake-era session any data plane of the deployment can resume.

A 2025-03-26..2025-11-25 session's ``Mcp-Session-Id`` carries the state a data plane needs
to take the session over — its protocol revision, the client's declared ``capabilities``
and when it began — encrypted and authenticated with AES-256-GCM (NIST SP 800-38D, via
``cryptography``) under a key every data plane of the deployment shares
(:attr:`~gateway.config.DataPlaneConfig.session_key`; by default derived from the internal
token). The subject (``issuer`` + ``sub``), tenant and environment are the additional
authenticated data, never stored in the id: an id presented by another subject, or in
another environment, fails authentication exactly like a forged one.

Wire form (visible ASCII, MCP 2025-11-25 ``basic/transports`` "Session Management")::

    s1.<base64url(nonce[12] || ciphertext || tag[16])>

whose plaintext is the JSON object ``{"v": revision, "c": capabilities, "t": began}``
(``began`` in Unix seconds). 190-260 characters for the capabilities SDK clients declare;
capabilities over :data:`MAX_CAPABILITIES_BYTES` keep their standard members only.

Why not PostgreSQL (``docs/operations.md`` "Sessions across data planes"): opening a sealed
id costs about 20 µs of CPU on the data plane that first sees the session (sealing one, at
``initialize``, about 8 µs), and nothing on later requests; a session table would add a control-plane round trip to every ``initialize``
and to every first request on another data plane, and would make ``initialize`` fail while
the control plane is down. What a sealed id cannot carry — a ``DELETE`` and the
``logging/setLevel`` level, which change during the session — goes through the session
events feed (:mod:`gateway.dataplane.session_events`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import time
from dataclasses import dataclass
from typing import Any

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = ["MAX_CAPABILITIES_BYTES", "PREFIX", "SealedSession", "SessionSeal", "session_ref"]

PREFIX = "s1."
"""Marks a sealed id (version 1 of the format); other ids are this data plane's own."""

MAX_CAPABILITIES_BYTES = 2048
"""Largest JSON of declared capabilities sealed as is; beyond it only the standard members
(:data:`_STANDARD`) are kept (the id goes into every request's headers)."""

_STANDARD = ("roots", "sampling", "elicitation", "tasks")
_NONCE = 12
_MAX_ID = 8192
"""Longest id even looked at (characters): anything longer is unknown without decoding it."""


def session_ref(session_id: str) -> str:
    """The session's public reference: ``"sr-"`` + the first 24 hex digits of SHA-256(id).

    What the audit trail, policy input (``input.session.id``) and the session events feed
    carry: it names a session without being usable as its id.
    """
    return "sr-" + hashlib.sha256(session_id.encode()).hexdigest()[:24]


@dataclass(frozen=True, slots=True)
class SealedSession:
    """What an opened id says: ``protocol_version``, ``capabilities``, ``began`` (Unix s)."""

    protocol_version: str
    capabilities: dict[str, Any]
    began: int


class SessionSeal:
    """Seals and opens session ids for one deployment.

    Args:
        key: 32 bytes (AES-256), the same on every data plane.
        scope: Tenant and environment; bound into every id.
        max_age: Seconds after ``began`` an id stops opening (its session is over).
        versions: The protocol revisions an id may name (others do not open).

    Raises:
        ValueError: ``key`` is not 32 bytes.
    """

    def __init__(self, key: bytes, scope: tuple[str, str], *, max_age: float, versions: tuple[str, ...]) -> None:
        if len(key) != 32:
            raise ValueError("a session key is 32 bytes")
        self._aead = AESGCM(key)
        self._scope = "\x00".join(scope).encode()
        self._max_age = max_age
        self._versions = frozenset(versions)

    def _aad(self, owner: tuple[str, str]) -> bytes:
        return b"mcp-session-v1\x00" + self._scope + b"\x00" + "\x00".join(owner).encode()

    @property
    def max_age(self) -> float:
        """Seconds after its start an id stops opening."""
        return self._max_age

    def seal(
        self, owner: tuple[str, str], protocol_version: str, capabilities: dict[str, Any], began: int | None = None
    ) -> str:
        """A new id for ``owner``'s session begun at ``began`` (Unix seconds; default now),
        with a fresh random nonce: never the same id twice."""
        caps = capabilities
        if len(orjson.dumps(caps)) > MAX_CAPABILITIES_BYTES:
            caps = {k: v for k, v in capabilities.items() if k in _STANDARD}
            if len(orjson.dumps(caps)) > MAX_CAPABILITIES_BYTES:
                caps = {k: {} for k in caps}
        plain = orjson.dumps({"v": protocol_version, "c": caps, "t": int(time.time()) if began is None else began})
        nonce = os.urandom(_NONCE)
        sealed = nonce + self._aead.encrypt(nonce, plain, self._aad(owner))
        return PREFIX + base64.urlsafe_b64encode(sealed).rstrip(b"=").decode()

    def open(self, session_id: str, owner: tuple[str, str]) -> SealedSession | None:
        """The state in ``session_id`` when it was sealed for ``owner`` here and is not too
        old; None otherwise (malformed, forged, another subject's or environment's, expired).
        """
        if not session_id.startswith(PREFIX) or len(session_id) > _MAX_ID:
            return None
        body = session_id[len(PREFIX) :]
        try:
            raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        except (binascii.Error, ValueError):
            return None
        if len(raw) < _NONCE + 16 or base64.urlsafe_b64encode(raw).rstrip(b"=").decode() != body:
            return None  # only the canonical spelling: one session, one id, one ref
        try:
            plain = self._aead.decrypt(raw[:_NONCE], raw[_NONCE:], self._aad(owner))
        except InvalidTag:
            return None
        doc = orjson.loads(plain)
        began, version, caps = doc.get("t"), doc.get("v"), doc.get("c")
        if not isinstance(began, int) or version not in self._versions or not isinstance(caps, dict):
            return None
        if time.time() - began > self._max_age:
            return None
        return SealedSession(version, caps, began)
