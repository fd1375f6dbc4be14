"""Key-encryption keys (KEKs): the current one that wraps new data keys, and previous ones
that still unwrap old data keys until they are re-wrapped.

A KEK is 32 random bytes given as base64 (standard or URL-safe alphabet, surrounding
whitespace ignored), in a file (``GATEWAY_CREDENTIALS_KEK_FILE``) or in the environment
(``GATEWAY_CREDENTIALS_KEK``); previous KEKs come from files only
(``GATEWAY_CREDENTIALS_KEK_PREVIOUS_FILES``). A key file must be a regular file that
neither group nor others can read or write (``chmod 600`` or ``400``); others are refused
at start-up. Errors name the variable and the file, never the content.

A KEK's id is the first 16 hex digits of SHA-256(``"gateway.kek-id.v1" || 0x00 || key``):
stored beside each wrapped data key to find the key that unwraps it. Since a KEK has
256 bits of entropy, 64 bits of a hash of it reveal nothing usable.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from gateway.config import CredentialsConfig
from gateway.errors import ConfigError, CredentialDecryptError

__all__ = ["KEK_BYTES", "Kek", "Keyring", "load_keyring", "parse_kek"]

KEK_BYTES = 32
"""AES-256: every KEK is exactly 32 bytes."""


@dataclass(frozen=True, repr=False)
class Kek:
    """One key-encryption key: ``key`` (32 bytes) and its public ``id`` (16 hex digits)."""

    key: bytes

    def __post_init__(self) -> None:
        if len(self.key) != KEK_BYTES:
            raise ValueError(f"a KEK is exactly {KEK_BYTES} bytes")

    @property
    def id(self) -> str:
        """First 16 hex digits of SHA-256(``b"gateway.kek-id.v1\\x00" + key``)."""
        return hashlib.sha256(b"gateway.kek-id.v1\x00" + self.key).hexdigest()[:16]

    def __repr__(self) -> str:
        return f"Kek(id={self.id!r})"


class Keyring:
    """The current KEK (wraps every new or re-wrapped data key) and the previous ones (unwrap only).

    Example::

        ring = Keyring(Kek(new_key), previous=[Kek(old_key)])
        ring.current.id          # '3f0c...' (16 hex digits)
        ring.get("a1b2...")      # the Kek with that id

    Raises:
        CredentialDecryptError: ``get`` of an id no KEK here has.
    """

    def __init__(self, current: Kek, previous: Iterable[Kek] = ()) -> None:
        self.current = current
        self._by_id = {k.id: k for k in previous}
        self._by_id[current.id] = current  # a previous file repeating the current key is harmless

    def get(self, kek_id: str) -> Kek:
        """Return the KEK whose id is ``kek_id``.

        Raises:
            CredentialDecryptError: No KEK in this keyring has that id.
        """
        try:
            return self._by_id[kek_id]
        except KeyError:
            raise CredentialDecryptError(f"no configured KEK has id {kek_id!r}") from None

    def __contains__(self, kek_id: object) -> bool:
        return kek_id in self._by_id

    def __iter__(self) -> Iterator[Kek]:
        return iter(self._by_id.values())

    @property
    def ids(self) -> list[str]:
        """Every KEK id held, the current one first."""
        return [self.current.id, *sorted(i for i in self._by_id if i != self.current.id)]

    def __repr__(self) -> str:
        return f"Keyring(current={self.current.id!r}, ids={self.ids!r})"


def parse_kek(text: str | bytes, source: str) -> Kek:
    """Decode the base64 of a 32-byte KEK (standard or URL-safe alphabet, padded).

    Args:
        text: The base64 text; surrounding whitespace is ignored.
        source: What to name in an error (a variable and/or a file path); never the content.

    Raises:
        ConfigError: Not base64, or not exactly 32 bytes once decoded.
    """
    raw = text.encode("ascii", "replace") if isinstance(text, str) else text
    raw = raw.strip().replace(b"-", b"+").replace(b"_", b"/")
    try:
        key = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != KEK_BYTES:
        raise ConfigError(
            f"{source}: must hold the base64 of exactly {KEK_BYTES} random bytes (e.g. `openssl rand -base64 32`)"
        )
    return Kek(key)


def _read_key_file(path: str, variable: str) -> Kek:
    source = f"{variable} ({path})"
    try:
        info = os.stat(path)
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read the key file ({exc.strerror})") from None
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(f"{source}: not a regular file")
    if info.st_mode & 0o077:
        raise ConfigError(
            f"{source}: group or others may access the key file (mode {stat.S_IMODE(info.st_mode):04o}); "
            "chmod 600 (or 400) it"
        )
    try:
        content = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read the key file ({exc.strerror})") from None
    return parse_kek(content, source)


def load_keyring(config: CredentialsConfig) -> Keyring | None:
    """Build the keyring ``config`` describes, reading its key files; None when no KEK is configured.

    Raises:
        ConfigError: A key file is missing, unreadable, not a regular file, accessible to group
            or others, or any key is not the base64 of 32 bytes (the message names the variable
            and the file, never key material).
    """
    if config.kek_file:
        current = _read_key_file(config.kek_file, "GATEWAY_CREDENTIALS_KEK_FILE")
    elif config.kek:
        current = parse_kek(config.kek.reveal(), "GATEWAY_CREDENTIALS_KEK")
    elif config.kek_previous_files:
        raise ConfigError("GATEWAY_CREDENTIALS_KEK_PREVIOUS_FILES needs GATEWAY_CREDENTIALS_KEK(_FILE) too")
    else:
        return None
    previous = [_read_key_file(p, "GATEWAY_CREDENTIALS_KEK_PREVIOUS_FILES") for p in config.kek_previous_files]
    return Keyring(current, previous)
