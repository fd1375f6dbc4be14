"""API-key verification on the data plane, in process: real keys and real argon2id hashes (the
control plane's generator and hasher), a real key table compiled from a routing table, the
real failure limiter; clocks are the tests' own so expiry and refill need no sleeping."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import anyio
import pytest

from gateway.controlplane.api_keys import _HASHER, new_key
from gateway.dataplane.api_keys import ApiKeyEntry, ApiKeyVerifier, FailureLimiter, compile_api_keys
from gateway.dataplane.projection import compile_projection
from gateway.errors import AuthenticationFailed, TooManyFailedAttempts

pytestmark = pytest.mark.anyio

NOW = 1_800_000_000.0


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def record(key_id: str, key: str, *, subject: str = "ci-bot", expires_at: float | None = NOW + 3600) -> dict[str, Any]:
    return {
        "id": key_id,
        "subject": subject,
        "roles": ["operator"],
        "hash": _HASHER.hash(key),
        "expires_at": expires_at,
    }


class Table:
    """The active projection's key table, swapped whole as a new projection would."""

    def __init__(self, *records: dict[str, Any]) -> None:
        self.keys: Mapping[str, ApiKeyEntry] | None = compile_api_keys(list(records))

    def __call__(self) -> Mapping[str, ApiKeyEntry] | None:
        return self.keys


def verifier(table: Table, *, burst: int = 3, interval: float = 10.0, now: Clock | None = None) -> ApiKeyVerifier:
    clock = now or Clock(NOW)
    return ApiKeyVerifier(table, FailureLimiter(burst, interval, clock=clock), clock=clock)


@pytest.fixture(scope="module")
def key() -> tuple[str, str]:
    return new_key()


def wrong_secret(key: str) -> str:
    return key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")


async def test_a_key_authenticates_as_its_subject_and_roles(key: tuple[str, str]) -> None:
    key_id, secret = key
    v = verifier(Table(record(key_id, secret)))
    subject = await v.verify(secret, "10.0.0.1")
    assert subject.sub == "ci-bot" and subject.roles == ("operator",)
    assert subject.credential_kind == "api_key" and subject.key_id == key_id
    assert subject.client_id == f"api_key:{key_id}" and subject.token == ""
    assert subject.as_input()["claims"] == {}


async def test_a_verified_key_is_served_from_the_cache(key: tuple[str, str]) -> None:
    key_id, secret = key
    v = verifier(Table(record(key_id, secret)))
    for _ in range(5):
        await v.verify(secret, "10.0.0.1")
    assert v.hash_checks == 1


async def test_revocation_takes_effect_with_the_projection_that_drops_the_key(key: tuple[str, str]) -> None:
    key_id, secret = key
    table = Table(record(key_id, secret))
    v = verifier(table)
    await v.verify(secret, "10.0.0.1")
    table.keys = compile_api_keys([])  # the next projection no longer lists it
    with pytest.raises(AuthenticationFailed):
        await v.verify(secret, "10.0.0.1")


async def test_a_reissued_record_under_the_same_id_does_not_reuse_the_cache(key: tuple[str, str]) -> None:
    key_id, secret = key
    table = Table(record(key_id, secret))
    v = verifier(table)
    await v.verify(secret, "10.0.0.1")
    _, other = new_key()
    table.keys = compile_api_keys([record(key_id, other)])  # same id, another hash
    with pytest.raises(AuthenticationFailed):
        await v.verify(secret, "10.0.0.1")


async def test_expiry_is_checked_with_the_data_planes_clock_even_when_cached(key: tuple[str, str]) -> None:
    key_id, secret = key
    clock = Clock(NOW)
    v = verifier(Table(record(key_id, secret, expires_at=NOW + 60)), now=clock)
    await v.verify(secret, "10.0.0.1")
    clock.now = NOW + 60
    with pytest.raises(AuthenticationFailed, match="expired"):
        await v.verify(secret, "10.0.0.1")


async def test_a_wrong_secret_is_refused_and_failures_are_throttled_per_address(key: tuple[str, str]) -> None:
    key_id, secret = key
    clock = Clock(NOW)
    v = verifier(Table(record(key_id, secret)), burst=3, interval=10.0, now=clock)
    bogus = "gwk_0123456789abcdef_" + "x" * 43  # unknown id: refused without hashing
    for presented in (wrong_secret(secret), bogus, "gwk_short"):
        with pytest.raises(AuthenticationFailed) as info:
            await v.verify(presented, "10.0.0.9")
        assert not isinstance(info.value, TooManyFailedAttempts)
    with pytest.raises(TooManyFailedAttempts) as limited:
        await v.verify(secret, "10.0.0.9")  # even the right key: the address is throttled, nothing is checked
    assert limited.value.retry_after == 10 and limited.value.status_code == 429
    assert v.hash_checks == 1  # only the wrong secret of a real key cost a hash
    await v.verify(secret, "10.0.0.10")  # another address is not affected
    clock.now += 10  # one attempt regained
    await v.verify(secret, "10.0.0.9")


async def test_failures_against_one_key_id_are_throttled_across_addresses(key: tuple[str, str]) -> None:
    key_id, secret = key
    other_id, other = new_key()
    v = verifier(Table(record(key_id, secret), record(other_id, other)), burst=3)
    for n in range(3):
        with pytest.raises(AuthenticationFailed):
            await v.verify(wrong_secret(secret), f"10.1.0.{n}")
    with pytest.raises(TooManyFailedAttempts):
        await v.verify(wrong_secret(secret), "10.1.0.99")
    assert v.hash_checks == 3  # the throttled attempt never reached argon2
    await v.verify(other, "10.1.0.99")  # other keys are not affected


async def test_a_cached_key_is_never_throttled(key: tuple[str, str]) -> None:
    key_id, secret = key
    v = verifier(Table(record(key_id, secret)), burst=2)
    await v.verify(secret, "10.2.0.1")
    for _ in range(4):  # an attacker floods the key id and the agent's own address
        with pytest.raises(AuthenticationFailed):
            await v.verify(wrong_secret(secret), "10.2.0.1")
    assert (await v.verify(secret, "10.2.0.1")).key_id == key_id


async def test_no_projection_yet_refuses_without_counting(key: tuple[str, str]) -> None:
    key_id, secret = key
    table = Table(record(key_id, secret))
    table.keys = None
    v = verifier(table, burst=1)
    for _ in range(3):
        with pytest.raises(AuthenticationFailed, match="no projection"):
            await v.verify(secret, "10.3.0.1")
    table.keys = compile_api_keys([record(key_id, secret)])
    await v.verify(secret, "10.3.0.1")


async def test_concurrent_hash_checks_are_bounded(key: tuple[str, str]) -> None:
    key_id, secret = key
    v = verifier(Table(record(key_id, secret)), burst=100)
    async with anyio.create_task_group() as tg:
        for n in range(6):
            tg.start_soon(_refused, v, wrong_secret(secret), f"10.4.0.{n}")
    assert v.hash_checks == 6


async def _refused(v: ApiKeyVerifier, presented: str, client: str) -> None:
    with pytest.raises(AuthenticationFailed):
        await v.verify(presented, client)


def test_the_limiter_refills_one_attempt_per_interval() -> None:
    clock = Clock(0.0)
    limiter = FailureLimiter(2, 5.0, clock=clock)
    assert limiter.retry_after("a") == 0
    limiter.fail("a")
    limiter.fail("a")
    assert limiter.retry_after("a") == 5
    clock.now = 2.5
    assert limiter.retry_after("a") == 3  # half an attempt regained: 2.5 s more, rounded up
    clock.now = 5.0
    assert limiter.retry_after("a") == 0


def test_malformed_key_records_are_left_out_and_the_rest_served(caplog: pytest.LogCaptureFixture) -> None:
    good: dict[str, Any] = {
        "id": "0123456789abcdef",
        "subject": "s",
        "roles": [],
        "hash": "$argon2id$x",
        "expires_at": None,
    }
    with caplog.at_level(logging.ERROR, "gateway.auth"):
        keys = compile_api_keys([good, {"id": "x"}, "nonsense"])
    assert list(keys) == ["0123456789abcdef"] and keys["0123456789abcdef"].expires_at is None
    assert len([r for r in caplog.records if "malformed" in r.getMessage()]) == 2


def test_the_routing_table_carries_keys_into_the_active_projection(key: tuple[str, str]) -> None:
    key_id, secret = key
    table = {
        "version": 7,
        "policy_version": 1,
        "revision": "p7-pv1",
        "servers": [],
        "api_keys": [record(key_id, secret)],
    }
    assert set(compile_projection(table).api_keys) == {key_id}
    assert compile_projection({**table, "api_keys": None}).api_keys == {}


async def test_neither_a_key_nor_a_secret_is_ever_logged(
    key: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    key_id, secret = key
    v = verifier(Table(record(key_id, secret)), burst=2)
    presented = [secret, wrong_secret(secret), "gwk_0123456789abcdef_" + "y" * 43, "gwk_garbage-CANARY"]
    with caplog.at_level(logging.DEBUG):
        for value in presented:
            try:
                await v.verify(value, "10.5.0.1")
            except AuthenticationFailed:
                pass
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert key_id in text  # the id names refusals, so the test sees the log it checks
    for value in presented:
        # The secret part is everything after "gwk_<id>_": it may itself hold "_" (base64url).
        assert value not in text and value.split("_", 2)[-1] not in text
