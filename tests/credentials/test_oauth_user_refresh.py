"""Per-user OAuth refreshes across control-plane processes (gateway.controlplane.oauth_users
.refresh_shared, gateway.db.oauth_users leases and generations), against a real PostgreSQL and
the real authlib test authorization server, which rotates refresh tokens and, like RFC 9700
section 4.14.2 asks, revokes the whole family when a rotated refresh token comes back.

Two concurrent :func:`refresh_shared` calls are what two control-plane processes do at once
(the in-process lock of ``user_material`` is not involved)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg
import httpx
import pytest
from authlib.common.security import generate_token
from authlib.integrations.httpx_client import AsyncOAuth2Client

from gateway.config import Secret
from gateway.controlplane.oauth_users import refresh_shared
from gateway.credentials import Keyring, parse_kek, validate_credential
from gateway.db import credentials as db_credentials
from gateway.db import oauth_users as db
from gateway.db.migrate import apply_migrations
from gateway.db.pool import create_pool
from tests.credentials.helpers import new_kek
from tests.support import oauth_server

pytestmark = [pytest.mark.anyio, pytest.mark.db, pytest.mark.integration]

T, E = "tenant_local", "prod"
ALICE = ("https://idp.test", "alice")
REDIRECT = "http://127.0.0.1:9/cb"


@pytest.fixture(scope="module")
def oauth() -> Iterator[oauth_server.RunningOAuthServer]:
    with oauth_server.serve_in_thread() as running:
        yield running


async def _setup(conn: asyncpg.Connection, ring: Keyring, as_url: str) -> tuple[str, dict[str, Any]]:
    await apply_migrations(conn)
    await conn.execute(
        "INSERT INTO mcp_servers (tenant, environment, name, transport, url, description)"
        " VALUES ($1, $2, 'gh', 'streamable_http', 'http://127.0.0.1:9/mcp', '')",
        T,
        E,
    )
    config = {
        "client_id": "basic-client",
        "authorization_endpoint": f"{as_url}/authorize",
        "token_endpoint": f"{as_url}/token",
    }
    credential = validate_credential("oauth_authorization_code", config, {"client_secret": "basic-client-secret"})
    record = await db_credentials.create_credential(
        conn, T, E, name="gh", credential=credential, keyring=ring, created_by="t"
    )
    return str(record["id"]), dict(record["config"])


async def _connected(as_url: str, user: str) -> dict[str, Any]:
    """Alice's first tokens, by the authorization code flow with PKCE (test-only auto-consent)."""
    async with AsyncOAuth2Client(
        "basic-client", "basic-client-secret", code_challenge_method="S256", redirect_uri=REDIRECT
    ) as client:
        verifier = generate_token(48)
        url, state = client.create_authorization_url(f"{as_url}/authorize", code_verifier=verifier)
        async with httpx.AsyncClient(trust_env=False) as http:
            back = await http.get(url + "&approve_as=" + user)
        code = parse_qs(urlsplit(back.headers["location"]).query)["code"][0]
        return dict(await client.fetch_token(f"{as_url}/token", code=code, code_verifier=verifier))


async def test_two_processes_refreshing_at_once_refresh_once_and_both_get_the_new_token(
    database_url: str, oauth: oauth_server.RunningOAuthServer
) -> None:
    ring = Keyring(parse_kek(new_kek(), "test"))
    async with create_pool(Secret(database_url), min_size=4) as pool:  # both start at once: no connect delay
        async with pool.acquire() as conn:
            cid, config = await _setup(conn, ring, oauth.url)
        first = await _connected(oauth.url, "alice")
        stale = db.UserTokens("configured", f"{oauth.url}/token", first["refresh_token"], first["access_token"], 1.0)
        async with pool.acquire() as conn:
            await db.store_tokens(conn, T, E, cid, ALICE, ring, stale)  # expired: the next use refreshes
        before = oauth.issued("refresh_token")
        row = {"credential_id": cid, "config": config}
        secret = {"client_secret": "basic-client-secret"}

        def resolve() -> Any:
            return refresh_shared(pool, T, E, "http://gw", row, secret, ALICE, "gh", ring)

        one, two = await asyncio.gather(resolve(), resolve())
        assert oauth.issued("refresh_token") == before + 1  # one refresh; the other waited for it
        assert one[0] == two[0] and one[0] != first["access_token"] and one[1] > time.time() + 60
        async with pool.acquire() as conn:
            stored = await db.load_tokens(conn, T, E, cid, ALICE, ring)
        assert stored is not None and stored.access_token == one[0] and stored.generation == 1
        assert stored.refresh_token != first["refresh_token"]  # the rotated one was kept
        assert (await resolve())[0] == one[0]  # served as stored, no refresh
        assert oauth.issued("refresh_token") == before + 1


async def test_a_forced_refresh_replaces_an_unexpired_token_once_per_interval(
    database_url: str, oauth: oauth_server.RunningOAuthServer
) -> None:
    ring = Keyring(parse_kek(new_kek(), "test"))
    async with create_pool(Secret(database_url)) as pool:
        async with pool.acquire() as conn:
            cid, config = await _setup(conn, ring, oauth.url)
        first = await _connected(oauth.url, "alice")
        live = db.UserTokens(
            "configured", f"{oauth.url}/token", first["refresh_token"], first["access_token"], time.time() + 300
        )
        async with pool.acquire() as conn:
            await db.store_tokens(conn, T, E, cid, ALICE, ring, live)
        row = {"credential_id": cid, "config": config}
        secret = {"client_secret": "basic-client-secret"}

        async def resolve(force: bool) -> Any:
            return await refresh_shared(pool, T, E, "http://gw", row, secret, ALICE, "gh", ring, force=force)

        before = oauth.issued("refresh_token")
        assert (await resolve(False))[0] == first["access_token"]  # unexpired: as stored
        renewed = await resolve(True)  # an upstream refused it: refreshed although unexpired
        assert renewed[0] != first["access_token"] and oauth.issued("refresh_token") == before + 1
        for _ in range(3):  # within FORCE_INTERVAL: the renewed token, no further refresh
            assert (await resolve(True))[0] == renewed[0]
        assert oauth.issued("refresh_token") == before + 1


async def test_writes_and_deletes_apply_only_to_the_generation_read_and_leases_expire(database_url: str) -> None:
    ring = Keyring(parse_kek(new_kek(), "test"))
    tokens = db.UserTokens("configured", "https://as.test/token", "r1", "a1", 0.0)
    async with create_pool(Secret(database_url)) as pool, pool.acquire() as conn:
        cid, _ = await _setup(conn, ring, "https://as.test")
        assert await db.store_tokens(conn, T, E, cid, ALICE, ring, tokens) == 0
        assert await db.claim_refresh(conn, T, E, cid, ALICE, 0, 0.3)
        assert not await db.claim_refresh(conn, T, E, cid, ALICE, 0, 0.3)  # held by the first
        deadline = time.monotonic() + 5
        while not await db.claim_refresh(conn, T, E, cid, ALICE, 0, 0.3):  # until the lease runs out
            assert time.monotonic() < deadline, "an expired lease was never released"
            await asyncio.sleep(0.05)
        newer = db.UserTokens("configured", "https://as.test/token", "r2", "a2", 0.0)
        assert await db.store_tokens(conn, T, E, cid, ALICE, ring, newer, expected_generation=0) == 1
        # A process that read generation 0 neither overwrites nor deletes generation 1.
        assert await db.store_tokens(conn, T, E, cid, ALICE, ring, tokens, expected_generation=0) is None
        assert not await db.delete_tokens(conn, T, E, cid, ALICE, 0)
        assert not await db.claim_refresh(conn, T, E, cid, ALICE, 0, 0.3)
        loaded = await db.load_tokens(conn, T, E, cid, ALICE, ring)
        assert loaded is not None and (loaded.refresh_token, loaded.generation) == ("r2", 1)
        assert await db.delete_tokens(conn, T, E, cid, ALICE, 1)
        assert await db.load_tokens(conn, T, E, cid, ALICE, ring) is None


async def test_nothing_that_says_where_tokens_go_or_opens_a_flow_is_stored_in_clear(database_url: str) -> None:
    ring = Keyring(parse_kek(new_kek(), "test"))
    async with create_pool(Secret(database_url)) as pool, pool.acquire() as conn:
        cid, _ = await _setup(conn, ring, "https://as.test")
        tokens = db.UserTokens("https://as.test", "https://as.test/token-endpoint", "r1", "a1", 0.0)
        await db.store_tokens(conn, T, E, cid, ALICE, ring, tokens)
        handle = await db.create_connect(conn, T, E, cid, "gh", ALICE)
        claimed = await db.claim_connect(conn, T, E, handle)
        assert claimed is not None
        flow = db.ConnectFlow("https://as.test", "https://as.test/token-endpoint", "https://gw/cb/key", "verifier-v")
        await db.set_connect_state(conn, claimed, ring, state="state-s", browser_nonce="nonce-n", flow=flow)
        dump = str(await conn.fetch("SELECT * FROM credential_user_tokens")) + str(
            await conn.fetch("SELECT * FROM oauth_connects")
        )
        for clear in ("token-endpoint", "as.test", "gw/cb/key", "verifier-v", handle, "state-s", "nonce-n"):
            assert clear not in dump, clear
        # Another browser's nonce neither finishes the flow nor uses it up.
        assert await db.finish_connect(conn, T, E, "state-s", ring, ["other-nonce"]) is None
        assert await db.state_pending(conn, T, E, "state-s")
        # A connect row's sealed flow is bound to its subject: moved onto another subject it does not open.
        await conn.execute("UPDATE oauth_connects SET subject_sub = 'mallory'")
        assert await db.finish_connect(conn, T, E, "state-s", ring, ["nonce-n"]) is None
