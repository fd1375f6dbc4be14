"""The per-user OAuth token store against a real PostgreSQL: what revocation and new links leave."""

from __future__ import annotations

import asyncpg
import pytest

from gateway.config import Secret
from gateway.credentials import Keyring, parse_kek, validate_credential
from gateway.db import credentials as db_credentials
from gateway.db import oauth_users as db
from gateway.db.migrate import apply_migrations
from gateway.db.pool import create_pool
from tests.credentials.helpers import new_kek

pytestmark = [pytest.mark.anyio, pytest.mark.db]

T, E = "tenant_local", "prod"
ALICE = ("https://idp.test", "alice")


async def _setup(conn: asyncpg.Connection, ring: Keyring) -> str:
    await apply_migrations(conn)
    await conn.execute(
        "INSERT INTO mcp_servers (tenant, environment, name, transport, url, description) VALUES ($1, $2, 'gh', 'streamable_http', 'http://x/mcp', '')",
        T,
        E,
    )
    credential = validate_credential("oauth_authorization_code", {}, {})
    record = await db_credentials.create_credential(
        conn, T, E, name="gh", credential=credential, keyring=ring, created_by="t"
    )
    return str(record["id"])


def _tokens() -> db.UserTokens:
    return db.UserTokens("https://as.test", "https://as.test/token", "refresh-x", "access-x", 0.0)


async def test_tokens_arriving_after_a_revocation_are_not_stored(database_url: str) -> None:
    ring = Keyring(parse_kek(new_kek(), "test"))
    async with create_pool(Secret(database_url)) as pool, pool.acquire() as conn:
        cid = await _setup(conn, ring)
        await db.store_tokens(conn, T, E, cid, ALICE, ring, _tokens())
        assert await conn.fetchval("SELECT count(*) FROM credential_user_tokens") == 1
        await db_credentials.revoke_credential(conn, T, E, cid)
        assert await conn.fetchval("SELECT count(*) FROM credential_user_tokens") == 0
        await db.store_tokens(conn, T, E, cid, ALICE, ring, _tokens())  # a callback that was in flight
        assert await conn.fetchval("SELECT count(*) FROM credential_user_tokens") == 0


async def test_a_new_link_replaces_the_users_older_unopened_ones(database_url: str) -> None:
    ring = Keyring(parse_kek(new_kek(), "test"))
    async with create_pool(Secret(database_url)) as pool, pool.acquire() as conn:
        cid = await _setup(conn, ring)
        first = await db.create_connect(conn, T, E, cid, "gh", ALICE)
        await db.create_connect(conn, T, E, cid, "gh", ("https://idp.test", "bob"))
        second = await db.create_connect(conn, T, E, cid, "gh", ALICE)
        handles = {r["handle"] for r in await conn.fetch("SELECT handle FROM oauth_connects")}
        assert db.digest(first) not in handles and db.digest(second) in handles and len(handles) == 2  # bob's stays
        assert first not in handles and second not in handles  # only digests are stored


def _ring(*keks: str) -> Keyring:
    """A keyring whose current KEK is the first of ``keks``, the others previous ones."""
    first, *rest = (parse_kek(k, "test") for k in keks)
    return Keyring(first, rest)


async def _connect(conn: asyncpg.Connection, cid: str, subject: tuple[str, str], ring: Keyring, verifier: str) -> str:
    """An opened connect of ``subject`` whose verifier is sealed under ``ring``; returns its state."""
    handle = await db.create_connect(conn, T, E, cid, "gh", subject)
    claimed = await db.claim_connect(conn, T, E, handle)
    assert claimed is not None
    state = f"state-{subject[1]}"
    flow = db.ConnectFlow("https://as.test", "https://as.test/token", "http://gw/cb", verifier)
    await db.set_connect_state(conn, claimed, ring, state=state, browser_nonce="nonce-x", flow=flow)
    return state


async def test_rewrap_moves_users_tokens_connect_verifiers_and_client_secrets_to_the_new_kek(
    database_url: str,
) -> None:
    old, new, stray = new_kek(), new_kek(), new_kek()
    old_ring, stray_ring = _ring(old), _ring(stray)
    bob = ("https://idp.test", "bob")
    client = db.RegisteredClient("gw-client", "client_secret_post", "http://gw/cb", "client-secret-x")
    async with create_pool(Secret(database_url)) as pool, pool.acquire() as conn:
        cid = await _setup(conn, old_ring)
        await db.store_tokens(conn, T, E, cid, ALICE, old_ring, _tokens())
        await db.store_tokens(conn, T, E, cid, bob, stray_ring, _tokens())  # its KEK is never configured
        state = await _connect(conn, cid, ALICE, old_ring, "verifier-x")
        await db.save_client(conn, T, E, cid, "https://as.test", client, old_ring)
        public = db.RegisteredClient("public-client", "none", "http://gw/cb")
        await db.save_client(conn, T, E, cid, "https://other.test", public, old_ring)  # nothing sealed

        only_new = _ring(new)
        # Without the re-wrap, retiring the old KEK loses them all.
        assert await db.load_tokens(conn, T, E, cid, ALICE, only_new) is None
        assert await db.load_client(conn, T, E, cid, "https://as.test", only_new) is None
        before = {
            t: set(await conn.fetch(f"SELECT nonce, ciphertext FROM {t} WHERE kek_id IS NOT NULL"))  # noqa: S608
            for t in ("credential_user_tokens", "oauth_connects", "credential_oauth_clients")
        }

        report = await db_credentials.rewrap_all(conn, T, E, _ring(new, old))
        # The old KEK retired: everything opens with the new one alone.
        tokens = await db.load_tokens(conn, T, E, cid, ALICE, only_new)
        assert tokens is not None and (tokens.refresh_token, tokens.access_token) == ("refresh-x", "access-x")
        loaded = await db.load_client(conn, T, E, cid, "https://as.test", only_new)
        assert loaded is not None and loaded.client_secret == "client-secret-x"
        assert await db.load_client(conn, T, E, cid, "https://other.test", only_new) == public
        finished = await db.finish_connect(conn, T, E, state, only_new, ["nonce-x"])
        assert finished is not None and finished.flow is not None and finished.flow.verifier == "verifier-x"
        assert await db.load_tokens(conn, T, E, cid, bob, only_new) is None  # the stray row stays as it was

        new_id, old_id, stray_id = (parse_kek(k, "test").id for k in (new, old, stray))
        assert report["current_kek_id"] == new_id
        assert (report["rewrapped"], report["failed"], report["by_kek"]) == (1, [], {new_id: 1})  # the credential
        assert report["oauth_users"] == {
            "credential_user_tokens": {
                "rewrapped": 1,
                "failed": [{"credential_id": cid, "subject_issuer": bob[0], "subject_sub": bob[1]}],
                "by_kek": {new_id: 1, stray_id: 1},
            },
            "oauth_connects": {"rewrapped": 1, "failed": [], "by_kek": {new_id: 1}},
            "credential_oauth_clients": {"rewrapped": 1, "failed": [], "by_kek": {new_id: 1}},
        }
        assert report["remaining"] == 1  # bob's row, under a KEK this keyring lacks
        assert old_id not in str(report) and "client-secret-x" not in str(report)
        for table, rows in before.items():  # only the data keys were re-wrapped
            after = set(await conn.fetch(f"SELECT nonce, ciphertext FROM {table} WHERE kek_id IS NOT NULL"))  # noqa: S608
            assert after == rows, table

        again = await db_credentials.rewrap_all(conn, T, E, _ring(new, old))
        assert again["rewrapped"] == 0 and again["remaining"] == 1
        assert {t: (p["rewrapped"], len(p["failed"])) for t, p in again["oauth_users"].items()} == {
            "credential_user_tokens": (0, 1),
            "oauth_connects": (0, 0),
            "credential_oauth_clients": (0, 0),
        }
