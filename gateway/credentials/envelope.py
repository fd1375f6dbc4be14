"""AES-256-GCM envelope encryption of one credential's secret fields.

The exact scheme (version 1)::

    dek        = 32 random bytes                      (fresh per secret version)
    nonce      = 12 random bytes
    ciphertext = AES-256-GCM(dek).encrypt(nonce, plaintext, aad_secret)      (ciphertext || 16-byte tag)
    wrap_nonce = 12 random bytes
    wrapped    = wrap_nonce || AES-256-GCM(kek).encrypt(wrap_nonce, dek, aad_dek)   (12 + 32 + 16 = 60 bytes)
    aad_secret = JSON ["gateway.credential.v1", credential_id, kind]
    aad_dek    = JSON ["gateway.credential.dek.v1", credential_id, kek_id]

Stored per credential: ``kek_id``, ``wrapped`` (``wrapped_dek``), ``nonce`` and
``ciphertext``; the data key itself never leaves memory. The associated data binds the
secret to its row (credential id) and kind, and the wrapped data key to its row and KEK:
a ciphertext or wrapped key copied onto another row, or a kind changed in the database,
fails authentication instead of decrypting.

Why AES-GCM and not AES key wrap (RFC 3394/5649) for the data key: the same primitive
(``cryptography``'s ``AESGCM``) serves both layers, and AES-GCM takes associated data while
RFC 3394/5649 do not, so only GCM ties a wrapped key to its credential id. The price is a
random 96-bit nonce per wrap: NIST SP 800-38D allows 2^32 encryptions under one key with
random nonces, far more than credentials x rotations x re-wraps will ever reach before the
KEK itself is rotated. Each data key encrypts exactly one plaintext, so its nonce can never
repeat under it.

Re-wrapping (KEK rotation) unwraps the data key with the KEK named by ``kek_id`` and wraps
it again under the current KEK; ``nonce`` and ``ciphertext`` stay byte-for-byte the same.

Fingerprint: HMAC-SHA-256 over JSON ``[kind, secret fields]`` (keys sorted) under a key
derived from the current KEK with HKDF-SHA-256 (info ``gateway.credential.fingerprint.v1``),
first 16 hex digits. Without the KEK it cannot be computed, so it cannot be used to test
guesses of a low-entropy secret; with the same KEK, equal secrets of the same kind have the
same fingerprint, and a new secret (rotation) almost surely another one.

Source: NIST SP 800-38D (GCM), RFC 5869 (HKDF), RFC 2104 (HMAC).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from gateway.credentials.keyring import Kek, Keyring
from gateway.errors import CredentialDecryptError

__all__ = ["DEK_BYTES", "NONCE_BYTES", "Sealed", "fingerprint", "open_sealed", "rewrap", "seal"]

DEK_BYTES = 32
"""AES-256 data key."""
NONCE_BYTES = 12
"""96-bit GCM nonce (NIST SP 800-38D's recommended length)."""
WRAPPED_BYTES = NONCE_BYTES + DEK_BYTES + 16
"""A wrapped data key: wrap nonce, encrypted key, GCM tag."""
_FINGERPRINT_INFO = b"gateway.credential.fingerprint.v1"


@dataclass(frozen=True, repr=False)
class Sealed:
    """One sealed secret as stored: ``kek_id`` (16 hex), ``wrapped_dek`` (60 bytes),
    ``nonce`` (12 bytes) and ``ciphertext`` (plaintext length + 16 bytes)."""

    kek_id: str
    wrapped_dek: bytes
    nonce: bytes
    ciphertext: bytes

    def __repr__(self) -> str:
        return f"Sealed(kek_id={self.kek_id!r}, ciphertext=<{len(self.ciphertext)} bytes>)"


def _aad_secret(credential_id: str, kind: str) -> bytes:
    return orjson.dumps(["gateway.credential.v1", credential_id, kind])


def _aad_dek(credential_id: str, kek_id: str) -> bytes:
    return orjson.dumps(["gateway.credential.dek.v1", credential_id, kek_id])


def _wrap(kek: Kek, dek: bytes, credential_id: str) -> bytes:
    wrap_nonce = os.urandom(NONCE_BYTES)
    return wrap_nonce + AESGCM(kek.key).encrypt(wrap_nonce, dek, _aad_dek(credential_id, kek.id))


def _unwrap(keyring: Keyring, sealed: Sealed, credential_id: str) -> bytes:
    kek = keyring.get(sealed.kek_id)
    wrapped = sealed.wrapped_dek
    if len(wrapped) != WRAPPED_BYTES:
        raise CredentialDecryptError(f"credential {credential_id}: the wrapped data key has the wrong length")
    try:
        return AESGCM(kek.key).decrypt(wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:], _aad_dek(credential_id, kek.id))
    except InvalidTag:
        raise CredentialDecryptError(
            f"credential {credential_id}: the data key does not authenticate under KEK {kek.id}"
        ) from None


def seal(keyring: Keyring, plaintext: bytes, *, credential_id: str, kind: str) -> Sealed:
    """Encrypt ``plaintext`` under a fresh data key wrapped by the keyring's current KEK.

    Args:
        credential_id: The row's id (canonical text), bound as associated data.
        kind: The credential kind, bound as associated data.
    """
    dek = AESGCM.generate_key(bit_length=8 * DEK_BYTES)
    nonce = os.urandom(NONCE_BYTES)
    ciphertext = AESGCM(dek).encrypt(nonce, plaintext, _aad_secret(credential_id, kind))
    return Sealed(keyring.current.id, _wrap(keyring.current, dek, credential_id), nonce, ciphertext)


def open_sealed(keyring: Keyring, sealed: Sealed, *, credential_id: str, kind: str) -> bytes:
    """Decrypt a sealed secret; the inverse of :func:`seal`.

    Raises:
        CredentialDecryptError: The KEK ``sealed.kek_id`` is not in ``keyring``, or any stored
            part or the associated data (``credential_id``, ``kind``) differs from sealing time.
    """
    dek = _unwrap(keyring, sealed, credential_id)
    try:
        return AESGCM(dek).decrypt(sealed.nonce, sealed.ciphertext, _aad_secret(credential_id, kind))
    except (InvalidTag, ValueError):  # ValueError: a nonce of the wrong length
        raise CredentialDecryptError(
            f"credential {credential_id}: the secret does not authenticate (tampered, or another row's)"
        ) from None


def rewrap(keyring: Keyring, sealed: Sealed, *, credential_id: str) -> Sealed:
    """Return ``sealed`` with its data key re-wrapped under the current KEK (nonce and ciphertext unchanged).

    Raises:
        CredentialDecryptError: The data key cannot be unwrapped (its KEK is not in
            ``keyring``, or it was altered).
    """
    dek = _unwrap(keyring, sealed, credential_id)
    current = keyring.current
    return Sealed(current.id, _wrap(current, dek, credential_id), sealed.nonce, sealed.ciphertext)


def fingerprint(keyring: Keyring, kind: str, secret: dict[str, object]) -> str:
    """Return 16 hex digits of HMAC-SHA-256(HKDF(current KEK), JSON [kind, secret]) (see the module doc)."""
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_FINGERPRINT_INFO).derive(keyring.current.key)
    message = orjson.dumps([kind, secret], option=orjson.OPT_SORT_KEYS)
    return hmac.new(key, message, hashlib.sha256).hexdigest()[:16]
