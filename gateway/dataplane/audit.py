"""Runtime audit: enqueue on the hot path, ship in batches, never drop silently.

``emit()`` is a non-blocking append. A background task posts batches to the
control plane (``POST /v1/audit/events``, idempotent on ``decision_id``).
When the control plane is down, or the in-memory queue is full, events are
appended to a local spool file (JSON lines) and replayed once it is back; the
spool is also written on shutdown. Events carry metadata and hashes only —
never raw arguments, results or tokens.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from pathlib import Path
from typing import Any

import anyio
import httpx
import orjson

from gateway.config import Config

__all__ = ["AuditShipper"]

log = logging.getLogger("gateway.audit")


class AuditShipper:
    """Batching, spooling shipper of runtime audit events.

    Args:
        config: Audit settings, control-plane URL and internal token.
        http: Shared client for control-plane calls.

    Attributes:
        spooled: Events written to the spool file so far (a metric).
        shipped: Events accepted by the control plane so far.
    """

    def __init__(self, config: Config, http: httpx.AsyncClient) -> None:
        self._config = config
        self._http = http
        self._queue: deque[dict[str, Any]] = deque()
        self._wakeup = anyio.Event()
        self._spool_dir = Path(config.audit.spool_dir)
        self._spool = self._spool_dir / f"{config.data_plane.id}.jsonl"
        self.spooled = 0
        self.shipped = 0

    def emit(self, event: dict[str, Any]) -> None:
        """Enqueue one event (O(1), never awaits, never raises on a full queue)."""
        if len(self._queue) >= self._config.audit.queue_max:
            self._write_spool([event])
            return
        self._queue.append(event)
        if len(self._queue) >= self._config.audit.batch_size:
            self._wakeup.set()

    def _write_spool(self, events: list[dict[str, Any]]) -> None:
        self._spool_dir.mkdir(parents=True, exist_ok=True)
        with open(self._spool, "ab") as fh:
            for event in events:
                fh.write(orjson.dumps(event) + b"\n")
            fh.flush()
            os.fsync(fh.fileno())
        self.spooled += len(events)
        log.warning(
            "audit: %d event(s) spooled to %s (control plane unreachable or queue full)", len(events), self._spool
        )

    async def _post(self, events: list[dict[str, Any]]) -> bool:
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
            return False
        if resp.status_code >= 300:
            log.warning("audit: control plane answered HTTP %s", resp.status_code)
            return False
        self.shipped += len(events)
        return True

    async def _ship(self, batch: list[dict[str, Any]]) -> bool:
        """Post ``batch``; on refusal, or if cancelled mid-flight, spool it (never lost)."""
        shipped = False
        try:
            shipped = await self._post(batch)
        finally:
            if not shipped:
                self._write_spool(batch)
        return shipped

    async def _replay_spool(self) -> None:
        replaying = self._spool.with_suffix(".replaying")
        # A leftover .replaying file means an earlier replay was interrupted: replay it again
        # (ingest is idempotent on decision_id, so re-sent events are not duplicated).
        if not replaying.exists():
            if not self._spool.exists():
                return
            self._spool.rename(replaying)
        lines = [orjson.loads(line) for line in replaying.read_bytes().splitlines() if line.strip()]
        batch = self._config.audit.batch_size
        for i in range(0, len(lines), batch):
            if not await self._post(lines[i : i + batch]):
                self._write_spool(lines[i:])
                break
        replaying.unlink()

    async def flush(self) -> None:
        """Ship everything queued now; spool whatever the control plane refuses."""
        while self._queue:
            batch = [self._queue.popleft() for _ in range(min(len(self._queue), self._config.audit.batch_size))]
            if not await self._ship(batch):
                self._write_spool(list(self._queue))
                self._queue.clear()
                return
        await self._replay_spool()

    async def run(self) -> None:
        """Flush every ``flush_interval`` seconds (or when a batch fills) until cancelled."""
        try:
            while True:
                with anyio.move_on_after(self._config.audit.flush_interval):
                    await self._wakeup.wait()
                self._wakeup = anyio.Event()
                await self.flush()
        finally:
            with anyio.CancelScope(shield=True):
                with anyio.move_on_after(5):
                    await self.flush()
                if self._queue:
                    self._write_spool(list(self._queue))
                    self._queue.clear()
