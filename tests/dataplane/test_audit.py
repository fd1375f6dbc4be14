"""The audit shipper never drops an event: refused, cancelled or interrupted batches are spooled and replayed."""

from __future__ import annotations

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
    assert sorted(_ids(cp.received)) == ["d0", "d1", "d2", "d3"]
    assert not (tmp_path / "dp-test.jsonl").exists()


async def test_a_full_queue_spools_instead_of_dropping(tmp_path: Path) -> None:
    cp = ControlPlane()
    async with httpx.AsyncClient(transport=httpx.MockTransport(cp.handler)) as http:
        shipper = AuditShipper(_config(tmp_path, queue_max=2, batch_size=10), http)
        for i in range(4):
            shipper.emit({"decision_id": f"d{i}"})
        assert shipper.spooled == 2
        await shipper.flush()
    assert sorted(_ids(cp.received)) == ["d0", "d1", "d2", "d3"]


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
