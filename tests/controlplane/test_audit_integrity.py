"""The tamper-evidence API in-process against a real PostgreSQL: checkpoints verifiable offline
with the published key, partitions created ahead, retention, and the admin requests' own chain."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway.config import Config
from tests.controlplane.helpers import asgi_controlplane, make_config

pytestmark = [pytest.mark.anyio, pytest.mark.db]


async def test_a_checkpoint_verifies_offline_with_the_published_key(cp_config: Config) -> None:
    async with asgi_controlplane(cp_config) as (admin, _internal, _state):
        made = await admin.post("/v1/audit/checkpoints")
        assert made.status_code == 201
        page = (await admin.get("/v1/audit/checkpoints", params={"limit": "5"})).json()
        newest = page["items"][0]
        assert newest == made.json()
        key = serialization.load_pem_public_key(page["keys"][newest["key_id"]].encode())
        assert isinstance(key, Ed25519PublicKey)
        key.verify(bytes.fromhex(newest["signature"]), newest["body"].encode())  # raises when forged
        assert '"version":"gw-audit-checkpoint/1"' in newest["body"]


async def test_every_admin_request_is_a_chained_record(cp_config: Config) -> None:
    async with asgi_controlplane(cp_config) as (admin, _internal, _state):
        for _ in range(3):
            assert (await admin.get("/v1/servers")).status_code == 200
        report = (await admin.get("/v1/audit/verify")).json()
        assert report["intact"] is True, report["message"]
        # the three reads, plus the verify request's own row is written after it answered
        assert report["streams"]["control_plane"] == 3
        again = (await admin.get("/v1/audit/verify")).json()
        assert again["streams"]["control_plane"] == 4


async def test_verify_rejects_an_empty_range(cp_config: Config) -> None:
    async with asgi_controlplane(cp_config) as (admin, _internal, _state):
        r = await admin.get(
            "/v1/audit/verify", params={"since": "2026-01-02T00:00:00Z", "until": "2026-01-01T00:00:00Z"}
        )
        assert r.status_code == 400 and "until" in r.json()["message"]
        assert (await admin.get("/v1/audit/verify", params={"since": "yesterday"})).status_code == 400


async def test_partitions_are_created_ahead_and_retention_drops_old_ones(database_url: str, opa_bin: Path) -> None:
    config = make_config(database_url, opa_bin, audit={"retention_days": 10})
    async with asgi_controlplane(config) as (admin, internal, state):
        listing = (await admin.get("/v1/audit/partitions")).json()
        assert listing["interval"] == "day" and listing["retention_days"] == 10
        today = datetime.now(UTC).strftime("%Y%m%d")
        tomorrow = (datetime.now(UTC) + timedelta(days=1)).strftime("%Y%m%d")
        names = {p["name"] for p in listing["items"]}
        assert {f"audit_decisions_p{today}", f"audit_decisions_p{tomorrow}", f"opa_decision_logs_p{today}"} <= names
        old = datetime.now(UTC) - timedelta(days=12)
        event = {
            "decision_id": "old-1",
            "timestamp": old.isoformat(),
            "tenant": config.tenant,
            "environment": config.environment,
            "allowed": False,
            "reasons": ["denied"],
        }
        assert (await internal.post("/v1/audit/events", json=[event])).json() == {"accepted": 1}
        dropped = (await admin.post("/v1/audit/retention")).json()["dropped"]
        assert [p["name"] for p in dropped] == [f"audit_decisions_p{old.strftime('%Y%m%d')}"]
        trail = (await admin.get("/v1/audit/control-plane", params={"action": "audit.retention.drop"})).json()
        assert [r["resource_id"] for r in trail["items"]] == [dropped[0]["name"]]
        report = (await admin.get("/v1/audit/verify")).json()
        assert report["intact"] is True and report["dropped_partitions"] == 1, report["message"]
        assert await state["cp_pool"].fetchval("SELECT count(*) FROM audit_decisions") == 0


async def test_an_event_dated_more_than_a_day_ahead_is_refused(cp_config: Config) -> None:
    async with asgi_controlplane(cp_config) as (_admin, internal, state):
        ahead = datetime.now(UTC) + timedelta(days=2)
        event = {
            "decision_id": "ahead-1",
            "timestamp": ahead.isoformat(),
            "tenant": cp_config.tenant,
            "environment": cp_config.environment,
            "allowed": True,
        }
        r = await internal.post("/v1/audit/events", json=[event])
        assert r.status_code == 400 and "a day in the future" in r.json()["message"]
        partition = f"audit_decisions_p{ahead.strftime('%Y%m%d')}"
        assert await state["cp_pool"].fetchval("SELECT to_regclass($1)", partition) is None
