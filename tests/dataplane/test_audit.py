"""The audit shipper never drops an event: refused, cancelled or interrupted batches are spooled and replayed."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import anyio
import httpx
import orjson
import pytest

from gateway.config import Config
from gateway.dataplane.audit import AuditShipper

pytestmark = pytest.mark.anyio


def _config(tmp_path: Path, **audit: Any) -> Config:
    return Config.from_mapping(
        {
            "plane": "data",
            "control_plane": {"internal_token": "t", "url": "http://cp.test"},
            "data_plane": {"id": "dp-test"},
            "jwt": {"issuer": "i", "audience": "a", "jwks_url": "file:///dev/null"},
            "opa": {"manage": False, "bin": "/bin/true"},
            "audit": {"spool_dir": str(tmp_path), **audit},
        }
    )


class ControlPlane:
    """An httpx MockTransport standing in for ``POST /v1/audit/events``."""

    def __init__(self) -> None:
        self.up = True
        self.hang = False
        self.received: list[dict[str, Any]] = []

    async def handler(self, request: httpx.Request) -> httpx.Response:
        if self.hang:
            await anyio.sleep(3600)
        if not self.up:
            raise httpx.ConnectError("refused")
        self.received.extend(orjson.loads(request.content))
        return httpx.Response(202, json={"accepted": 1})


def _ids(events: list[dict[str, Any]]) -> list[str]:
    return [e["decision_id"] for e in events]


async def test_events_are_shipped_in_batches(tmp_path: Path) -> None:
    cp = ControlPlane()
    async with httpx.AsyncClient(transport=httpx.MockTransport(cp.handler)) as http:
        shipper = AuditShipper(_config(tmp_path, batch_size=2), http)
        for i in range(5):
            shipper.emit({"decision_id": f"d{i}"})
        await shipper.flush()
    assert _ids(cp.received) == ["d0", "d1", "d2", "d3", "d4"]
    assert shipper.shipped == 5 and shipper.spooled == 0


async def test_control_plane_down_spools_then_replays_in_order(tmp_path: Path) -> None:
    cp = ControlPlane()
    cp.up = False
    async with httpx.AsyncClient(transport=httpx.MockTransport(cp.handler)) as http:
        shipper = AuditShipper(_config(tmp_path, batch_size=2), http)
        for i in range(3):
            shipper.emit({"decision_id": f"d{i}"})
        await shipper.flush()
        assert shipper.spooled == 3 and cp.received == []
        assert (tmp_path / "dp-test.jsonl").exists()
        cp.up = True
        shipper.emit({"decision_id": "d3"})
        await shipper.flush()
    # The spool (older) is replayed before the queue (newer): the control plane sees time order.
    assert _ids(cp.received) == ["d0", "d1", "d2", "d3"]
    assert list(tmp_path.iterdir()) == []


async def test_a_full_queue_is_spooled_by_the_shipper_not_by_emit(tmp_path: Path) -> None:
    cp = ControlPlane()
    cp.hang = True  # a control plane that never answers: the queue fills up
    async with httpx.AsyncClient(transport=httpx.MockTransport(cp.handler)) as http:
        shipper = AuditShipper(_config(tmp_path, queue_max=2, batch_size=10, flush_interval=0.05), http)
        for i in range(4):
            shipper.emit({"decision_id": f"d{i}"})
        # emit() never writes: the hot path does no disk I/O even with the queue over its limit.
        assert shipper.queued == 4 and shipper.spooled == 0 and not (tmp_path / "dp-test.jsonl").exists()
        async with anyio.create_task_group() as tg:
            tg.start_soon(shipper.run)
            with anyio.fail_after(5):
                while shipper.spooled < 4:
                    await anyio.sleep(0.01)
            tg.cancel_scope.cancel()
        # Spooled oldest first, then renamed for the replay that hangs on the control plane.
        lines = (tmp_path / "dp-test.replaying").read_bytes().splitlines()
        assert [orjson.loads(line)["decision_id"] for line in lines] == ["d0", "d1", "d2", "d3"]
        cp.hang = False
        await shipper.flush()
    assert _ids(cp.received) == ["d0", "d1", "d2", "d3"]


async def test_spool_writes_and_replay_reads_run_in_a_worker_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway.dataplane import audit as audit_module

    threads: list[str] = []
    real_append, real_read = audit_module._append_lines, audit_module._read_batch

    def append(path: Path, events: list[dict[str, Any]]) -> None:
        threads.append(threading.current_thread().name)
        real_append(path, events)

    def read(fh: Any, size: int) -> Any:
        threads.append(threading.current_thread().name)
        return real_read(fh, size)

    monkeypatch.setattr(audit_module, "_append_lines", append)
    monkeypatch.setattr(audit_module, "_read_batch", read)
    cp = ControlPlane()
    cp.up = False
    async with httpx.AsyncClient(transport=httpx.MockTransport(cp.handler)) as http:
        shipper = AuditShipper(_config(tmp_path), http)
        shipper.emit({"decision_id": "d0"})
        await shipper.flush()
        cp.up = True
        await shipper.flush()
    assert _ids(cp.received) == ["d0"]
    assert len(threads) >= 2 and threading.main_thread().name not in threads


async def test_replay_is_streamed_and_resumes_at_the_first_unshipped_batch(tmp_path: Path) -> None:
    spool = tmp_path / "dp-test.jsonl"
    spool.write_bytes(b"".join(orjson.dumps({"decision_id": f"d{i:03}"}) + b"\n" for i in range(50)))
    cp = ControlPlane()
    posts: list[int] = []
    inner = cp.handler

    async def handler(request: httpx.Request) -> httpx.Response:
        posts.append(len(orjson.loads(request.content)))
        if len(posts) == 3:  # the third batch fails once
            raise httpx.ConnectError("refused")
        return await inner(request)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        shipper = AuditShipper(_config(tmp_path, batch_size=10), http)
        await shipper.flush()
        assert _ids(cp.received) == [f"d{i:03}" for i in range(20)]
        await shipper.flush()
    # Batches of 10 read from disk; after the failure, replay resumed at d020 (nothing re-sent).
    assert posts == [10, 10, 10, 10, 10, 10]
    assert _ids(cp.received) == [f"d{i:03}" for i in range(50)]
    assert list(tmp_path.iterdir()) == []


async def test_a_batch_the_control_plane_refuses_as_invalid_is_quarantined_not_blocking(tmp_path: Path) -> None:
    cp = ControlPlane()
    inner = cp.handler

    async def handler(request: httpx.Request) -> httpx.Response:
        if any(e["decision_id"] == "bad" for e in orjson.loads(request.content)):
            return httpx.Response(400, json={"error": "bad_request"})
        return await inner(request)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        shipper = AuditShipper(_config(tmp_path, batch_size=1), http)
        for name in ("d0", "bad", "d1"):
            shipper.emit({"decision_id": name})
        await shipper.flush()
    assert _ids(cp.received) == ["d0", "d1"] and shipper.rejected == 1
    kept = (tmp_path / "dp-test.rejected.jsonl").read_bytes().splitlines()
    assert [orjson.loads(line)["decision_id"] for line in kept] == ["bad"]


async def test_a_batch_cancelled_mid_flight_is_spooled_not_lost(tmp_path: Path) -> None:
    cp = ControlPlane()
    cp.hang = True
    async with httpx.AsyncClient(transport=httpx.MockTransport(cp.handler)) as http:
        shipper = AuditShipper(_config(tmp_path), http)
        shipper.emit({"decision_id": "d0"})
        with anyio.move_on_after(0.2):
            await shipper.flush()
        lines = (tmp_path / "dp-test.jsonl").read_bytes().splitlines()
        assert [orjson.loads(line)["decision_id"] for line in lines] == ["d0"]
        cp.hang = False
        await shipper.flush()
    assert _ids(cp.received) == ["d0"]


async def test_an_interrupted_replay_is_replayed_again(tmp_path: Path) -> None:
    (tmp_path / "dp-test.replaying").write_bytes(orjson.dumps({"decision_id": "left-over"}) + b"\n")
    (tmp_path / "dp-test.jsonl").write_bytes(orjson.dumps({"decision_id": "newer"}) + b"\n")
    cp = ControlPlane()
    async with httpx.AsyncClient(transport=httpx.MockTransport(cp.handler)) as http:
        shipper = AuditShipper(_config(tmp_path), http)
        await shipper.flush()
        await shipper.flush()
    assert _ids(cp.received) == ["left-over", "newer"]
    assert list(tmp_path.iterdir()) == []
