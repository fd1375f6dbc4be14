"""Runtime audit: enqueue on the hot path, ship in batches, never drop silently.

``emit()`` is a non-blocking append that never touches the disk. A background task posts
batches to the control plane (``POST /v1/audit/events``, idempotent on ``decision_id``).
When the control plane is down, or the in-memory queue reaches ``audit.queue_max``, events
are appended (and fsynced) to a local spool file, ``<spool_dir>/<dataplane id>.jsonl``, from a
worker thread; the spool is replayed, oldest first and streamed batch by batch, before the
queue is shipped again. The queue is also spooled on shutdown. Events carry metadata and
hashes only — never raw arguments, results or tokens.

Files (JSON lines, one event per line):

* ``<id>.jsonl`` — the spool; only ever appended to.
* ``<id>.replaying`` — the spool being replayed (renamed from ``.jsonl``); replay resumes at
  the first unshipped batch, or from the start after a restart (ingest is idempotent, so a
  re-sent event is not duplicated).
* ``<id>.rejected.jsonl`` — batches the control plane refused as invalid (HTTP 400/413/422),
  kept for the operator instead of blocking every later event.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from enum import Enum
from pathlib import Path
from typing import IO, Any

import anyio
import anyio.to_thread
import httpx
import orjson

from gateway.config import Config

__all__ = ["AuditShipper"]

log = logging.getLogger("gateway.audit")

_REJECTED_STATUS = frozenset({400, 413, 422})
"""Control-plane answers meaning "this batch will never be accepted"; anything else is retried."""


class _Outcome(Enum):
    SHIPPED = "shipped"
    RETRY = "retry"
    REJECTED = "rejected"


def _append_lines(path: Path, events: list[dict[str, Any]]) -> None:
    """Append ``events`` as JSON lines and fsync (runs in a worker thread)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as fh:
        fh.write(b"".join(orjson.dumps(e) + b"\n" for e in events))
        fh.flush()
        os.fsync(fh.fileno())


def _read_batch(fh: IO[bytes], size: int) -> tuple[list[dict[str, Any]], int]:
    """Read up to ``size`` events from ``fh``; return them and the offset after them (worker thread).

    A line that is not a JSON object (a torn write at a crash) is skipped and logged.
    """
    events: list[dict[str, Any]] = []
    while len(events) < size:
        line = fh.readline()
        if not line:
            break
        if not line.strip():
            continue
        try:
            event = orjson.loads(line)
        except orjson.JSONDecodeError:
            log.error("audit: skipping an unreadable spool line (%d bytes)", len(line))
            continue
        if isinstance(event, dict):
            events.append(event)
    return events, fh.tell()


class AuditShipper:
    """Batching, spooling shipper of runtime audit events.

    Args:
        config: Audit settings, control-plane URL and internal token.
        http: Shared client for control-plane calls.

    Attributes:
        spooled: Events written to the spool file so far (a metric).
        replayed: Spooled events the control plane accepted on replay so far (a metric).
        shipped: Events accepted by the control plane so far.
        rejected: Events the control plane refused as invalid (kept in ``<id>.rejected.jsonl``).
    """

    def __init__(self, config: Config, http: httpx.AsyncClient) -> None:
        self._config = config
        self._http = http
        self._queue: deque[dict[str, Any]] = deque()
        self._wakeup = anyio.Event()
        spool_dir = Path(config.audit.spool_dir)
        self._spool = spool_dir / f"{config.data_plane.id}.jsonl"
        self._replaying = spool_dir / f"{config.data_plane.id}.replaying"
        self._rejected = spool_dir / f"{config.data_plane.id}.rejected.jsonl"
        self._replay_offset = 0
        self.spooled = 0
        self.replayed = 0
        self.shipped = 0
        self.rejected = 0

    def emit(self, event: dict[str, Any]) -> None:
        """Enqueue one event: O(1), never awaits, never blocks on disk, never drops.

        A full batch, or a queue at ``audit.queue_max``, wakes the shipper, which spools
        the queue to disk (off the event loop) when it cannot ship it.
        """
        self._queue.append(event)
        if len(self._queue) >= min(self._config.audit.batch_size, self._config.audit.queue_max):
            self._wakeup.set()

    @property
    def queued(self) -> int:
        """Events waiting in memory."""
        return len(self._queue)

    def spool_files(self) -> tuple[Path, Path]:
        """The spool and the spool being replayed (either may not exist): the events on disk."""
        return self._spool, self._replaying

    async def _spool_events(self, events: list[dict[str, Any]]) -> None:
        if not events:
            return
        await anyio.to_thread.run_sync(_append_lines, self._spool, events)
        self.spooled += len(events)
        log.warning(
            "audit: %d event(s) spooled to %s (control plane unreachable or queue full)", len(events), self._spool
        )

    async def _spool_queue(self) -> None:
        """Move everything queued to the spool, oldest first (shielded: never half-done)."""
        events = list(self._queue)
        self._queue.clear()
        with anyio.CancelScope(shield=True):
            await self._spool_events(events)

    async def _post(self, events: list[dict[str, Any]]) -> _Outcome:
        cp = self._config.control_plane
        try:
            resp = await self._http.post(
                f"{cp.url}/v1/audit/events",
                content=orjson.dumps(events),
                headers={"authorization": f"Bearer {cp.internal_token.reveal()}", "content-type": "application/json"},
                timeout=10.0,
            )
        except httpx.HTTPError as exc:
            log.warning("audit: control plane unreachable (%s)", type(exc).__name__)
            return _Outcome.RETRY
        if resp.status_code in _REJECTED_STATUS:
            return _Outcome.REJECTED
        if resp.status_code >= 300:
            log.warning("audit: control plane answered HTTP %s", resp.status_code)
            return _Outcome.RETRY
        self.shipped += len(events)
        return _Outcome.SHIPPED

    async def _deliver(self, events: list[dict[str, Any]]) -> bool:
        """Post ``events``; True when they are accounted for (shipped, or refused and quarantined)."""
        outcome = await self._post(events)
        if outcome is _Outcome.REJECTED:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(_append_lines, self._rejected, events)
            self.rejected += len(events)
            log.error(
                "audit: the control plane refused %d event(s) as invalid; kept in %s", len(events), self._rejected
            )
        return outcome is not _Outcome.RETRY

    async def _ship(self, batch: list[dict[str, Any]]) -> bool:
        """Post ``batch``; on refusal, or if cancelled mid-flight, spool it (never lost)."""
        delivered = False
        try:
            delivered = await self._deliver(batch)
        finally:
            if not delivered:
                with anyio.CancelScope(shield=True):
                    await self._spool_events(batch)
        return delivered

    async def _replay_spool(self) -> bool:
        """Replay ``.replaying`` then the spool, batch by batch, streamed from disk.

        Returns:
            True when nothing is left to replay; False when the control plane did not
            take a batch (replay resumes at that batch next time).
        """
        size = self._config.audit.batch_size
        while True:
            if not self._replaying.exists():
                self._replay_offset = 0
                if not self._spool.exists():
                    return True
                # Nothing else writes the spool while this task replays it.
                self._spool.rename(self._replaying)
            fh = await anyio.to_thread.run_sync(open, self._replaying, "rb")
            try:
                await anyio.to_thread.run_sync(fh.seek, self._replay_offset)
                while True:
                    batch, offset = await anyio.to_thread.run_sync(_read_batch, fh, size)
                    if not batch:
                        break
                    if not await self._deliver(batch):
                        return False
                    self.replayed += len(batch)
                    self._replay_offset = offset
            finally:
                fh.close()
            self._replaying.unlink()
            self._replay_offset = 0

    async def flush(self) -> None:
        """Replay the spool (oldest first), then ship the queue; spool what the control plane does not take."""
        if not await self._replay_spool():
            await self._spool_queue()
            return
        while self._queue:
            batch = [self._queue.popleft() for _ in range(min(len(self._queue), self._config.audit.batch_size))]
            if not await self._ship(batch):
                await self._spool_queue()
                return

    async def run(self) -> None:
        """Flush every ``flush_interval`` seconds (or when a batch fills) until cancelled."""
        try:
            while True:
                with anyio.move_on_after(self._config.audit.flush_interval):
                    await self._wakeup.wait()
                self._wakeup = anyio.Event()
                if len(self._queue) >= self._config.audit.queue_max:
                    await self._spool_queue()
                await self.flush()
        finally:
            with anyio.CancelScope(shield=True):
                with anyio.move_on_after(5):
                    await self.flush()
                await self._spool_queue()
