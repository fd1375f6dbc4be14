"""Upstream credentials: write-only secrets, encrypted at rest with AES-256-GCM envelope encryption.

Pure (no I/O but reading the KEK files at start-up), so both planes can use it:

* :mod:`~gateway.credentials.keyring`: the key-encryption keys (current + previous) and their loading;
* :mod:`~gateway.credentials.envelope`: seal / open / re-wrap one secret, and its fingerprint;
* :mod:`~gateway.credentials.kinds`: the credential kinds, their secret and non-secret fields;
* :mod:`~gateway.credentials.bindings`: which credential applies to a call (most specific wins);

Storage: :mod:`gateway.db.credentials`. Admin API: :mod:`gateway.controlplane.credentials`.
See docs/credentials.md.
"""

from gateway.credentials.bindings import Binding, Subject, select_binding
from gateway.credentials.envelope import Sealed, fingerprint, open_sealed, rewrap, seal
from gateway.credentials.keyring import Kek, Keyring, load_keyring, parse_kek
from gateway.credentials.kinds import KINDS, SecretFields, ValidatedCredential, validate_credential, validate_rotation
from gateway.errors import CredentialDecryptError, CredentialsDisabled

__all__ = [
    "KINDS",
    "Binding",
    "CredentialDecryptError",
    "CredentialsDisabled",
    "Kek",
    "Keyring",
    "Sealed",
    "SecretFields",
    "Subject",
    "ValidatedCredential",
    "fingerprint",
    "load_keyring",
    "open_sealed",
    "parse_kek",
    "rewrap",
    "seal",
    "select_binding",
    "validate_credential",
    "validate_rotation",
]
