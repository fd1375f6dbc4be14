"""Tool-list drift ("rug pull") end to end: a real ``gateway serve`` (drift check every 0.5 s),
real OPA and PostgreSQL, and a real MCP upstream (``tests/support/rugpull_server.py``) that
swaps a pinned tool's description and schema mid-run."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from mcp.shared.exceptions import MCPError

from gateway.devtools.stack import LocalStack, free_port, sample_policy_modules
from tests.e2e.helpers import client
from tests.support import pg

pytestmark = [pytest.mark.integration, pytest.mark.db, pytest.mark.anyio, pytest.mark.timeout(120)]

DRIFT_INTERVAL = 0.5
"""Seconds between the data plane's re-lists (``GATEWAY_DRIFT_INTERVAL``)."""
DETECT_WITHIN = 10 * DRIFT_INTERVAL + 5
"""Bound on how long a drift (or its end) may take to show: a few intervals plus the upstream timeout slack."""


@pytest.fixture(scope="module")
def rugpull_url() -> str:
    """Where the rug-pull upstream listens (``/mcp``, and its hooks)."""
    return f"http://127.0.0.1:{free_port()}"


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, pg_admin_url: str, opa_bin: Path, rugpull_url: str
) -> Iterator[LocalStack]:
    """``gateway serve`` + OPA + the rug-pull upstream approved as ``rp`` + the sample policy."""
    run_dir = tmp_path_factory.mktemp("rugpull")
    port = rugpull_url.rsplit(":", 1)[1]
    with (
        pg.throwaway_database(pg_admin_url) as database_url,
        LocalStack.create(run_dir, database_url=database_url, opa_bin=str(opa_bin)) as s,
        open(run_dir / "rugpull.log", "ab") as log,
    ):
        s.extra_env["GATEWAY_DRIFT_INTERVAL"] = str(DRIFT_INTERVAL)
        upstream = subprocess.Popen(
            [sys.executable, "-m", "tests.support.rugpull_server", "--port", port],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=Path(__file__).resolve().parents[2],
        )
        try:
            _wait_health(upstream, rugpull_url)
            s.start_gateway()
            s.register_and_approve_server("rp", f"{rugpull_url}/mcp", "rug-pull upstream")
            s.upload_and_approve_policy(sample_policy_modules())
            s.wait_projection_active()
            yield s
        finally:
            upstream.terminate()
            upstream.wait(timeout=10)


def _wait_health(proc: subprocess.Popen[bytes], base: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the rug-pull upstream exited"
        try:
            if httpx.get(f"{base}/_health").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise AssertionError("the rug-pull upstream did not start")


def _hook(base: str, path: str) -> Any:
    if path == "/_calls":
        return httpx.get(f"{base}{path}").json()
    resp = httpx.post(f"{base}{path}")
    resp.raise_for_status()
    return resp.json()


async def _listed(stack: LocalStack, sub: str) -> list[str]:
    async with client(stack, stack.idp.mint(sub, ["admin"], stack.audience)) as c:
        return [t.name for t in (await c.list_tools()).tools]


async def _wait_listed(stack: LocalStack, sub: str, expected: list[str]) -> None:
    deadline = time.monotonic() + DETECT_WITHIN
    listed = await _listed(stack, sub)
    while listed != expected and time.monotonic() < deadline:
        await anyio.sleep(0.1)
        listed = await _listed(stack, sub)
    assert listed == expected


def _audited(stack: LocalStack, subject: str, tool: str, status: str) -> dict[str, Any]:
    """The newest audit event of ``subject`` calling ``rp``'s ``tool`` with ``status`` (bounded wait)."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        items = stack.admin("GET", f"/v1/audit/decisions?subject={subject}&server=rp&tool={tool}")["items"]
        items = [i for i in items if i["action"] == "tools/call" and i["status"] == status]
        if items:
            return items[0]  # type: ignore[no-any-return]
        time.sleep(0.1)
    raise AssertionError(f"no audit event for {subject} {tool}")


async def test_undeclared_arguments_are_refused_by_the_pinned_schema(stack: LocalStack, rugpull_url: str) -> None:
    """The argument rule: ``lookup``'s pinned schema names only ``query`` and says nothing
    about ``additionalProperties``, so an extra key is refused before policy and upstream."""
    token = stack.idp.mint("arg-rule", ["admin"], stack.audience)
    async with client(stack, token) as c:
        refused = await c.call_tool("rp__lookup", {"query": "q", "exfil": "k"})
        ok = await c.call_tool("rp__lookup", {"query": "q2"})
    assert refused.is_error and "exfil" in refused.content[0].text  # type: ignore[union-attr]
    assert not ok.is_error
    assert {"tool": "lookup", "arguments": {"query": "q", "exfil": "k"}} not in _hook(rugpull_url, "/_calls")
    item = _audited(stack, "arg-rule", "lookup", status="rejected")
    assert (item["error_category"], item["allowed"]) == ("invalid_arguments", False)


async def test_a_rug_pulled_tool_is_hidden_and_refused_until_re_approved(stack: LocalStack, rugpull_url: str) -> None:
    await _wait_listed(stack, "before", ["rp__lookup", "rp__stable"])
    _hook(rugpull_url, "/_rugpull")
    try:
        # within a few drift intervals: lookup is gone, stable stays, added_later never shows
        await _wait_listed(stack, "during", ["rp__stable"])
        token = stack.idp.mint("drifted-caller", ["admin"], stack.audience)
        async with client(stack, token) as c:
            with pytest.raises(MCPError) as refused:
                await c.call_tool("rp__lookup", {"query": "q"})
            assert not (await c.call_tool("rp__stable", {"text": "t"})).is_error
        assert refused.value.error.code == -32602
        assert refused.value.error.data == {"category": "tool_drifted"}
        item = _audited(stack, "drifted-caller", "lookup", status="rejected")
        assert (item["status"], item["error_category"], item["allowed"]) == ("rejected", "tool_drifted", False)
        assert [c["arguments"] for c in _hook(rugpull_url, "/_calls") if c["arguments"].get("query") == "q"] == []

        # the dry run and the re-approval show what changed
        drift = stack.admin("GET", "/v1/servers/rp/drift")["diff"]
        assert drift == {
            "added": ["added_later"],
            "removed": [],
            "changed": [{"name": "lookup", "fields": ["description", "inputSchema", "outputSchema"]}],
        }
        approved = stack.admin("POST", "/v1/servers/rp/approve", {"comment": "reviewed"})
        assert approved["diff"] == drift
        stack.wait_projection_active()
        await _wait_listed(stack, "after", ["rp__added_later", "rp__lookup", "rp__stable"])
        token = stack.idp.mint("re-approved", ["admin"], stack.audience)
        async with client(stack, token) as c:
            result = await c.call_tool("rp__lookup", {"query": "again", "exfil": ""})
        assert not result.is_error  # the re-approved schema declares exfil
    finally:
        _hook(rugpull_url, "/_restore")
