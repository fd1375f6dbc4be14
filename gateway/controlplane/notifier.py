"""Wake long-polling requests when any control-plane process compiles a projection."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import anyio
import asyncpg

from gateway.config import SECONDS, Secret
from gateway.db.projections import NOTIFY_CHANNEL

__all__ = ["ProjectionNotifier", "listen_for_projections"]

log = logging.getLogger(__name__)

LISTEN_CONNECT_TIMEOUT = 10 * SECONDS


class ProjectionNotifier:
    """The newest projection version this process knows of, and a way to wait for a newer one.

    Fed by ``NOTIFY gateway_projection`` (every process) and by local compiles.
    Waiters must still re-read the database after waking: notifications can be
    lost while the LISTEN connection is down, so a waiter's timeout doubles as a
    periodic re-check.
    """

    def __init__(self, version: int = 0) -> None:
        self._version = version
        self._changed = anyio.Event()
        self.closing = False

    def close(self) -> None:
        """Release every long-poll waiter now (graceful shutdown: they answer 304)."""
        self.closing = True
        self._changed.set()

    @property
    def waiting(self) -> int:
        """Long polls parked in :meth:`wait_newer` right now."""
        return self._changed.statistics().tasks_waiting

    @property
    def version(self) -> int:
        """Newest known projection version (0 before any)."""
        return self._version

    def publish(self, version: int) -> None:
        """Record ``version``; wake every waiter if it is newer than the known one."""
        if version > self._version:
            self._version = version
            self._changed.set()
            self._changed = anyio.Event()

    async def wait_newer(self, than: int, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a version newer than ``than``.

        Returns:
            True when a newer version is known, False on timeout.
        """
        with anyio.move_on_after(timeout):
            while self._version <= than and not self.closing:
                await self._changed.wait()
        return self._version > than


RELISTEN_BACKOFF = (0.5 * SECONDS, 10 * SECONDS)
"""First and largest delay between attempts to re-open a lost LISTEN connection (doubling)."""


@contextlib.asynccontextmanager
async def listen_for_projections(
    database_url: Secret,
    notifier: ProjectionNotifier,
    *,
    on_relisten: Callable[[], Awaitable[None]] | None = None,
) -> AsyncIterator[None]:
    """Hold a dedicated connection that ``LISTEN``s on ``gateway_projection`` and feeds ``notifier``.

    When the connection is lost (PostgreSQL restarted, the backend was terminated), a
    background task re-opens it, retrying with a doubling delay (:data:`RELISTEN_BACKOFF`),
    then awaits ``on_relisten`` so the caller can publish what was compiled while nobody
    listened (notifications are not queued for absent listeners). Until then, long-pollers
    fall back to their periodic database re-check.

    Example::

        async with listen_for_projections(config.database_url, notifier, on_relisten=refresh):
            ...  # notifier.publish() runs on every NOTIFY from any process

    Raises:
        asyncpg.PostgresError | OSError: The connection or LISTEN failed at start-up.
    """
    lost = anyio.Event()
    current: list[asyncpg.Connection] = []  # the one open LISTEN connection

    def on_notify(_conn: object, _pid: int, _channel: str, payload: str) -> None:
        try:
            notifier.publish(int(payload))
        except ValueError:
            log.warning("ignoring malformed %s payload %r", NOTIFY_CHANNEL, payload[:64])

    def on_terminate(_conn: object) -> None:
        log.warning("the %s LISTEN connection closed; re-opening it", NOTIFY_CHANNEL)
        lost.set()

    async def connect() -> asyncpg.Connection:
        conn = await asyncpg.connect(database_url.reveal(), timeout=LISTEN_CONNECT_TIMEOUT)
        try:
            conn.add_termination_listener(on_terminate)
            await conn.add_listener(NOTIFY_CHANNEL, on_notify)
        except BaseException:
            conn.remove_termination_listener(on_terminate)
            await conn.close(timeout=1)
            raise
        return conn

    async def keep_listening() -> None:
        nonlocal lost
        while True:
            await lost.wait()
            delay = RELISTEN_BACKOFF[0]
            while True:
                await anyio.sleep(delay)
                try:
                    fresh = await connect()
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
                    log.warning("cannot re-open the %s LISTEN connection yet: %s", NOTIFY_CHANNEL, type(exc).__name__)
                    delay = min(delay * 2, RELISTEN_BACKOFF[1])
                    continue
                old = current.pop()
                old.remove_termination_listener(on_terminate)
                old.terminate()
                current.append(fresh)
                lost = anyio.Event()
                log.info("the %s LISTEN connection is back", NOTIFY_CHANNEL)
                break
            if on_relisten is not None:
                try:
                    await on_relisten()
                except Exception as exc:  # noqa: BLE001 - the periodic re-check still covers it
                    log.warning("could not re-read the projection after re-listening: %s", type(exc).__name__)

    current.append(await connect())
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(keep_listening)
            try:
                yield
            finally:
                tg.cancel_scope.cancel()
    finally:
        conn = current.pop()
        conn.remove_termination_listener(on_terminate)
        with contextlib.suppress(Exception):
            await conn.remove_listener(NOTIFY_CHANNEL, on_notify)
        with contextlib.suppress(Exception):
            await conn.close(timeout=2)
