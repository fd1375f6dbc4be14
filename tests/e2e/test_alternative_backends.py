"""The swappable parts stay working: hypercorn as the ASGI server and httpx as the hot-path client."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from mcp.shared.exceptions import MCPError

from gateway.devtools.stack import LocalStack, sample_policy_modules
from tests.e2e.helpers import client, recorded
from tests.support import pg

pytestmark = [pytest.mark.integration, pytest.mark.db, pytest.mark.anyio]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, pg_admin_url: str, opa_bin: Path) -> Iterator[LocalStack]:
    run_dir = tmp_path_factory.mktemp("alt")
    with (
        pg.throwaway_database(pg_admin_url) as database_url,
        LocalStack.create(run_dir, database_url=database_url, opa_bin=str(opa_bin)) as s,
    ):
        s.extra_env.update({"GATEWAY_SERVER": "hypercorn", "GATEWAY_HTTP_CLIENT": "httpx"})
        s.start_upstream()
        s.start_gateway()
        s.register_and_approve_server("demo", s.upstream_url)
        s.upload_and_approve_policy(sample_policy_modules())
        s.wait_projection_active()
        yield s


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_hypercorn_and_httpx_govern_calls_like_the_defaults(stack: LocalStack, mode: str) -> None:
    token = stack.idp.mint("alice", ["viewer"], stack.audience)
    async with client(stack, token, mode=mode) as c:
        assert not (await c.call_tool("demo__echo", {"text": f"via {mode}"})).is_error
        with pytest.raises(MCPError) as denied:
            await c.call_tool("demo__create_ticket", {"title": "x", "priority": "low"})
    assert denied.value.error.data["category"] == "policy_denied"
    assert f"via {mode}" in [call["arguments"].get("text") for call in recorded(stack)["calls"]]
    assert "hypercorn" in (stack.run_dir / "gateway.log").read_text()
