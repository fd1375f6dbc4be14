"""The control plane's own failover (issue 11, "Scale out"): two control-plane processes on one
database behind a load balancer. Both serve the same signed bundle, an approval on one wakes
long-polls on the other at once (LISTEN/NOTIFY), and killing one (SIGKILL) interrupts nothing:
calls keep succeeding, the next projection comes from the survivor, no audit event is lost.

One cluster per module (2 control planes, 2 data planes pointed at the control-plane load
balancer, the sample upstream), all real processes on loopback.
"""

from __future__ import annotations

import io
import json
import secrets
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import httpx
import pytest

from gateway.devtools.stack import sample_policy_modules
from tests.support.cluster import Cluster, ControlPlane, poll_until

pytestmark = [pytest.mark.integration, pytest.mark.db]

WAIT = 30
"""Seconds of ``Prefer: wait`` on the long-poll (the control plane's default cap)."""
RECHECK = 5
"""A parked long-poll re-reads the database at least this often (``_longpoll.RECHECK_INTERVAL``),
so only a wake well below it shows that NOTIFY, not the re-check, woke it."""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, pg_admin_url: str, opa_bin: Path) -> Iterator[Cluster]:
    run_dir = tmp_path_factory.mktemp("scale-cp")
    with Cluster.start(run_dir, pg_admin_url, opa_bin, control_planes=2, data_planes=2) as c:
        assert c.control_lb is not None
        c.approve_sample()
        yield c


def _bundle(c: Cluster, cp: ControlPlane) -> tuple[str, str, bytes]:
    """GET the bundle as OPA does (``services.control_plane`` + ``bundles/gateway`` with the OPA
    token): ``(ETag, .manifest revision, body)``."""
    resp = httpx.get(f"{cp.url}/v1/opa/bundles/gateway", headers={"authorization": f"Bearer {c.opa_token}"}, timeout=10)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("application/vnd.openpolicyagent.bundles")
    with tarfile.open(fileobj=io.BytesIO(resp.content), mode="r:gz") as tar:
        member = tar.extractfile("/.manifest") if "/.manifest" in tar.getnames() else tar.extractfile(".manifest")
        assert member is not None
        manifest = json.loads(member.read())
    return resp.headers["etag"], manifest["revision"], resp.content


def test_both_control_planes_serve_the_same_bundle(cluster: Cluster) -> None:
    c = cluster
    version = c.desired_version()
    (etag_a, rev_a, body_a), (etag_b, rev_b, body_b) = (_bundle(c, cp) for cp in c.control_planes)
    assert etag_a == etag_b == f'"p{version}"'
    assert rev_a == rev_b and rev_a.startswith(f"p{version}-pv")
    assert body_a == body_b  # one shared signing key (RSA: deterministic), one database
    # And the OPA of each data plane, fed through the balancer by either, activated it.
    opa = {o["dataplane_id"]: o["active_revision"] for o in c.projection()["opa"] if o["live"]}
    assert opa == {"dp-1": rev_a, "dp-2": rev_a}


def _last_seen(c: Cluster, dataplane_id: str, via: ControlPlane) -> datetime | None:
    rows = [d for d in c.projection(via=via)["data_planes"] if d["id"] == dataplane_id]
    return datetime.fromisoformat(rows[0]["last_seen"]) if rows and rows[0]["last_seen"] else None


def test_an_approval_on_one_control_plane_wakes_long_polls_on_the_other(cluster: Cluster) -> None:
    c = cluster
    a, b = c.control_planes
    version = c.desired_version()
    # Uploading compiles nothing; the approval (on A) compiles projection version+1 and NOTIFYs.
    pv = int(c.admin("POST", "/v1/policies", {"modules": sample_policy_modules()}, via=a)["version"])
    outcome: dict[str, Any] = {}

    def long_poll() -> None:  # B's projection feed, as data plane dp-1 running `version`
        started = time.monotonic()
        outcome["resp"] = httpx.get(
            f"{b.url}/v1/dataplane/projection",
            params={"dataplane_id": "dp-1", "active_version": str(version)},
            headers={
                "authorization": f"Bearer {c.internal_token}",
                "if-none-match": f'"p{version}"',
                "prefer": f"wait={WAIT}",
            },
            timeout=WAIT + 15,
        )
        outcome["returned"], outcome["took"] = time.monotonic(), time.monotonic() - started

    sent = datetime.now(UTC)
    poller = threading.Thread(target=long_poll, daemon=True)
    poller.start()
    # B records the poller before it parks; from then on it waits for a newer version.
    poll_until("B received the long-poll", lambda: (_last_seen(c, "dp-1", b) or sent) > sent, timeout=10)
    assert poller.is_alive() and "resp" not in outcome, "the long-poll returned before anything changed"

    c.admin("POST", f"/v1/policies/{pv}/approve", {"comment": "reviewed"}, via=a)
    approved = time.monotonic()
    poller.join(WAIT + 20)
    resp = outcome["resp"]
    assert resp.status_code == 200, resp.text
    assert resp.headers["etag"] == f'"p{version + 1}"'
    woke_after = outcome["returned"] - approved
    # Well before the wait ends, and before B's periodic database re-check could have seen it.
    assert woke_after < min(RECHECK / 2, WAIT / 10), f"B's long-poll answered {woke_after:.2f}s after the approval"
    assert outcome["took"] < WAIT / 2
    c.wait_converged(version + 1)


async def _until(what: str, probe: Callable[[], bool], timeout: float = 30) -> None:
    with anyio.fail_after(timeout):
        while not probe():
            await anyio.sleep(0.02)


@pytest.mark.anyio
async def test_killing_a_control_plane_interrupts_nothing(cluster: Cluster) -> None:
    c = cluster
    assert c.control_lb is not None
    a, b = c.control_planes
    subject = f"failover-{secrets.token_hex(4)}"
    token = c.mint(subject, ["viewer"])
    done: list[int] = []
    failures: list[tuple[int, str]] = []
    stop = anyio.Event()

    async def calls() -> None:  # one stateless agent calling in a loop through the data-plane LB
        async with c.client(token) as mcp:
            i = 0
            while not stop.is_set():
                try:
                    result = await mcp.call_tool("demo__echo", {"text": f"{subject} {i}"})
                    if result.is_error:
                        failures.append((i, str(result.content)))
                    else:
                        done.append(i)
                except Exception as exc:  # noqa: BLE001 - every failure is the finding
                    failures.append((i, repr(exc)))
                i += 1

    # Make A hold every long-poll when it dies: with the balancer pinned to A, a new projection
    # wakes the data planes' and OPAs' long-polls, and they re-poll A (a data plane reports the
    # version it activated in that very re-poll, so "converged" means it is parked on A).
    c.control_lb.pin(a.name)
    c.approve_policy(via=a)
    version = c.desired_version()
    c.wait_converged(version)
    c.control_lb.round_robin()

    async with anyio.create_task_group() as tg:
        tg.start_soon(calls)
        await _until("calls before the kill", lambda: len(done) >= 10)
        before_kill = c.control_lb.mark()
        a.kill()
        at_kill, lb_mark = len(done), c.control_lb.mark()
        await _until("calls after the kill", lambda: len(done) >= at_kill + 20)
        # The next projection, approved on and served by the survivor, reaches every data plane
        # and OPA (their long-polls to the dead one were cut; the balancer sends them to B).
        new = await anyio.to_thread.run_sync(lambda: (c.approve_policy(via=b), c.desired_version())[1])
        assert new == version + 1
        await anyio.to_thread.run_sync(lambda: c.wait_converged(new, timeout=30))
        after = len(done)
        await _until("calls on the new projection", lambda: len(done) >= after + 10)
        stop.set()

    assert failures == [], f"{len(failures)} of {len(done) + len(failures)} calls failed: {failures[:5]}"
    # The kill cut requests in flight on A (its parked long-polls); everything after went to B.
    cut = [s for s in c.control_lb.served[before_kill:] if s.backend == a.name and s.status == 502]
    assert cut, f"A held no request when it was killed: {c.control_lb.served[before_kill:][:20]}"
    served_after = [s for s in c.control_lb.served[lb_mark:] if s.status != 502]
    assert served_after and {s.backend for s in served_after} == {b.name}

    # Every call's audit event arrived (each once, by decision id), including those shipped
    # while A died; from both data planes; and OPA's own decision log for each.
    def audited() -> list[dict[str, Any]] | None:
        items = c.audit_decisions(subject=subject, action="tools/call")
        return items if len(items) >= len(done) and all(i["opa_logged"] for i in items) else None

    try:
        items = await anyio.to_thread.run_sync(lambda: poll_until("audit", audited, timeout=30))
    except TimeoutError:
        items = c.audit_decisions(subject=subject, action="tools/call")
        missing_opa = sum(1 for i in items if not i["opa_logged"])
        pytest.fail(f"{len(done)} calls, {len(items)} audit records, {missing_opa} without OPA's decision log")
    assert len({i["decision_id"] for i in items}) == len(items) == len(done)
    assert {i["dataplane_id"] for i in items} == {"dp-1", "dp-2"}
    assert all(i["allowed"] and i["status"] == "ok" for i in items)
