"""No log line at any level carries upstream URL credentials (issue 5, defect 4).

A stack at ``GATEWAY_LOG_LEVEL=DEBUG`` with the httpx hot-path backend (whose logger writes
every request URL) registers the sample upstream under a URL carrying userinfo, a query
credential and a fragment, discovers it, calls through it, then calls it while it is down and
approves a second server on a closed port with the same credentials (the error paths). Every
canary, and the Basic credential an HTTP client derives from the userinfo, must be absent
from the gateway's log; the redacted URL must be present, so the test cannot pass because
nothing was logged.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from mcp.shared.exceptions import MCPError

from gateway.devtools.stack import LocalStack, sample_policy_modules
from tests.e2e.helpers import client
from tests.support import pg
from tests.support.ports import free_port

pytestmark = [pytest.mark.db, pytest.mark.integration, pytest.mark.anyio]

USER, PASSWORD, API_KEY, FRAGMENT = "canaryuser", "CanaryPass7f3a", "CanaryKey9b1e", "CanaryFrag5c2d"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, pg_admin_url: str, opa_bin: Path) -> Iterator[LocalStack]:
    run_dir = tmp_path_factory.mktemp("redaction")
    with (
        pg.throwaway_database(pg_admin_url) as database_url,
        LocalStack.create(run_dir, database_url=database_url, opa_bin=str(opa_bin)) as s,
    ):
        s.extra_env.update({"GATEWAY_LOG_LEVEL": "DEBUG", "GATEWAY_HTTP_CLIENT": "httpx"})
        s.start_upstream()
        s.start_gateway()
        url = f"http://{USER}:{PASSWORD}@127.0.0.1:{s.upstream_port}/mcp?apikey={API_KEY}#{FRAGMENT}"
        s.register_and_approve_server("creds", url)
        s.upload_and_approve_policy(sample_policy_modules())
        s.wait_projection_active()
        yield s


def _canaries() -> list[str]:
    basic = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    return [PASSWORD, API_KEY, FRAGMENT, basic]


async def test_no_log_line_carries_url_credentials_at_debug(stack: LocalStack) -> None:
    token = stack.idp.mint("alice", ["viewer"], stack.audience)
    async with client(stack, token) as c:
        assert not (await c.call_tool("creds__echo", {"text": "through a credentialed URL"})).is_error
        stack.stop("upstream")
        with pytest.raises(MCPError, match="Upstream server failed"):
            await c.call_tool("creds__echo", {"text": "upstream down"})
    down = f"http://{USER}:{PASSWORD}@127.0.0.1:{free_port()}/mcp?apikey={API_KEY}"
    stack.admin("POST", "/v1/servers", {"name": "down", "transport": "streamable_http", "url": down})
    resp = httpx.post(
        f"{stack.control_url}/v1/servers/down/approve",
        json={"comment": "reviewed"},
        headers=stack.admin_headers,
        timeout=30,
    )
    assert resp.status_code == 502

    log = (stack.run_dir / "gateway.log").read_text()
    leaked = [canary for canary in _canaries() if canary in log]
    assert leaked == [], f"credentials in the gateway log: {leaked}"
    # The URL was logged (the hot-path client's request lines, the discovery failure), only redacted.
    assert f"http://***@127.0.0.1:{stack.upstream_port}/mcp?apikey=***" in log
    assert "unreachable during discovery" in log
    assert " DEBUG " in log
