"""`make demo`: an agent's MCP tool calls governed by OPA through both planes.

Starts PostgreSQL-backed ``gateway serve`` (control plane 8080, data plane 8081,
OPA sidecar supervised by the gateway) and a sample upstream MCP server,
registers and approves the upstream, uploads and approves the sample policy,
then runs a real MCP client (the ``mcp`` SDK ``Client``) as two users and
finally prints the audit query. Stops everything it started; exits 0 on success.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import httpx
import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from gateway.config import PROJECT_ROOT
from gateway.devtools.stack import LocalStack, fresh_database, sample_policy_modules


def _port_or_free(preferred: int) -> int | None:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", preferred))
        except OSError:
            return None
    return preferred


def _short(result: Any) -> str:
    texts = [c.text for c in result.content if getattr(c, "type", "") == "text"]
    return " ".join(" ".join(texts).split())[:90]


async def agent(
    stack: LocalStack, user: str, roles: list[str], calls: list[tuple[str, dict[str, Any]]], mode: str = "auto"
) -> None:
    """Run one agent session through the gateway's aggregated ``/mcp`` endpoint.

    ``mode="auto"`` negotiates the stateless 2026-07-28 revision; ``"legacy"`` the
    2025-11-25 ``initialize`` handshake with an ``Mcp-Session-Id``.
    """
    token = stack.idp.mint(user, roles, stack.audience, client_id="demo-agent")
    headers = {"authorization": f"Bearer {token}"}
    async with httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=300)) as http:
        async with Client(streamable_http_client(f"{stack.data_url}/mcp", http_client=http), mode=mode) as client:
            tools = await client.list_tools()
            print(f"\n== {user} (roles: {', '.join(roles)}) — MCP {client.protocol_version}")
            print(f"   sees {len(tools.tools)} tool(s): {', '.join(t.name for t in tools.tools)}")
            for name, args in calls:
                try:
                    result = await client.call_tool(name, args)
                except MCPError as exc:
                    data = exc.error.data or {}
                    print(f"   DENIED  {name}: {exc.error.message} reasons={data.get('reasons')}")
                    continue
                verdict = "TOOL ERROR" if result.is_error else "ALLOWED"
                print(f"   {verdict:7} {name}: {_short(result)}")


def print_audit(stack: LocalStack, expected: int, timeout: float = 20) -> None:
    """Print the decisions (with policy revision) once all expected events arrived."""
    deadline = time.monotonic() + timeout
    items: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        items = stack.admin("GET", "/v1/audit/decisions?limit=100")["items"]
        calls = [i for i in items if i["action"] == "tools/call"]
        if len(calls) >= expected and all(i["opa_logged"] for i in calls if i["policy_revision"]):
            break
        time.sleep(0.25)
    print("\n== audit: GET /v1/audit/decisions (newest first)")
    print(
        f"   {'time':12} {'subject':7} {'action':10} {'tool':20} {'allowed':7} {'status':9} {'revision':8} {'opa log':7} reasons"
    )
    for i in items:
        tool = f"{i['server'] or ''}{'__' + i['tool'] if i['tool'] else ''}"
        print(
            f"   {i['timestamp'][11:23]:12} {i['subject']:7} {i['action']:10} {tool:20} {str(i['allowed']):7} "
            f"{i['status']:9} {i['policy_revision'] or '-':8} {str(i['opa_logged']):7} {','.join(i['reasons'])}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run-dir", default=str(PROJECT_ROOT / ".run" / "demo"))
    args = parser.parse_args()
    database_url = os.environ.get("DATABASE_URL")
    opa_bin = os.environ.get("OPA_BIN") or str(PROJECT_ROOT / ".tools" / "bin" / "opa")
    if not database_url:
        print("demo: DATABASE_URL is not set (run it with `make demo`)", file=sys.stderr)
        return 2
    stack = LocalStack.create(
        Path(args.run_dir),
        database_url=fresh_database(database_url, "gateway_demo"),
        opa_bin=opa_bin,
        control_port=_port_or_free(8080),
        data_port=_port_or_free(8081),
    )
    with stack:
        print(f"control plane {stack.control_url}   data plane {stack.data_url}/mcp   logs {stack.run_dir}")
        stack.start_upstream()
        stack.start_gateway()
        server = stack.register_and_approve_server("demo", stack.upstream_url, "Sample upstream (fake data)")
        print(
            f"approved upstream 'demo' with {len(server['tools'])} tools: {', '.join(t['name'] for t in server['tools'])}"
        )
        version = stack.upload_and_approve_policy(sample_policy_modules())
        state = stack.wait_projection_active()
        print(
            f"policy version {version} active in projection {state['active_version']} (OPA and data plane reloaded, no restart)"
        )
        anyio.run(
            agent,
            stack,
            "alice",
            ["viewer"],
            [
                ("demo__get_weather", {"city": "Paris"}),
                ("demo__create_ticket", {"title": "VPN down", "priority": "high"}),
            ],
        )
        anyio.run(
            agent,
            stack,
            "bob",
            ["operator"],
            [
                ("demo__create_ticket", {"title": "VPN down", "priority": "high"}),
                ("demo__create_ticket", {"title": "VPN down", "priority": "urgent"}),
                ("demo__delete_record", {"record_id": "r-42"}),
            ],
            "legacy",
        )
        recorded = httpx.get(f"http://127.0.0.1:{stack.upstream_port}/_recorded").json()["calls"]
        print(
            f"\nthe upstream received {len(recorded)} call(s): {', '.join(c['tool'] for c in recorded)} (denied and invalid calls never reached it)"
        )
        print_audit(stack, expected=5)
        checkpoint = stack.admin("POST", "/v1/audit/checkpoints")
        report = stack.admin("GET", "/v1/audit/verify")
        print(
            f"\n== audit integrity: checkpoint {checkpoint['id']} signed (Ed25519, key {checkpoint['key_id']}); "
            f"GET /v1/audit/verify: {report['message']} "
            f"(decisions {report['streams']['decisions']}, OPA logs {report['streams']['opa_logs']}, "
            f"control plane {report['streams']['control_plane']})"
        )
    print("\ndemo finished: everything it started is stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
