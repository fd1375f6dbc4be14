"""Handshake-era sessions survive replica changes (issue 11, "Sessions survive replica changes").

Two data planes behind a round-robin balancer that is *not* sticky: consecutive requests of
one MCP 2025-11-25 session alternate between them. The session id is sealed
(gateway.dataplane.session_seal), so either data plane resumes the other's session; ``DELETE``
reaches the other data plane through the control plane's session events feed; killing the
data plane a session started on (SIGKILL) interrupts nothing but its requests in progress.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.dataplane.session_seal import session_ref
from tests.support.cluster import Cluster, poll_until

pytestmark = [pytest.mark.integration, pytest.mark.db]

REVISION = "2025-11-25"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, pg_admin_url: str, opa_bin: Path) -> Iterator[Cluster]:
    with Cluster.start(tmp_path_factory.mktemp("scale-sessions"), pg_admin_url, opa_bin, data_planes=2) as c:
        c.approve_sample()
        yield c


class Session:
    """A raw 2025-11-25 client through the balancer (exact control over every request)."""

    def __init__(self, c: Cluster, sub: str) -> None:
        self.c = c
        self.sub = sub
        self.http = httpx.Client(
            base_url=c.lb_url,
            headers={
                "authorization": f"Bearer {c.mint(sub, ['viewer'])}",
                "accept": "application/json, text/event-stream",
            },
            timeout=30,
        )
        self.id = ""
        self._n = 0

    def post(self, method: str, params: dict[str, Any] | None = None, *, notify: bool = False) -> httpx.Response:
        body: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "params": params or {}}
        if not notify:
            self._n += 1
            body["id"] = self._n
        headers = {"mcp-protocol-version": REVISION, "accept": "application/json"}
        if self.id:
            headers["mcp-session-id"] = self.id
        return self.http.post("/mcp", json=body, headers=headers)

    def initialize(self) -> None:
        r = self.post(
            "initialize",
            {"protocolVersion": REVISION, "capabilities": {"roots": {}}, "clientInfo": {"name": "t", "version": "1"}},
        )
        assert r.status_code == 200, r.text
        self.id = r.headers["mcp-session-id"]
        assert self.post("notifications/initialized", notify=True).status_code == 202

    def echo(self, text: str) -> httpx.Response:
        return self.post("tools/call", {"name": "demo__echo", "arguments": {"text": text}})

    def delete(self) -> httpx.Response:
        return self.http.delete("/mcp", headers={"mcp-session-id": self.id, "mcp-protocol-version": REVISION})


def _ok(r: httpx.Response, text: str) -> None:
    assert r.status_code == 200, r.text
    body = r.json()
    assert "result" in body and not body["result"].get("isError"), body
    assert text in body["result"]["content"][0]["text"]


def test_requests_of_one_session_alternate_between_data_planes(cluster: Cluster) -> None:
    c = cluster
    s = Session(c, f"alt-{secrets.token_hex(4)}")
    c.lb.route_next("dp-1")
    s.initialize()
    mark = c.lb.mark()
    for i in range(6):
        _ok(s.echo(f"alt {i}"), f"alt {i}")
    served = [x.backend for x in c.lb.served[mark:] if x.rpc == "tools/call"]
    assert len(served) == 6 and set(served) == {"dp-1", "dp-2"}, served
    assert all(a != b for a, b in zip(served, served[1:], strict=False)), served  # strictly alternating

    def audited() -> list[dict[str, Any]] | None:
        items = c.audit_decisions(subject=s.sub, action="tools/call")
        return items if len(items) >= 6 else None

    items = poll_until("6 audit records", audited, timeout=20)
    # One session in the trail, by its reference (never the id), whichever data plane answered.
    assert {i["session_id"] for i in items} == {session_ref(s.id)}
    assert {i["dataplane_id"] for i in items} == {"dp-1", "dp-2"}


def test_another_subject_presenting_the_id_gets_404_on_every_data_plane(cluster: Cluster) -> None:
    c = cluster
    s = Session(c, f"owner-{secrets.token_hex(4)}")
    s.initialize()
    thief = Session(c, f"thief-{secrets.token_hex(4)}")
    thief.id = s.id
    c.lb.route_next("dp-1", "dp-2")
    assert [thief.echo("x").status_code for _ in range(2)] == [404, 404]
    c.lb.route_next("dp-1", "dp-2")
    assert [s.echo("still mine").status_code for _ in range(2)] == [200, 200]


def test_a_delete_on_one_data_plane_ends_the_session_on_the_other(cluster: Cluster) -> None:
    c = cluster
    s = Session(c, f"del-{secrets.token_hex(4)}")
    c.lb.route_next("dp-1")
    s.initialize()
    c.lb.route_next("dp-2")
    _ok(s.echo("resumed"), "resumed")  # dp-2 now holds the session too

    c.lb.route_next("dp-2")
    assert s.delete().status_code == 204
    c.lb.route_next("dp-2")
    assert s.echo("after").status_code == 404  # where it was deleted: at once

    started = time.monotonic()

    def ended_on_dp1() -> bool:
        c.lb.route_next("dp-1")
        return s.echo("after").status_code == 404

    poll_until("dp-1 to learn of the DELETE", ended_on_dp1, timeout=10, interval=0.05)
    # Within the feed's interval (1 s) plus a round trip or two; bounded well below a client's patience.
    assert time.monotonic() - started < 5


def test_a_session_survives_the_data_plane_it_started_on_being_killed(cluster: Cluster) -> None:
    c = cluster
    s = Session(c, f"kill-{secrets.token_hex(4)}")
    dp1 = next(dp for dp in c.dataplanes if dp.id == "dp-1")
    c.lb.route_next("dp-1")
    s.initialize()
    for i in range(4):  # alternating, as before the kill
        _ok(s.echo(f"before {i}"), f"before {i}")

    dp1.kill()  # SIGKILL, mid-session
    mark = c.lb.mark()
    for i in range(6):  # the balancer finds dp-1 refusing and sends everything to dp-2
        _ok(s.echo(f"after {i}"), f"after {i}")
    assert set(c.lb.counts(mark, rpc="tools/call")) == {"dp-2"}
    listed = s.post("tools/list")
    assert listed.status_code == 200 and any(t["name"] == "demo__echo" for t in listed.json()["result"]["tools"])

    dp1.start()  # back (same id): the session moves freely again
    c.wait_converged()
    mark = c.lb.mark()
    for i in range(4):
        _ok(s.echo(f"healed {i}"), f"healed {i}")
    assert set(c.lb.counts(mark, rpc="tools/call")) == {"dp-1", "dp-2"}
