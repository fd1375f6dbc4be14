"""Fixtures of the database tests: a pool on a throwaway database with every migration applied."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from gateway.config import Secret
from gateway.db import apply_migrations, create_pool


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    async with create_pool(Secret(database_url)) as pool:
        async with pool.acquire() as conn:
            await apply_migrations(conn)
        yield pool
