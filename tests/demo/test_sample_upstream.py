"""Integration tests for deploy/demo/sample_upstream.py, run as a real subprocess on loopback."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.types import PromptReference

from tests.support.ports import free_port
from tests.support.procs import managed_process

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "deploy" / "demo" / "sample_upstream.py"
STARTUP_TIMEOUT_S = 15.0

EXPECTED_TOOLS = {
    "echo": {"readOnlyHint": True},
    "get_weather": {"readOnlyHint": True},
    "search_docs": {"readOnlyHint": True},
    "create_ticket": {"readOnlyHint": False, "destructiveHint": False},
    "delete_record": {"readOnlyHint": False, "destructiveHint": True},
}
CALLS: list[tuple[str, dict[str, Any]]] = [
    ("echo", {"text": "hello upstream"}),
    ("get_weather", {"city": "Paris"}),
    ("search_docs", {"query": "policies", "limit": 2}),
    ("create_ticket", {"title": "Printer on fire", "priority": "high"}),
    ("delete_record", {"record_id": "rec-42"}),
]


@pytest.fixture
def anyio_backend() -> str:
    # Same value as the session-wide fixture in tests/conftest.py; local so this module never depends on it.
    return "asyncio"


@pytest.fixture(scope="module")
def upstream(log_dir: Path) -> Iterator[str]:
    """Start the sample upstream as a real subprocess; yield its base URL (``http://127.0.0.1:N``)."""
    port = free_port()
    argv = [sys.executable, str(SCRIPT), "--host", "127.0.0.1", "--port", str(port), "--name", "demo-test"]
    base = f"http://127.0.0.1:{port}"
    with managed_process(
        "sample-upstream",
        argv,
        log_dir=log_dir / "test_sample_upstream",
        cwd=REPO_ROOT,
        wait_http=f"{base}/_health",
        timeout=STARTUP_TIMEOUT_S,
    ):
        yield base


def _recorded(base: str) -> dict[str, Any]:
    resp = httpx.get(f"{base}/_recorded", timeout=5.0, trust_env=False)
    assert resp.status_code == 200
    return resp.json()


def _reset(base: str) -> None:
    resp = httpx.delete(f"{base}/_recorded", timeout=5.0, trust_env=False)
    assert resp.status_code == 200
    assert _recorded(base)["calls"] == []


@pytest.mark.parametrize(("mode", "expected_version"), [("auto", "2026-07-28"), ("legacy", "2025-11-25")])
async def test_list_and_call_every_tool(upstream: str, mode: str, expected_version: str) -> None:
    _reset(upstream)
    async with Client(f"{upstream}/mcp", mode=mode) as client:
        assert client.protocol_version == expected_version
        tools = {t.name: t for t in (await client.list_tools()).tools}
        assert set(tools) == set(EXPECTED_TOOLS)
        for name, hints in EXPECTED_TOOLS.items():
            annotations = tools[name].annotations
            assert annotations is not None
            dumped = annotations.model_dump(by_alias=True, exclude_none=True)
            for key, value in hints.items():
                assert dumped[key] is value, (name, key)

        schema = tools["create_ticket"].input_schema
        assert schema["type"] == "object"
        assert sorted(schema["required"]) == ["priority", "title"]
        assert schema["properties"]["title"]["maxLength"] == 120
        assert schema["properties"]["priority"]["enum"] == ["low", "medium", "high"]
        limit = tools["search_docs"].input_schema["properties"]["limit"]
        assert (limit["type"], limit["minimum"], limit["maximum"], limit["default"]) == ("integer", 1, 20, 5)
        assert tools["search_docs"].input_schema["required"] == ["query"]
        assert tools["echo"].input_schema["required"] == ["text"]
        assert tools["delete_record"].input_schema["required"] == ["record_id"]

        results = {}
        for name, args in CALLS:
            result = await client.call_tool(name, args)
            assert not result.is_error, (name, result)
            results[name] = result

    assert results["echo"].content[0].text == "hello upstream"
    assert "Paris" in results["get_weather"].content[0].text
    assert results["create_ticket"].structured_content["ticket_id"].startswith("TCK-")
    assert results["create_ticket"].structured_content["priority"] == "high"
    assert "rec-42" in results["delete_record"].content[0].text

    recorded = _recorded(upstream)
    assert recorded["calls"] == [{"tool": name, "arguments": args} for name, args in CALLS]
    assert recorded["last_authorization"] is None


async def test_invalid_and_unknown_calls_are_recorded_too(upstream: str) -> None:
    _reset(upstream)
    async with Client(f"{upstream}/mcp") as client:
        bad = await client.call_tool("create_ticket", {"title": "x" * 121, "priority": "urgent"})
        assert bad.is_error
        unknown = await client.call_tool("no_such_tool", {"a": 1})
        assert unknown.is_error
    assert _recorded(upstream)["calls"] == [
        {"tool": "create_ticket", "arguments": {"title": "x" * 121, "priority": "urgent"}},
        {"tool": "no_such_tool", "arguments": {"a": 1}},
    ]


async def test_reset_and_authorization_header_recorded(upstream: str) -> None:
    _reset(upstream)
    assert _recorded(upstream)["authorization_header_count"] == 0
    http_client = create_mcp_http_client(headers={"Authorization": "Bearer client-token-123"})
    async with http_client:
        async with Client(streamable_http_client(f"{upstream}/mcp", http_client=http_client)) as client:
            await client.call_tool("echo", {"text": "with auth"})
    recorded = _recorded(upstream)
    assert recorded["last_authorization"] == "Bearer client-token-123"
    assert recorded["authorization_header_count"] >= 2  # server/discover + tools/call at least
    assert recorded["calls"] == [{"tool": "echo", "arguments": {"text": "with auth"}}]

    _reset(upstream)
    recorded = _recorded(upstream)
    assert recorded["last_authorization"] is None and recorded["authorization_header_count"] == 0


async def test_host_and_origin_checks(upstream: str) -> None:
    port = upstream.rsplit(":", 1)[1]
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "server/discover",
        "params": {
            "_meta": {
                "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                "io.modelcontextprotocol/clientCapabilities": {},
            }
        },
    }
    headers = {
        "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": "2026-07-28",
        "Mcp-Method": "server/discover",
    }
    async with httpx.AsyncClient(timeout=5.0, trust_env=False) as http:
        for host in (f"127.0.0.1:{port}", f"localhost:{port}"):
            ok = await http.post(f"{upstream}/mcp", json=body, headers={**headers, "Host": host})
            assert ok.status_code == 200, (host, ok.text)
            assert ok.json()["result"]["supportedVersions"] == ["2026-07-28"]
        bad_host = await http.post(f"{upstream}/mcp", json=body, headers={**headers, "Host": "evil.example.com"})
        assert bad_host.status_code == 421
        bad_origin = await http.post(
            f"{upstream}/mcp", json=body, headers={**headers, "Origin": "http://evil.example.com"}
        )
        assert bad_origin.status_code == 403


def test_refuses_non_loopback_host() -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--host", "0.0.0.0", "--port", "1"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 2
    assert "loopback" in proc.stderr


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_resources_prompts_completion_and_their_recording(upstream: str, mode: str) -> None:
    _reset(upstream)
    async with Client(f"{upstream}/mcp", mode=mode) as client:
        caps = client.server_capabilities
        assert caps.resources is not None and caps.prompts is not None and caps.completions is not None
        assert caps.logging is not None
        uris = [r.uri for r in (await client.list_resources()).resources]
        assert uris == ["demo://docs/readme", "demo://docs/policies", "demo://internal/payroll"]
        templates = (await client.list_resource_templates()).resource_templates
        assert [t.uri_template for t in templates] == ["demo://weather/{city}"]
        weather = await client.read_resource("demo://weather/Tokyo")
        assert weather.contents[0].text.startswith("Tokyo: 24 C")
        prompts = {p.name: p for p in (await client.list_prompts()).prompts}
        assert {a.name: a.required for a in prompts["incident_report"].arguments or []} == {
            "service": True,
            "severity": False,
        }
        brief = await client.get_prompt("weather_brief", {"city": "London"})
        assert brief.messages[0].content.resource.uri == "demo://weather/London"
        ref = PromptReference(type="ref/prompt", name="incident_report")
        assert (await client.complete(ref, {"name": "service", "value": "b"})).completion.values == ["billing"]
    requests = _recorded(upstream)["requests"]
    assert [r["method"] for r in requests] == [
        "resources/list",
        "resources/templates/list",
        "resources/read",
        "prompts/list",
        "prompts/get",
        "completion/complete",
    ]
    assert requests[2]["params"] == {"uri": "demo://weather/Tokyo"}
    assert _recorded(upstream)["calls"] == [], "only tools/call goes to calls"
