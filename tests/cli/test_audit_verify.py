"""gatewayctl audit verify / checkpoint against a real control plane of this module's own (it
tampers with the database, so it does not share the package's control plane)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import asyncpg
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.cli.errors import ExitCode
from tests.cli.conftest import INTERNAL_TOKEN, ControlPlane, ThreadedControlPlane
from tests.controlplane.helpers import make_config
from tests.support import pg

pytestmark = [pytest.mark.db, pytest.mark.integration]


@pytest.fixture(scope="module")
def database(pg_admin_url: str) -> Iterator[str]:
    with pg.throwaway_database(pg_admin_url) as url:
        yield url


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("audit-verify-run")


@pytest.fixture(scope="module")
def cp(database: str, run_dir: Path, opa_bin: Path) -> Iterator[ControlPlane]:
    token = "cli-verify-admin-token-0123456789"
    config = make_config(
        database,
        opa_bin,
        run_dir=str(run_dir),
        control_plane={"admin_token": token, "internal_token": INTERNAL_TOKEN},
    )
    with ThreadedControlPlane(config) as url:
        yield ControlPlane(url=url, token=token, internal_token=INTERNAL_TOKEN, upstream_url="")


def _execute(database: str, sql: str) -> None:
    async def go() -> None:
        conn = await asyncpg.connect(database)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    anyio.run(go)


def test_verify_reports_intact_then_the_first_broken_link(
    gatewayctl, cp: ControlPlane, database: str, run_dir: Path, tmp_path: Path
) -> None:
    scope = cp.admin("GET", "/v1/control-plane/scope")
    base = datetime(2026, 2, 3, 4, 5, 6, tzinfo=UTC)
    events = [
        {
            "decision_id": f"verify-{i}",
            "timestamp": (base + timedelta(seconds=i)).isoformat(),
            "tenant": scope["tenant"],
            "environment": scope["environment"],
            "subject": "alice",
            "action": "tools/call",
            "allowed": True,
            "reasons": ["granted"],
        }
        for i in range(6)
    ]
    assert cp.internal("POST", "/v1/audit/events", events) == {"accepted": 6}
    made = gatewayctl("audit", "checkpoint", "-o", "json")
    assert made.code == 0, made
    assert json.loads(made.stdout)["key_id"]

    ok = gatewayctl("audit", "verify")
    assert ok.code == 0, ok
    decisions = ok.stdout.strip()
    assert decisions.startswith("intact, ") and decisions.endswith(" records")

    # pinned to the control plane's key: the newest checkpoint is checked here, offline
    public = run_dir / "audit-signing" / "ed25519.pem"
    key = serialization.load_pem_private_key(public.read_bytes(), password=None)
    pinned = tmp_path / "pinned.pem"
    pinned.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    assert "verified here with the pinned key" in gatewayctl("audit", "verify", "--public-key", str(pinned)).stderr
    stranger = tmp_path / "stranger.pem"
    stranger.write_bytes(
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    refused = gatewayctl("audit", "verify", "--public-key", str(stranger))
    assert refused.code == ExitCode.TAMPERED and "not signed by the pinned key" in refused.stderr

    _execute(database, "UPDATE audit_decisions SET subject = 'mallory' WHERE decision_id = 'verify-3'")
    broken = gatewayctl("audit", "verify")
    assert broken.code == ExitCode.TAMPERED, broken
    assert broken.stdout.startswith("broken: hash_mismatch in decisions/audit_decisions_p20260203 at seq 4")
    assert "(decision verify-3)" in broken.stdout
    report = json.loads(gatewayctl("audit", "verify", "-o", "json").stdout)
    assert report["intact"] is False and report["first_break"]["decision_id"] == "verify-3"
