"""OPA's bundle, status and decision-log protocols, served by the control plane; a real OPA end to end."""

from __future__ import annotations

import dataclasses
import gzip
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import httpx
import orjson
import pytest

from gateway.config import Config
from gateway.controlplane._longpoll import RECHECK_INTERVAL
from gateway.policy.sidecar import OPA_TOKEN_FILE, OpaSidecar
from tests.controlplane.helpers import (
    ADMIN_TOKEN,
    INTERNAL_TOKEN,
    MINIMAL_POLICY,
    OPA_TOKEN,
    asgi_controlplane,
    poll,
    served_controlplane,
)
from tests.support.ports import free_port

pytestmark = [pytest.mark.anyio, pytest.mark.db]

BUNDLE_TYPE = "application/vnd.openpolicyagent.bundles"


async def _approve_policy(admin: httpx.AsyncClient, modules: dict[str, str] = MINIMAL_POLICY) -> int:
    r = await admin.post("/v1/policies", json={"modules": modules})
    assert r.status_code == 201, r.text
    r = await admin.post(f"/v1/policies/{r.json()['version']}/approve", json={"comment": "reviewed"})
    assert r.status_code == 200, r.text
    return int(r.json()["projection_version"])


async def test_bundle_is_200_with_etag_then_304_with_if_none_match(cp_config: Config) -> None:
    async with asgi_controlplane(cp_config, opa=True) as (_, opa, _):
        first = await opa.get("/v1/opa/bundles/gateway", headers={"Prefer": "modes=snapshot,delta"})
        assert first.status_code == 200
        assert first.headers["content-type"] == BUNDLE_TYPE
        assert first.headers["etag"] == '"p1"'
        assert first.content[:2] == b"\x1f\x8b"
        again = await opa.get("/v1/opa/bundles/gateway", headers={"If-None-Match": first.headers["etag"]})
        assert again.status_code == 304 and again.headers["content-type"] == BUNDLE_TYPE
        assert again.headers["etag"] == '"p1"'
        stale = await opa.get("/v1/opa/bundles/gateway", headers={"If-None-Match": '"p999"'})
        assert stale.status_code == 200
        unknown = await opa.get("/v1/opa/bundles/other")
        assert unknown.status_code == 404 and unknown.json()["error"] == "not_found"


async def test_long_poll_times_out_with_304(cp_config: Config) -> None:
    async with asgi_controlplane(cp_config, opa=True) as (_, opa, _):
        with anyio.fail_after(5):
            r = await opa.get(
                "/v1/opa/bundles/gateway", headers={"If-None-Match": '"p1"', "Prefer": "modes=snapshot,delta;wait=1"}
            )
    assert r.status_code == 304 and r.headers["content-type"] == BUNDLE_TYPE


async def _upload_policy(admin: httpx.AsyncClient) -> int:
    r = await admin.post("/v1/policies", json={"modules": MINIMAL_POLICY})
    assert r.status_code == 201, r.text
    return int(r.json()["version"])


async def _parked(state: dict[str, Any]) -> None:
    """Return once a long poll is parked on the notifier (so an approval must wake it)."""
    with anyio.fail_after(5):
        while state["cp_notifier"].waiting < 1:
            await anyio.sleep(0.01)


async def test_long_poll_wakes_when_this_process_compiles(cp_config: Config) -> None:
    async with asgi_controlplane(cp_config, opa=True) as (admin, opa, state):
        policy = await _upload_policy(admin)  # opa check runs here, outside the timed window
        result: dict[str, httpx.Response] = {}

        async def long_poll() -> None:
            result["r"] = await opa.get(
                "/v1/opa/bundles/gateway", headers={"If-None-Match": '"p1"', "Prefer": "modes=snapshot;wait=30"}
            )

        async with anyio.create_task_group() as tg:
            tg.start_soon(long_poll)
            await _parked(state)
            # Bound below the database re-check: only the in-process publish can wake it in time.
            with anyio.fail_after(RECHECK_INTERVAL - 1):
                r = await admin.post(f"/v1/policies/{policy}/approve", json={"comment": "reviewed"})
                while "r" not in result:
                    await anyio.sleep(0.01)
    assert result["r"].status_code == 200 and result["r"].headers["etag"] == f'"p{r.json()["projection_version"]}"'


async def test_long_poll_wakes_on_notify_from_another_control_plane_process(cp_config: Config) -> None:
    async with (
        asgi_controlplane(cp_config) as (_, internal_a, state_a),
        asgi_controlplane(cp_config) as (admin_b, _, _),
    ):
        policy = await _upload_policy(admin_b)
        result: dict[str, httpx.Response] = {}

        async def long_poll() -> None:
            result["r"] = await internal_a.get(
                "/v1/dataplane/projection",
                params={"dataplane_id": "dp-a", "active_version": 1},
                headers={"If-None-Match": '"p1"', "Prefer": "wait=30"},
            )

        async with anyio.create_task_group() as tg:
            tg.start_soon(long_poll)
            await _parked(state_a)
            # Bound below the database re-check: only NOTIFY can wake process A in time.
            with anyio.fail_after(RECHECK_INTERVAL - 1):
                r = await admin_b.post(f"/v1/policies/{policy}/approve", json={"comment": "reviewed"})
                while "r" not in result:
                    await anyio.sleep(0.01)
    assert result["r"].status_code == 200
    assert result["r"].json()["version"] == r.json()["projection_version"]
    assert result["r"].json()["policy_version"] == policy


async def test_dataplane_polls_are_recorded_in_the_projection_view(cp_config: Config) -> None:
    async with asgi_controlplane(cp_config) as (admin, internal, _):
        r = await internal.get("/v1/dataplane/projection", params={"dataplane_id": "dp1", "active_version": 0})
        assert r.status_code == 200 and r.json()["servers"] == [] and r.json()["revision"] == "p1-pv0"
        view = (await admin.get("/v1/projection")).json()
        assert view["data_planes"][0]["id"] == "dp1" and view["active_version"] is None
        r = await internal.get(
            "/v1/dataplane/projection",
            params={"dataplane_id": "dp1", "active_version": 1},
            headers={"If-None-Match": r.headers["etag"]},
        )
        assert r.status_code == 304
        view = (await admin.get("/v1/projection")).json()
        assert view["desired_version"] == view["active_version"] == 1 and view["policy_version"] is None
        await internal.get(
            "/v1/dataplane/projection", params={"dataplane_id": "dp1", "active_version": 1, "error": "bundle_invalid"}
        )
        dp = (await admin.get("/v1/projection")).json()["data_planes"][0]
        assert dp["state"] == "error" and dp["error_category"] == "bundle_invalid"
        assert (await internal.get("/v1/dataplane/projection")).status_code == 400


async def test_status_reports_map_revisions_to_versions(cp_config: Config) -> None:
    async with asgi_controlplane(cp_config, opa=True) as (admin, opa, _):
        report = {
            "labels": {"id": "opa-1", "version": "1.22.2"},
            "bundles": {
                "gateway": {
                    "name": "gateway",
                    "active_revision": "p1-pv0",
                    "last_successful_activation": "2026-01-01T00:00:00.123456789Z",
                }
            },
            "plugins": {"bundle": {"state": "OK"}},
        }
        assert (await opa.post("/v1/opa/status", json=report)).status_code == 204
        view = (await admin.get("/v1/projection")).json()
        assert view["opa"][0]["active_version"] == 1 and view["opa"][0]["state"] == "ok"
        assert view["opa"][0]["last_successful_activation"].startswith("2026-01-01T00:00:00.123456")
        assert view["active_version"] == 1
        report["bundles"]["gateway"]["code"] = "bundle_error"
        report["bundles"]["gateway"]["errors"] = [{"code": "rego_parse_error", "message": "x"}]
        await opa.post("/v1/opa/status", json=report)
        assert (await admin.get("/v1/projection")).json()["opa"][0]["state"] == "error"
        assert (await opa.post("/v1/opa/status", json={"labels": {}})).status_code == 400


async def test_decision_logs_accept_gzip_arrays_idempotently_and_reject_garbage(cp_config: Config) -> None:
    async with asgi_controlplane(cp_config, opa=True) as (_, opa, state):
        events = [
            {
                "decision_id": "d1",
                "path": "gateway_runtime/main/call",
                "labels": {"id": "opa-1"},
                "bundles": {"gateway": {"revision": "p1-pv0"}},
                "timestamp": "2026-01-01T00:00:00Z",
                "input": {"tool": "echo"},
                "result": {"revision": "p1-pv0"},
                "erased": ["/input/arguments"],
            }
        ]
        body = gzip.compress(orjson.dumps(events))
        headers = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
        for _ in range(2):
            assert (await opa.post("/v1/opa/logs", content=body, headers=headers)).status_code == 204
        assert await state["cp_pool"].fetchval("select count(*) from opa_decision_logs") == 1
        bad = await opa.post("/v1/opa/logs", content=b"not gzip", headers=headers)
        assert bad.status_code == 400
        assert (await opa.post("/v1/opa/logs", json={"not": "a list"})).status_code == 400


@pytest.mark.integration
async def test_the_gateways_opa_sidecar_activates_bundles_reports_status_and_ships_decision_logs(
    cp_config: Config, tmp_path: Path
) -> None:
    """The real sidecar (:class:`OpaSidecar`: its configuration, its token file) against a
    served control plane: everything OPA does there works with the OPA token alone."""
    async with served_controlplane(cp_config) as cp_url, anyio.create_task_group() as tg:
        opa_port = free_port()
        sidecar = OpaSidecar(
            dataclasses.replace(
                cp_config,
                control_plane=dataclasses.replace(cp_config.control_plane, url=cp_url),
                opa=dataclasses.replace(
                    cp_config.opa,
                    addr=f"127.0.0.1:{opa_port}",
                    url=f"http://127.0.0.1:{opa_port}",
                    work_dir=str(tmp_path / "opa"),
                    long_poll_timeout=10,
                ),
            )
        )
        tg.start_soon(sidecar.run)
        admin = httpx.AsyncClient(base_url=cp_url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, trust_env=False)
        internal = httpx.AsyncClient(
            base_url=cp_url, headers={"Authorization": f"Bearer {INTERNAL_TOKEN}"}, trust_env=False
        )
        async with admin, internal:

            async def opa_at(version: int) -> dict | None:
                view = (await admin.get("/v1/projection")).json()
                live = [o for o in view["opa"] if o["active_version"] == version and o["state"] == "ok"]
                return view if live else None

            view = await poll(lambda: opa_at(1))
            assert view["active_version"] == 1 and view["opa"][0]["active_revision"] == "p1-pv0"
            assert (tmp_path / "opa" / OPA_TOKEN_FILE).read_text() == OPA_TOKEN

            # A new projection reaches OPA through the parked long poll (bounded well below min_delay+timeout).
            version = await _approve_policy(admin)
            view = await poll(lambda: opa_at(version), timeout=8)
            assert view["desired_version"] == view["active_version"] == version
            assert view["policy_version"] is not None

            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{opa_port}", trust_env=False) as opa:
                r = await opa.post(
                    "/v1/data/gateway_runtime/main/call",
                    json={"input": {"tool": "echo", "arguments": {"text": "secret-canary"}}},
                )
            answer = r.json()
            assert answer["result"]["decision"]["allow"] is True
            assert answer["result"]["revision"] == f"p{version}-pv{view['policy_version']}"
            decision_id = answer["decision_id"]

            event = {
                "decision_id": decision_id,
                "timestamp": datetime.now(UTC).isoformat(),
                "tenant": "tenant_local",
                "environment": "prod",
                "dataplane_id": "dp1",
                "subject": "alice",
                "client_id": "cli",
                "action": "tools/call",
                "server": "demo",
                "tool": "echo",
                "allowed": True,
                "reasons": [],
                "policy_revision": answer["result"]["revision"],
                "projection_version": version,
                "latency_ms": 1.5,
                "status": "ok",
                "error_category": None,
                "arguments_sha256": "a" * 64,
                "result_sha256": None,
                "session_id": None,
                "protocol_version": "2025-11-25",
            }
            assert (await internal.post("/v1/audit/events", json=[event])).status_code == 202

            async def joined() -> dict | None:
                item = (await admin.get(f"/v1/audit/decisions/{decision_id}")).json()
                return item if item["opa_logged"] else None

            item = await poll(joined)
            log = item["opa_decision_log"]
            assert log["path"].strip("/") == "gateway_runtime/main/call"
            assert log["revision"] == answer["result"]["revision"]
            assert "arguments" not in log["input"] and "/input/arguments" in log["erased"]
            listed = (await admin.get("/v1/audit/decisions", params={"tool": "echo"})).json()["items"]
            assert [i["decision_id"] for i in listed] == [decision_id] and listed[0]["opa_logged"] is True
        tg.cancel_scope.cancel()  # stops the sidecar (it kills OPA)
