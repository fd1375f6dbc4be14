"""PostgreSQL going away under a running control plane: 503 (never 500), then recovery,
and the LISTEN connection re-opened with a catch-up read.

The control plane reaches the (real, shared) PostgreSQL through a loopback TCP proxy
that the test cuts and restores, so the outage is real for the control plane and
invisible to every other test.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import anyio
import asyncpg
import httpx
import pytest

from gateway.config import Config
from gateway.controlplane.notifier import ProjectionNotifier
from gateway.controlplane.projection import mutate_and_compile
from gateway.db.pool import create_pool
from tests.controlplane.helpers import asgi_controlplane, make_config
from tests.support.tcpproxy import TcpProxy, tcp_proxy

pytestmark = [pytest.mark.db, pytest.mark.anyio]

ADMIN_READS = ["/v1/servers", "/v1/policies", "/v1/audit/decisions", "/v1/projection"]


def _via(database_url: str, port: int) -> str:
    parts = urlsplit(database_url)
    netloc = parts.netloc.rsplit("@", 1)
    auth = netloc[0] + "@" if len(netloc) == 2 else ""
    return urlunsplit(parts._replace(netloc=f"{auth}127.0.0.1:{port}"))


async def _until_ok(admin: httpx.AsyncClient, path: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while (resp := await admin.get(path)).status_code != 200:
        assert time.monotonic() < deadline, f"{path} still {resp.status_code} after the database came back"
        await anyio.sleep(0.1)


async def _proxied(database_url: str, opa_bin: Path, proxy: TcpProxy) -> Config:
    return make_config(_via(database_url, proxy.port), opa_bin)


async def test_a_database_outage_is_503_with_retry_after_then_the_api_recovers(
    database_url: str, opa_bin: Path, caplog: pytest.LogCaptureFixture
) -> None:
    target = urlsplit(database_url)
    async with tcp_proxy(target.hostname or "127.0.0.1", target.port or 5432) as proxy:
        config = await _proxied(database_url, opa_bin, proxy)
        async with asgi_controlplane(config) as (admin, _internal, _state):
            for path in ADMIN_READS:
                assert (await admin.get(path)).status_code == 200, path

            proxy.cut()
            caplog.clear()
            for path in ADMIN_READS:
                resp = await admin.get(path)
                assert resp.status_code == 503, (path, resp.status_code, resp.text)
                assert resp.json()["error"] == "database_unavailable"
                assert resp.headers["retry-after"] == "1"
            post = await admin.post(
                "/v1/servers", json={"name": "x", "transport": "streamable_http", "url": "http://127.0.0.1:9/mcp"}
            )
            assert post.status_code == 503
            errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
            assert errors == [], [r.getMessage() for r in errors]

            await proxy.restore()
            for path in ADMIN_READS:
                await _until_ok(admin, path)


async def test_the_listen_connection_is_reopened_and_catches_up_on_what_it_missed(
    database_url: str, opa_bin: Path
) -> None:
    target = urlsplit(database_url)
    async with tcp_proxy(target.hostname or "127.0.0.1", target.port or 5432) as proxy:
        config = await _proxied(database_url, opa_bin, proxy)
        async with asgi_controlplane(config) as (_admin, _internal, state):
            notifier: ProjectionNotifier = state["cp_notifier"]
            before = notifier.version
            proxy.cut()
            # Compiled by "another control plane" (a direct connection) while this one's LISTEN is down.
            direct = make_config(database_url, opa_bin)
            async with create_pool(direct.database_url) as pool:
                _, missed = await mutate_and_compile(pool, direct, ProjectionNotifier(), _no_change)
                assert notifier.version == before  # its NOTIFY reaches listeners that exist now: none of ours
                await proxy.restore()
                with anyio.fail_after(15):  # the re-listen backoff starts at 0.5 s and doubles
                    while notifier.version < missed.version:
                        await anyio.sleep(0.05)

                # And the re-opened connection hears the next NOTIFY itself.
                _, later = await mutate_and_compile(pool, direct, ProjectionNotifier(), _no_change)
                with anyio.fail_after(5):
                    while notifier.version < later.version:
                        await anyio.sleep(0.02)


async def _no_change(_conn: asyncpg.Connection) -> None:
    return None
