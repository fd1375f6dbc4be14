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
        assert first not in handles and second in handles and len(handles) == 2  # bob's stays
