"""Two data planes behind one address (issue 11, "Scale out"): both converge on every new
projection, and stateless governed calls through a round-robin load balancer are served and
audited by both.

One cluster per module (1 control plane, 2 data planes each with its OPA sidecar, the sample
upstream, a load balancer built on aiohttp), all real processes on loopback.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.cluster import Cluster, poll_until

pytestmark = [pytest.mark.integration, pytest.mark.db]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, pg_admin_url: str, opa_bin: Path) -> Iterator[Cluster]:
    with Cluster.start(tmp_path_factory.mktemp("scale-dp"), pg_admin_url, opa_bin, data_planes=2) as c:
        c.approve_sample()
        yield c


def _assert_everyone_runs(c: Cluster, state: dict[str, Any], version: int) -> None:
    assert state["desired_version"] == state["active_version"] == version
    listed = {d["id"]: d for d in state["data_planes"]}
    assert set(listed) == {"dp-1", "dp-2"}, state["data_planes"]
    assert all(d["active_version"] == version and d["live"] and d["state"] == "ok" for d in listed.values())
    opa_by_dp = {o["dataplane_id"]: o for o in state["opa"] if o["live"]}
    assert set(opa_by_dp) == {"dp-1", "dp-2"}, state["opa"]
    revisions = {o["active_revision"] for o in opa_by_dp.values()}
    assert all(o["active_version"] == version for o in opa_by_dp.values())
    assert len(revisions) == 1 and next(iter(revisions)).startswith(f"p{version}-")
    assert {dp.readyz()["projection_version"] for dp in c.dataplanes} == {version}


def test_both_data_planes_and_their_opas_converge_on_each_new_projection(cluster: Cluster) -> None:
    c = cluster
    before = c.desired_version()
    _assert_everyone_runs(c, c.projection(), before)

    # 1. A new policy version.
    c.approve_policy()
    policy_projection = c.desired_version()
    assert policy_projection > before
    _assert_everyone_runs(c, c.wait_converged(policy_projection), policy_projection)

    # 2. A new server (the same upstream under another name).
    c.register_and_approve_server("demo2", c.upstream_url)
    server_projection = c.desired_version()
    assert server_projection > policy_projection
    _assert_everyone_runs(c, c.wait_converged(server_projection), server_projection)


@pytest.mark.anyio
async def test_stateless_calls_through_the_balancer_are_served_and_audited_by_both(cluster: Cluster) -> None:
    c = cluster
    subject = f"alice-{secrets.token_hex(4)}"  # this test's own audit records
    token = c.mint(subject, ["viewer"])
    mark = c.lb.mark()
    calls = 8
    async with c.client(token) as mcp:  # MCP 2026-07-28: no session, every request stands alone
        for i in range(calls):
            result = await mcp.call_tool("demo__echo", {"text": f"scale {i}"})
            assert not result.is_error, result
            assert f"scale {i}" in result.content[0].text  # type: ignore[union-attr]

    served = c.lb.counts(mark, rpc="tools/call")
    assert sum(served.values()) == calls
    # Round-robin per request, not sticky: both data planes governed calls.
    assert served["dp-1"] >= calls // 2 - 1 and served["dp-2"] >= calls // 2 - 1, served
    assert all(s.status == 200 for s in c.lb.served[mark:]), c.lb.served[mark:]

    def audited() -> list[dict[str, Any]] | None:
        items = c.audit_decisions(subject=subject, action="tools/call")
        return items if len(items) >= calls else None

    items = poll_until(f"{calls} audit records of {subject}", audited, timeout=20)
    assert len(items) == calls and len({i["decision_id"] for i in items}) == calls
    assert all(i["allowed"] and i["status"] == "ok" for i in items)
    by_dp = {dp: sum(1 for i in items if i["dataplane_id"] == dp) for dp in ("dp-1", "dp-2")}
    # Each data plane audited exactly the calls the balancer sent it.
    assert by_dp == {"dp-1": served["dp-1"], "dp-2": served["dp-2"]}, (by_dp, served)


@pytest.mark.anyio
async def test_a_killed_data_plane_is_skipped_and_its_replacement_rejoins(cluster: Cluster) -> None:
    c = cluster
    dp2 = c.dataplanes[1]
    token = c.mint(f"bob-{secrets.token_hex(4)}", ["viewer"])
    dp2.kill()
    mark = c.lb.mark()
    async with c.client(token) as mcp:
        for i in range(4):  # refused by dp-2: the balancer sends each to dp-1 instead
            assert not (await mcp.call_tool("demo__echo", {"text": f"alone {i}"})).is_error
    assert set(c.lb.counts(mark, rpc="tools/call")) == {"dp-1"}

    dp2.start()  # same id, port and run dir; it fetches the current projection again
    c.wait_converged()
    mark = c.lb.mark()
    async with c.client(token) as mcp:
        for i in range(4):
            assert not (await mcp.call_tool("demo__echo", {"text": f"again {i}"})).is_error
    assert set(c.lb.counts(mark, rpc="tools/call")) == {"dp-1", "dp-2"}
