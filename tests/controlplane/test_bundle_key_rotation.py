"""Bundle-signing key rotation with two keys against a real OPA sidecar (:class:`OpaSidecar`) and a
served control plane: OPA trusting k1 and k2 accepts bundles signed with either; a control plane
started with a new key re-signs the newest projection as a new one; once k1 is retired from the
sidecar, a k1-signed bundle is refused and the refusal shows in ``GET /v1/projection``."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway.config import Config
from gateway.controlplane.bundle import read_bundle
from gateway.controlplane.projection import ensure_initial_projection
from gateway.db.pool import create_pool
from gateway.db.projections import get_projection
from gateway.policy.bundle_signing import BundleSigner, signature_key_id
from gateway.policy.sidecar import OpaSidecar
from tests.controlplane.helpers import ADMIN_TOKEN, make_config, poll, served_controlplane
from tests.support.ports import free_port

pytestmark = [pytest.mark.anyio, pytest.mark.db, pytest.mark.integration]


def _write_key(tmp_path: Path, name: str, key: Any) -> tuple[str, str]:
    """Write ``<name>.pem`` (private) and ``<name>.pub`` (public); return both paths."""
    private, public = tmp_path / f"{name}.pem", tmp_path / f"{name}.pub"
    private.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    private.chmod(0o600)
    public.write_text(BundleSigner(key).verification_key.public_pem)
    return str(private), str(public)


def _sidecar(config: Config, cp_url: str, work_dir: Path, *trusted: str) -> OpaSidecar:
    port = free_port()
    return OpaSidecar(
        dataclasses.replace(
            config,
            control_plane=dataclasses.replace(config.control_plane, url=cp_url),
            opa=dataclasses.replace(
                config.opa,
                addr=f"127.0.0.1:{port}",
                url=f"http://127.0.0.1:{port}",
                work_dir=str(work_dir),
                long_poll_timeout=10,
            ),
            bundle_signing=dataclasses.replace(config.bundle_signing, verification_keys=trusted),
        )
    )


async def test_two_keys_rotate_and_a_retired_key_is_refused(database_url: str, opa_bin: Path, tmp_path: Path) -> None:
    k1, pub1 = _write_key(tmp_path, "k1", rsa.generate_private_key(public_exponent=65537, key_size=2048))
    k2, pub2 = _write_key(tmp_path, "k2", ec.generate_private_key(ec.SECP256R1()))
    run_dir = str(tmp_path / "run")
    with_k1 = make_config(database_url, opa_bin, run_dir=run_dir, bundle_signing={"key_file": k1, "key_id": "k1"})
    with_k2 = make_config(database_url, opa_bin, run_dir=run_dir, bundle_signing={"key_file": k2, "key_id": "k2"})

    async with (
        served_controlplane(with_k1) as cp_url,
        create_pool(with_k1.database_url) as pool,
        httpx.AsyncClient(
            base_url=cp_url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, trust_env=False
        ) as admin,
    ):

        async def signed_by(version: int) -> str | None:
            stored = await get_projection(pool, with_k1.tenant, with_k1.environment, version)
            assert stored is not None and stored.bundle is not None
            return signature_key_id(read_bundle(stored.bundle))

        def opa_state(sidecar: OpaSidecar, version: int, state: str) -> Callable[[], Awaitable[Any]]:
            async def check() -> dict[str, Any] | None:
                view = (await admin.get("/v1/projection")).json()
                mine = [o for o in view["opa"] if o["id"] == sidecar.instance_id]
                if mine and mine[0]["state"] == state and mine[0]["active_version"] == version:
                    return dict(mine[0])
                return None

            return check

        first = await ensure_initial_projection(pool, with_k1)  # what the served control plane did
        assert await signed_by(first) == "k1"
        async with anyio.create_task_group() as tg:
            both = _sidecar(with_k1, cp_url, tmp_path / "opa-a", f"k1={pub1}", f"k2={pub2}")
            tg.start_soon(both.run)
            await poll(opa_state(both, first, "ok"))

            # A control plane (re)started with k2 re-signs the newest projection as a new version;
            # a second start with the same key changes nothing.
            rotated = await ensure_initial_projection(pool, with_k2)
            assert rotated == first + 1 and await signed_by(rotated) == "k2"
            assert await ensure_initial_projection(pool, with_k2) == rotated
            await poll(opa_state(both, rotated, "ok"))
            tg.cancel_scope.cancel()

        # k1 retired: the sidecar (re)started trusting k2 only still activates the k2 bundle ...
        async with anyio.create_task_group() as tg:
            only_k2 = _sidecar(with_k1, cp_url, tmp_path / "opa-b", f"k2={pub2}")
            tg.start_soon(only_k2.run)
            await poll(opa_state(only_k2, rotated, "ok"))
            # ... and refuses a k1-signed one, keeping the k2 bundle active.
            stale = await ensure_initial_projection(pool, with_k1)
            assert stale == rotated + 1 and await signed_by(stale) == "k1"
            refused = await poll(opa_state(only_k2, rotated, "error"))
            assert "k1" in str([refused["message"], refused["errors"]]), refused
            view = (await admin.get("/v1/projection")).json()
            assert view["desired_version"] == stale
            tg.cancel_scope.cancel()
