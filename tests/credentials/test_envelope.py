"""AES-256-GCM envelope encryption: round trip, tampering, associated data, KEK rotation, fingerprints."""

from __future__ import annotations

import dataclasses
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.credentials import (
    CredentialDecryptError,
    Kek,
    Keyring,
    SecretFields,
    fingerprint,
    open_sealed,
    rewrap,
    seal,
)
from gateway.credentials.envelope import NONCE_BYTES, WRAPPED_BYTES
from tests.credentials.helpers import CANARY, encodings

ID = "0b8f6f0e-1d4c-4d4e-9a3e-7f3c2b9e0001"
OTHER_ID = "0b8f6f0e-1d4c-4d4e-9a3e-7f3c2b9e0002"
PLAINTEXT = SecretFields({"token": CANARY}).to_bytes()


def _ring(*previous: Kek) -> Keyring:
    return Keyring(Kek(os.urandom(32)), previous)


def test_a_sealed_secret_opens_to_its_plaintext_and_holds_no_trace_of_it() -> None:
    ring = _ring()
    sealed = seal(ring, PLAINTEXT, credential_id=ID, kind="bearer")
    assert open_sealed(ring, sealed, credential_id=ID, kind="bearer") == PLAINTEXT
    assert sealed.kek_id == ring.current.id
    assert len(sealed.nonce) == NONCE_BYTES and len(sealed.wrapped_dek) == WRAPPED_BYTES
    assert len(sealed.ciphertext) == len(PLAINTEXT) + 16
    stored = sealed.kek_id.encode() + sealed.wrapped_dek + sealed.nonce + sealed.ciphertext
    for form in encodings(CANARY) + encodings(ring.current.key):
        assert form not in stored
    assert CANARY not in repr(sealed)


def test_every_seal_uses_a_fresh_data_key_and_nonce() -> None:
    ring = _ring()
    a = seal(ring, PLAINTEXT, credential_id=ID, kind="bearer")
    b = seal(ring, PLAINTEXT, credential_id=ID, kind="bearer")
    assert a.nonce != b.nonce and a.wrapped_dek != b.wrapped_dek and a.ciphertext != b.ciphertext


@pytest.mark.parametrize("field", ["wrapped_dek", "nonce", "ciphertext"])
@pytest.mark.parametrize("position", [0, -1])
def test_a_flipped_bit_anywhere_fails_to_open(field: str, position: int) -> None:
    ring = _ring()
    sealed = seal(ring, PLAINTEXT, credential_id=ID, kind="bearer")
    value = bytearray(getattr(sealed, field))
    value[position] ^= 0x01
    tampered = dataclasses.replace(sealed, **{field: bytes(value)})
    with pytest.raises(CredentialDecryptError) as caught:
        open_sealed(ring, tampered, credential_id=ID, kind="bearer")
    assert CANARY not in str(caught.value)


@pytest.mark.parametrize(
    ("credential_id", "kind"),
    [pytest.param(OTHER_ID, "bearer", id="other-row"), pytest.param(ID, "headers", id="other-kind")],
)
def test_the_associated_data_binds_the_secret_to_its_row_and_kind(credential_id: str, kind: str) -> None:
    ring = _ring()
    sealed = seal(ring, PLAINTEXT, credential_id=ID, kind="bearer")
    with pytest.raises(CredentialDecryptError):
        open_sealed(ring, sealed, credential_id=credential_id, kind=kind)


def test_a_wrapped_data_key_moved_to_another_row_fails() -> None:
    ring = _ring()
    mine = seal(ring, PLAINTEXT, credential_id=ID, kind="bearer")
    theirs = seal(ring, b'{"token":"other"}', credential_id=OTHER_ID, kind="bearer")
    swapped = dataclasses.replace(theirs, wrapped_dek=mine.wrapped_dek)
    with pytest.raises(CredentialDecryptError, match="data key"):
        open_sealed(ring, swapped, credential_id=OTHER_ID, kind="bearer")


def test_a_secret_sealed_under_a_previous_kek_opens_and_rewraps_to_the_current_one() -> None:
    old = Kek(os.urandom(32))
    sealed = seal(Keyring(old), PLAINTEXT, credential_id=ID, kind="bearer")
    new = Kek(os.urandom(32))
    rotating = Keyring(new, [old])
    assert open_sealed(rotating, sealed, credential_id=ID, kind="bearer") == PLAINTEXT

    moved = rewrap(rotating, sealed, credential_id=ID)

    assert moved.kek_id == new.id != old.id
    assert (moved.nonce, moved.ciphertext) == (sealed.nonce, sealed.ciphertext)
    assert open_sealed(Keyring(new), moved, credential_id=ID, kind="bearer") == PLAINTEXT
    with pytest.raises(CredentialDecryptError, match="no configured KEK"):
        open_sealed(Keyring(new), sealed, credential_id=ID, kind="bearer")
    with pytest.raises(CredentialDecryptError):  # the retired KEK cannot open the re-wrapped row
        open_sealed(Keyring(old), moved, credential_id=ID, kind="bearer")


def test_a_wrapped_key_relabelled_with_another_kek_id_fails() -> None:
    old, new = Kek(os.urandom(32)), Kek(os.urandom(32))
    sealed = seal(Keyring(old), PLAINTEXT, credential_id=ID, kind="bearer")
    relabelled = dataclasses.replace(sealed, kek_id=new.id)
    with pytest.raises(CredentialDecryptError):
        open_sealed(Keyring(new, [old]), relabelled, credential_id=ID, kind="bearer")


@given(plaintext=st.binary(max_size=2048), kind=st.sampled_from(["bearer", "headers", "query"]))
def test_round_trip_holds_for_any_plaintext(plaintext: bytes, kind: str) -> None:
    ring = Keyring(Kek(b"k" * 32))
    assert open_sealed(ring, seal(ring, plaintext, credential_id=ID, kind=kind), credential_id=ID, kind=kind) == (
        plaintext
    )


def test_the_fingerprint_is_keyed_stable_and_reveals_nothing() -> None:
    ring = _ring()
    fp = fingerprint(ring, "bearer", {"token": CANARY})
    assert len(fp) == 16 and int(fp, 16) >= 0
    assert fp == fingerprint(ring, "bearer", {"token": CANARY})
    assert fp != fingerprint(ring, "bearer", {"token": CANARY + "x"})
    assert fp != fingerprint(ring, "headers", {"token": CANARY})
    assert fp != fingerprint(_ring(), "bearer", {"token": CANARY})  # keyed: unknown without the KEK
    assert CANARY not in fp


def test_no_repr_shows_key_or_secret_material() -> None:
    kek = Kek(os.urandom(32))
    ring = Keyring(kek)
    fields = SecretFields({"token": CANARY})
    text = " ".join([repr(kek), repr(ring), repr(fields), str(fields)])
    for form in encodings(CANARY) + encodings(kek.key):
        assert form not in text.encode()
    assert kek.id in repr(kek)
    assert fields.reveal() == {"token": CANARY}
    assert SecretFields.from_bytes(fields.to_bytes()).reveal() == {"token": CANARY}
