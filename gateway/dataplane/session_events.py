"""Session events: ``DELETE`` and ``logging/setLevel`` of sealed sessions, on every data plane.

A sealed session id (:mod:`gateway.dataplane.session_seal`) lets any data plane resume a
session, but it cannot change once issued, so two things a client does during the session go
through the control plane's feed (:mod:`gateway.controlplane.session_events`):

* ``ended``: the client's ``DELETE``. The data plane that took it posts the event before
  answering (:attr:`SessionEvents.post_timeout` at most; on failure the event is kept and
  posted again by :meth:`SessionEvents.run`); every data plane then answers the id 404 and
  drops the local state it had of the session.
* ``log_level``: the level of the client's allowed ``logging/setLevel``, applied by every data
  plane to the session (held now or resumed later).

Each data plane polls the feed every :attr:`SessionEvents.interval` seconds (default 1 s),
so a ``DELETE`` taken by one data plane holds on the others within that interval plus a
round trip; one ``GET`` per interval per data plane, nothing per call. While the control
plane is unreachable, events queue (at most :data:`MAX_PENDING`; also in a spool file, so a
restart does not lose them) and the feed is read again when it is back. The mirror of
events (at most :data:`MAX_MIRROR` sessions; a session's entry lasts until its id expires)
answers for sessions resumed later.
"""

from __future__ import annotations

import heapq
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import orjson

from gateway.config import Config

__all__ = ["MAX_MIRROR", "MAX_PENDING", "Apply", "SessionEvents"]

log = logging.getLogger("gateway.sessions")

Apply = Callable[[str, str, str | None], None]
"""``apply(session_ref, kind, value)``: what a data plane does with one event read from the feed."""

MAX_PENDING = 10_000
"""Most events waiting for the control plane; beyond it the oldest are dropped (and logged)."""

MAX_MIRROR = 100_000
"""Most sessions whose events a data plane remembers (the soonest to expire are dropped first)."""


@dataclass(slots=True)
class _Known:
    """What the feed said of one session: ended, and its last level (until ``expires_at``)."""

    expires_at: int
    ended: bool = False
    level: str | None = None


class SessionEvents:
    """This data plane's side of the feed.

    Args:
        config: ``control_plane.url`` and ``internal_token``, ``data_plane.id``.
        http: The control-plane HTTP client.
        interval: Seconds between polls.
    """

    def __init__(
        self,
        config: Config,
        http: httpx.AsyncClient,
        *,
        interval: float = 1.0,
        post_timeout: float = 2.0,
        spool: Path | None = None,
    ) -> None:
        self._spool = spool
        self._config = config
        self._http = http
        self.interval = interval
        self.post_timeout = post_timeout
        self._cursor = 0
        self._known: dict[str, _Known] = {}
        self._expiry: list[tuple[int, str]] = []  # heap of (expires_at, ref) over _known
        self._pending: list[dict[str, Any]] = []
        self._flushing = anyio.Lock()
        self.synced = anyio.Event()
        """Set once the feed has been read: until then a sealed id this data plane does not
        hold is not resumed (503), since it may have been ended elsewhere."""

    def _headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self._config.control_plane.internal_token.reveal()}"}

    def ended(self, ref: str) -> bool:
        """True when the session ``ref`` was ended on any data plane (as far as read)."""
        known = self._known.get(ref)
        return known is not None and known.ended

    def level(self, ref: str) -> str | None:
        """The session's last ``logging/setLevel`` level known here, or None."""
        known = self._known.get(ref)
        return known.level if known is not None else None

    async def publish(self, ref: str, kind: str, value: str | None, expires_at: int) -> bool:
        """Record the event here and post it now; True when the control plane stored it
        (otherwise it is posted again by :meth:`run`)."""
        self._remember(ref, kind, value, expires_at)
        self._pending.append({"session_ref": ref, "kind": kind, "value": value, "expires_at": expires_at})
        if len(self._pending) > MAX_PENDING:
            dropped = len(self._pending) - MAX_PENDING
            del self._pending[:dropped]
            log.error("session events: %d event(s) dropped (control plane unreachable too long)", dropped)
        with anyio.move_on_after(self.post_timeout):
            return await self._flush()
        return False

    async def _flush(self) -> bool:
        """Post what is pending, one batch at a time, one flush at a time (a batch is removed
        only once stored, so concurrent publishers never remove each other's events). What
        cannot be posted now is kept in the spool file too, so a restart does not lose it."""
        async with self._flushing:
            while self._pending:
                batch = self._pending[:1000]
                outcome = await self._post(batch)
                if outcome == "retry":
                    await self._save()
                    return False
                del self._pending[: len(batch)]  # stored, or refused as invalid (never retried)
            await self._save()
        return True

    async def _save(self) -> None:
        """Write the pending events to the spool (or remove it when none is pending), atomically,
        from a worker thread."""
        if self._spool is None:
            return
        with anyio.CancelScope(shield=True):
            try:
                await anyio.to_thread.run_sync(_write_spool, self._spool, list(self._pending))
            except OSError as exc:  # a full or read-only disk: the events stay queued in memory
                log.error("session events: cannot write the spool %s (%s)", self._spool, type(exc).__name__)

    async def load(self) -> int:
        """Take back the events a previous run of this data plane could not post (its spool):
        remembered here at once, posted by :meth:`run`; returns how many."""
        if self._spool is None:
            return 0
        events = await anyio.to_thread.run_sync(_read_spool, self._spool)
        for event in events:
            self._remember(event["session_ref"], event["kind"], event["value"], int(event["expires_at"]))
        self._pending[:0] = events
        if events:
            log.warning("session events: %d event(s) from the previous run to post", len(events))
        return len(events)

    async def _post(self, batch: list[dict[str, Any]]) -> str:
        cp = self._config.control_plane
        body = {"dataplane_id": self._config.data_plane.id, "events": batch}
        try:
            resp = await self._http.post(
                f"{cp.url}/v1/dataplane/session-events",
                content=orjson.dumps(body),
                headers={**self._headers(), "content-type": "application/json"},
                timeout=self.post_timeout,
            )
        except httpx.HTTPError as exc:
            log.warning("session events: control plane unreachable (%s); will retry", type(exc).__name__)
            return "retry"
        if resp.status_code == 400:
            # Never stored, never retried: one bad event must not hold back every later one.
            log.error("session events: the control plane refused %d event(s) as invalid; dropped", len(batch))
            return "refused"
        if resp.status_code != 204:
            log.warning("session events: control plane answered HTTP %s; will retry", resp.status_code)
            return "retry"
        return "stored"

    def _remember(self, ref: str, kind: str, value: str | None, expires_at: int) -> None:
        known = self._known.get(ref)
        if known is None:
            known = self._known[ref] = _Known(expires_at)
            heapq.heappush(self._expiry, (expires_at, ref))
        if kind == "ended":
            known.ended = True
        elif value is not None:
            known.level = value
        while len(self._known) > MAX_MIRROR:  # the sessions soonest to expire anyway go first
            self._known.pop(heapq.heappop(self._expiry)[1], None)

    def _prune(self) -> None:
        now = int(time.time())
        while self._expiry and self._expiry[0][0] <= now:
            self._known.pop(heapq.heappop(self._expiry)[1], None)

    async def poll(self, apply: Apply) -> None:
        """Read the feed once from the cursor and hand each new event to ``apply(ref, kind,
        value)`` (the session store's part: end the session or set its level, when held here;
        :meth:`gateway.dataplane.sessions.SessionStore.apply_event`). One ``GET`` per page.

        Raises:
            httpx.HTTPError: The control plane is unreachable.
        """
        cp = self._config.control_plane
        while True:
            resp = await self._http.get(
                f"{cp.url}/v1/dataplane/session-events",
                params={"after": self._cursor},
                headers=self._headers(),
                timeout=10.0,
            )
            if resp.status_code != 200:
                raise httpx.HTTPStatusError(f"HTTP {resp.status_code}", request=resp.request, response=resp)
            doc = resp.json()
            events = doc["events"]
            for event in events:
                ref, kind, value = event["session_ref"], event["kind"], event["value"]
                self._remember(ref, kind, value, int(event["expires_at"]))
                apply(ref, kind, value)
            before = self._cursor
            self._cursor = max(before, int(doc["next"]))
            if len(events) < 1000 or self._cursor == before:
                break
        self.synced.set()

    async def run(self, apply: Apply) -> None:
        """Post pending events (the spool's first) and poll the feed every :attr:`interval`
        seconds, forever, handing what it reads to ``apply`` (see :meth:`poll`)."""
        await self.load()
        failures = 0
        while True:
            try:
                if self._pending:
                    await self._flush()
                await self.poll(apply)
                failures = 0
            except Exception as exc:  # noqa: BLE001 - the loop outlives any one bad round
                failures += 1
                if failures == 1 or failures % 60 == 0:
                    log.warning("session events: feed unreadable (%s)", type(exc).__name__)
            self._prune()
            await anyio.sleep(self.interval)


def _write_spool(path: Path, events: list[dict[str, Any]]) -> None:
    if not events:
        path.unlink(missing_ok=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        f.write(orjson.dumps(events))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read_spool(path: Path) -> list[dict[str, Any]]:
    """The spooled events still well formed (others are dropped with one log line)."""
    try:
        raw = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        return []
    except (OSError, orjson.JSONDecodeError):
        log.error("session events: unreadable spool %s; dropped", path)
        return []
    if not isinstance(raw, list):
        log.error("session events: unreadable spool %s; dropped", path)
        return []
    keep = [
        e
        for e in raw
        if isinstance(e, dict)
        and isinstance(e.get("session_ref"), str)
        and e.get("kind") in ("ended", "log_level")
        and isinstance(e.get("expires_at"), int)
    ]
    return keep
