"""End to end: hostile nesting in arguments and results never gives a 500, and is audited.

A real gateway (``stack``: ``gateway serve`` + OPA + PostgreSQL + the sample upstream
as ``demo``), plus a second upstream, ``deep``: a minimal hand-written 2026-07-28
streamable-HTTP MCP server (run in a thread) whose one tool, ``nest``, answers a
``structuredContent`` nested ``depth`` levels. It is hand-written because the SDK's
own servers cannot serialise that deep — an upstream that misbehaves is the point.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.devtools.stack import LocalStack, free_port
from tests.e2e.helpers import recorded

pytestmark = [pytest.mark.integration]

MODERN = "2026-07-28"
ENVELOPE = {"io.modelcontextprotocol/protocolVersion": MODERN, "io.modelcontextprotocol/clientCapabilities": {}}
NEST_TOOL = {
    "name": "nest",
    "description": "Answer structuredContent nested `depth` levels deep.",
    "inputSchema": {"type": "object", "properties": {"depth": {"type": "integer"}}, "required": ["depth"]},
    "annotations": {"readOnlyHint": True},
}


def _nested(levels: int) -> bytes:
    return b'{"a":' * (levels - 1) + b"{}" + b"}" * (levels - 1)


async def _deep_upstream(request: Request) -> Response:
    msg = orjson.loads(await request.body())
    if "id" not in msg:
        return Response(status_code=202)
    head = b'{"jsonrpc":"2.0","id":' + orjson.dumps(msg["id"]) + b',"result":'
    method = msg.get("method")
    if method == "server/discover":
        info = {"name": "deep", "version": "0.0.1"}
        result = {
            "resultType": "complete",
            "supportedVersions": [MODERN],
            "capabilities": {"tools": {}},
            "serverInfo": info,
            "ttlMs": 0,
            "cacheScope": "private",
            "_meta": {"io.modelcontextprotocol/serverInfo": info},
        }
        body = head + orjson.dumps(result) + b"}"
    elif method == "tools/list":
        result = {"tools": [NEST_TOOL], "resultType": "complete", "ttlMs": 0, "cacheScope": "private"}
        body = head + orjson.dumps(result) + b"}"
    elif method == "tools/call":
        depth = int(msg["params"]["arguments"]["depth"])
        body = head + b'{"content":[],"structuredContent":' + _nested(depth) + b"}}"
    else:
        body = orjson.dumps({"jsonrpc": "2.0", "id": msg["id"], "error": {"code": -32601, "message": "nope"}})
    return Response(body, media_type="application/json")


@pytest.fixture(scope="module")
def deep_upstream() -> Iterator[str]:
    port = free_port()
    app = Starlette(routes=[Route("/mcp", _deep_upstream, methods=["POST"])])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "deep upstream did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def limits_stack(stack: LocalStack, deep_upstream: str) -> LocalStack:
    stack.register_and_approve_server("deep", deep_upstream, "hostile nesting")
    stack.wait_projection_active()
    return stack


def _post(stack: LocalStack, token: str, body: bytes, name: str) -> httpx.Response:
    headers = {
        "authorization": f"Bearer {token}",
        "content-type": "application/json",
        "mcp-protocol-version": MODERN,
        "mcp-method": "tools/call",
        "mcp-name": name,
    }
    return httpx.post(f"{stack.data_url}/mcp", content=body, headers=headers, timeout=30)


def _call(name: str, arguments: bytes, msg_id: int = 1) -> bytes:
    return b'{"jsonrpc":"2.0","id":%d,"method":"tools/call","params":{"name":"%s","_meta":%s,"arguments":%s}}' % (
        msg_id,
        name.encode(),
        orjson.dumps(ENVELOPE),
        arguments,
    )


def _audit_events(stack: LocalStack, subject: str, count: int, timeout: float = 15) -> list[dict[str, Any]]:
    """The subject's tools/call events, once ``count`` have arrived (bounded wait)."""
    deadline = time.monotonic() + timeout
    items: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        items = stack.admin("GET", f"/v1/audit/decisions?subject={subject}&action=tools/call")["items"]
        if len(items) >= count:
            return items
        time.sleep(0.1)
    raise AssertionError(f"{len(items)} of {count} audit events for {subject} after {timeout}s: {items}")


def test_arguments_300_levels_deep_get_32602_and_a_rejected_audit_event(limits_stack: LocalStack) -> None:
    s = limits_stack
    token = s.idp.mint("deep-args", ["admin"], s.audience)
    before = len(recorded(s)["calls"])
    resp = _post(s, token, _call("demo__echo", b'{"text":' + _nested(300) + b"}", 11), "demo__echo")
    assert resp.status_code == 200, resp.text
    assert resp.json()["id"] == 11 and resp.json()["error"]["code"] == -32602
    assert resp.json()["error"]["data"] == {"category": "arguments_too_deep"}
    [event] = _audit_events(s, "deep-args", 1)
    assert (event["status"], event["error_category"], event["allowed"]) == ("rejected", "arguments_too_deep", False)
    assert len(recorded(s)["calls"]) == before  # the upstream never saw it
    # The gateway is unharmed: an ordinary call still works.
    ok = _post(s, token, _call("demo__echo", b'{"text":"still here"}', 12), "demo__echo")
    assert ok.status_code == 200 and ok.json()["result"]["isError"] is False


def test_a_result_300_levels_deep_is_an_audited_upstream_protocol_error(limits_stack: LocalStack) -> None:
    s = limits_stack
    token = s.idp.mint("deep-result", ["admin"], s.audience)
    resp = _post(s, token, _call("deep__nest", b'{"depth":300}', 21), "deep__nest")
    assert resp.status_code == 200, resp.text
    error = resp.json()["error"]
    assert error["code"] == -32004 and error["data"]["category"] == "upstream_protocol_error"
    [event] = _audit_events(s, "deep-result", 1)
    assert (event["allowed"], event["status"], event["error_category"]) == (True, "error", "upstream_protocol_error")
    assert event["decision_id"] == error["data"]["decision_id"] and event["tool"] == "nest"
    shallow = _post(s, token, _call("deep__nest", b'{"depth":5}', 22), "deep__nest")
    assert shallow.json()["result"]["structuredContent"] == {"a": {"a": {"a": {"a": {}}}}}
