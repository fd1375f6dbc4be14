"""The asyncpg connection pool with the gateway's codecs and timeouts."""

from __future__ import annotations

from typing import Any

import asyncpg
import orjson

from gateway.config import SECONDS, Secret

__all__ = ["DATABASE_DOWN", "STATEMENT_TIMEOUT", "create_pool"]

DATABASE_DOWN: tuple[type[Exception], ...] = (
    asyncpg.exceptions.PostgresConnectionError,  # class 08: connection exceptions
    asyncpg.exceptions.OperatorInterventionError,  # class 57: admin shutdown, cannot connect now
    asyncpg.exceptions.InterfaceError,  # the connection closed under a query (ConnectionDoesNotExistError)
    ConnectionError,  # refused / reset while (re)connecting
)
"""Exceptions meaning PostgreSQL is unreachable or restarting (the control plane answers 503
``database_unavailable``)."""

STATEMENT_TIMEOUT = 15 * SECONDS
"""Server-side bound on any single statement (seconds)."""
CONNECT_TIMEOUT = 10 * SECONDS
"""Bound on opening one connection (seconds)."""
MIN_SIZE = 1
MAX_SIZE = 10


_JSONB_V1 = b"\x01"
"""The jsonb binary format: a version byte, then the JSON text."""


def _jsonb_encode(value: Any) -> bytes:
    return _JSONB_V1 + orjson.dumps(value)


def _jsonb_decode(data: bytes) -> Any:
    return orjson.loads(data[1:])


async def _init(conn: asyncpg.Connection) -> None:
    # json and jsonb columns map to Python dicts/lists through orjson, both ways, in the binary
    # format (so binary COPY can carry them). A json column stores orjson's text byte for byte.
    await conn.set_type_codec("json", encoder=orjson.dumps, decoder=orjson.loads, schema="pg_catalog", format="binary")
    await conn.set_type_codec(
        "jsonb", encoder=_jsonb_encode, decoder=_jsonb_decode, schema="pg_catalog", format="binary"
    )


def create_pool(
    database_url: Secret,
    *,
    statement_timeout: float = STATEMENT_TIMEOUT,
    min_size: int = MIN_SIZE,
    max_size: int = MAX_SIZE,
) -> asyncpg.Pool:
    """Create (but do not open) the pool; open it with ``async with``.

    Example::

        async with create_pool(config.database_url) as pool:
            async with pool.acquire() as conn:
                await conn.fetchval("select 1")

    Every connection gets orjson codecs for ``json``/``jsonb`` (``init=`` hook)
    and ``statement_timeout`` as a startup parameter. A startup parameter rather
    than a ``SET`` in ``init``, because asyncpg runs ``RESET ALL`` when a
    connection returns to the pool, which would silently drop a ``SET``.

    Args:
        database_url: ``postgresql://`` DSN (a :class:`Secret`; it holds the password).
        statement_timeout: Seconds before the server cancels a statement.
        min_size: Connections opened eagerly.
        max_size: Upper bound on open connections.

    Returns:
        An unopened :class:`asyncpg.Pool`.
    """
    return asyncpg.create_pool(
        database_url.reveal(),
        min_size=min_size,
        max_size=max_size,
        timeout=CONNECT_TIMEOUT,
        init=_init,
        server_settings={"statement_timeout": str(int(statement_timeout * 1000)), "application_name": "gateway"},
    )
