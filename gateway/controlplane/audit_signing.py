"""The Ed25519 key that signs audit checkpoints (RFC 8032, via ``cryptography``).

The private key comes from ``GATEWAY_AUDIT_SIGNING_KEY_FILE`` (PKCS#8 PEM); without one the
control plane generates a development key once under ``<run_dir>/audit-signing`` (mode 0600).
A key's id is the first 16 hex digits of SHA-256 over its raw 32-byte public key. Verification
trusts the signing key and ``GATEWAY_AUDIT_VERIFICATION_KEYS`` (earlier keys, PEM public keys).
The key is held by the control plane's process only, never in the database, so whoever can
write the database cannot forge a checkpoint.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from gateway.config import AuditConfig
from gateway.errors import ConfigError

__all__ = ["DEV_KEY_DIR", "CheckpointKeys", "key_id", "load_checkpoint_keys"]

DEV_KEY_DIR = "audit-signing"
"""Directory under ``run_dir`` holding the generated development key."""
_DEV_KEY = "ed25519.pem"


def key_id(public: Ed25519PublicKey) -> str:
    """The id of a public key: 16 hex digits of SHA-256 over its raw bytes."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


@dataclass(frozen=True)
class CheckpointKeys:
    """The signing key and every trusted public key, by id."""

    signing: Ed25519PrivateKey
    signing_id: str
    trusted: dict[str, Ed25519PublicKey]

    def sign(self, body: bytes) -> bytes:
        """The 64-byte Ed25519 signature of ``body``."""
        return self.signing.sign(body)

    def verify(self, body: bytes, signature: bytes, kid: str) -> bool:
        """True when ``signature`` over ``body`` verifies with trusted key ``kid``."""
        public = self.trusted.get(kid)
        if public is None:
            return False
        try:
            public.verify(signature, body)
        except InvalidSignature:
            return False
        return True

    def public_pems(self) -> dict[str, str]:
        """Every trusted public key as SubjectPublicKeyInfo PEM, by id."""
        return {
            kid: key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
            for kid, key in self.trusted.items()
        }


def _read(path: str | Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the audit {what} {path}: {exc.strerror or exc}") from exc


def _private(pem: bytes, source: str) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{source} is not an unencrypted PEM private key") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{source} must be an Ed25519 key (checkpoints are signed with Ed25519)")
    return key


def _public(pem: bytes, source: str) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{source} is not a PEM public key") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"{source} must be an Ed25519 public key")
    return key


def _dev_key(run_dir: str) -> Path:
    """Create the development key once (atomically: the first writer wins); return its path."""
    directory = Path(run_dir) / DEV_KEY_DIR
    path = directory / _DEV_KEY
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not path.exists():
            pem = Ed25519PrivateKey.generate().private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
            fd, tmp = tempfile.mkstemp(dir=directory, prefix=".key-")
            try:
                os.write(fd, pem)
                os.fchmod(fd, 0o600)
            finally:
                os.close(fd)
            try:
                os.link(tmp, path)  # fails if another process won
            except FileExistsError:
                pass
            finally:
                os.unlink(tmp)
    except OSError as exc:
        raise ConfigError(f"cannot create the development audit signing key in {directory}: {exc}") from exc
    return path


def load_checkpoint_keys(audit: AuditConfig, run_dir: str) -> CheckpointKeys:
    """Load (or, without a configured file, create) the checkpoint keys.

    Raises:
        ConfigError: A key file is unreadable, not PEM, or not Ed25519.
    """
    path = Path(audit.signing_key_file) if audit.signing_key_file else _dev_key(run_dir)
    signing = _private(_read(path, "signing key"), f"GATEWAY_AUDIT_SIGNING_KEY_FILE {path}")
    trusted = {key_id(signing.public_key()): signing.public_key()}
    for item in audit.verification_keys:
        public = _public(_read(item, "verification key"), f"GATEWAY_AUDIT_VERIFICATION_KEYS {item}")
        trusted[key_id(public)] = public
    return CheckpointKeys(signing, key_id(signing.public_key()), trusted)
