"""Every client revision against every upstream revision, over every upstream transport.

Client side, raw JSON-RPC over HTTP (what each revision puts on the wire): the handshake
revisions 2024-11-05, 2025-03-26, 2025-06-18 and 2025-11-25 on ``/mcp`` (``initialize``,
``Mcp-Session-Id``), 2024-11-05 also on the ``/sse`` transport it was written for, and
2026-07-28 stateless on ``/mcp``. Upstream side, ``tests/support/relay_upstream.py`` (a real
SDK ``MCPServer``) answering one revision each: 2024-11-05, 2025-03-26 and 2025-11-25 over
legacy HTTP+SSE, 2025-06-18 over stdio (pinned: the server knows only that revision), and
2026-07-28 over streamable HTTP. For each pair a governed call reaches the upstream on a
session of the upstream's revision, and a call reporting progress returns the progress under
the client's own token, then its result.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.devtools.stack import LocalStack, free_port
from tests.e2e.helpers import stop_processes
from tests.support.ports import port_open

pytestmark = [pytest.mark.integration, pytest.mark.db, pytest.mark.timeout(300)]

RELAY = Path(__file__).resolve().parents[1] / "support" / "relay_upstream.py"
UPSTREAMS = {  # server name -> (transport, revision)
    "v20241105": ("legacy_sse", "2024-11-05"),
    "v20250326": ("legacy_sse", "2025-03-26"),
    "v20250618": ("stdio", "2025-06-18"),
    "v20251125": ("legacy_sse", "2025-11-25"),
    "v20260728": ("streamable_http", "2026-07-28"),
}
CLIENTS = [
    ("2024-11-05", "sse"),
    ("2024-11-05", "streamable"),
    ("2025-03-26", "streamable"),
    ("2025-06-18", "streamable"),
    ("2025-11-25", "streamable"),
    ("2026-07-28", "streamable"),
]
ACCEPT = "application/json, text/event-stream"


@pytest.fixture(scope="module")
def upstreams(stack: LocalStack) -> Iterator[None]:
    procs = []
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    try:
        for name, (transport, revision) in UPSTREAMS.items():
            argv = [sys.executable, str(RELAY)]
            if transport == "stdio":
                record = {
                    "transport": "stdio",
                    "command": argv[0],
                    "args": [*argv[1:], "--transport", "stdio", "--pin-version", revision],
                }
            else:
                port = free_port()
                mode = "sse" if transport == "legacy_sse" else "streamable-http"
                extra = ["--pin-version", revision] if transport == "legacy_sse" else []
                with open(stack.run_dir / f"{name}.log", "ab") as out:
                    procs.append(
                        subprocess.Popen(
                            [*argv, "--transport", mode, "--port", str(port), *extra],
                            stdin=subprocess.DEVNULL,
                            stdout=out,
                            stderr=out,
                            env=env,
                        )
                    )
                deadline = time.monotonic() + 20
                while not port_open("127.0.0.1", port):
                    assert time.monotonic() < deadline and procs[-1].poll() is None, f"{name} did not start"
                    time.sleep(0.05)
                path = "/sse" if transport == "legacy_sse" else "/mcp"
                record = {"transport": transport, "url": f"http://127.0.0.1:{port}{path}"}
            stack.admin("POST", "/v1/servers", {"name": name, **record})
            trust = {"trust_stdio": True} if transport == "stdio" else {}
            stack.admin("POST", f"/v1/servers/{name}/approve", {**trust, "comment": "reviewed"})
        stack.wait_projection_active()
        yield
    finally:
        stop_processes(procs)


def _events(text: str) -> list[dict[str, Any]]:
    """The messages of an SSE body (a 2025-11-25 stream opens with a priming event: empty data)."""
    return [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ") and line[6:]]


class HandshakeClient:
    """A handshake-era client on ``/mcp`` speaking ``revision``."""

    def __init__(self, stack: LocalStack, http: httpx.Client, token: str, revision: str) -> None:
        self.url, self.http, self.revision = f"{stack.data_url}/mcp", http, revision
        self.headers = {"authorization": f"Bearer {token}", "accept": ACCEPT}
        init = {"protocolVersion": revision, "capabilities": {}, "clientInfo": {"name": "matrix", "version": "1"}}
        resp = http.post(
            self.url, json={"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": init}, headers=self.headers
        )
        assert resp.status_code == 200 and resp.json()["result"]["protocolVersion"] == revision, resp.text
        self.headers |= {"mcp-session-id": resp.headers["mcp-session-id"], "mcp-protocol-version": revision}
        assert (
            http.post(
                self.url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=self.headers
            ).status_code
            == 202
        )

    def call(
        self, msg_id: int, name: str, arguments: dict[str, Any], meta: dict[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"name": name, "arguments": arguments, **({"_meta": meta} if meta else {})}
        resp = self.http.post(
            self.url,
            json={"jsonrpc": "2.0", "id": msg_id, "method": "tools/call", "params": params},
            headers=self.headers,
        )
        assert resp.status_code == 200, resp.text
        return _events(resp.text) if resp.headers["content-type"].startswith("text/event-stream") else [resp.json()]


class ModernClient:
    """A 2026-07-28 client: every request stands alone (``_meta`` envelope + headers)."""

    def __init__(self, stack: LocalStack, http: httpx.Client, token: str) -> None:
        self.url, self.http, self.token = f"{stack.data_url}/mcp", http, token

    def call(
        self, msg_id: int, name: str, arguments: dict[str, Any], meta: dict[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        envelope = {
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {},
            "io.modelcontextprotocol/clientInfo": {"name": "matrix", "version": "1"},
            **(meta or {}),
        }
        body = {
            "jsonrpc": "2.0",
            "id": msg_id,
            "method": "tools/call",
            "params": {"name": name, "arguments": arguments, "_meta": envelope},
        }
        headers = {
            "authorization": f"Bearer {self.token}",
            "accept": ACCEPT,
            "mcp-protocol-version": "2026-07-28",
            "mcp-method": "tools/call",
            "mcp-name": name,
        }
        resp = self.http.post(self.url, json=body, headers=headers)
        assert resp.status_code == 200, resp.text
        return _events(resp.text) if resp.headers["content-type"].startswith("text/event-stream") else [resp.json()]


class SseClient:
    """A 2024-11-05 client on the HTTP+SSE transport (``/sse`` + ``/messages``)."""

    def __init__(self, stack: LocalStack, http: httpx.Client, token: str) -> None:
        self.base, self.http = stack.data_url, http
        self.auth = {"authorization": f"Bearer {token}"}
        self.stream_cm = http.stream("GET", f"{self.base}/sse", headers=self.auth, timeout=httpx.Timeout(30))
        self.stream = self.stream_cm.__enter__()
        self.lines = self.stream.iter_lines()
        assert next(self.lines) == "event: endpoint"
        self.endpoint = next(self.lines).removeprefix("data: ")
        init = {"protocolVersion": "2024-11-05", "capabilities": {}, "clientInfo": {"name": "matrix", "version": "1"}}
        assert (
            self._post({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": init})[-1]["result"][
                "protocolVersion"
            ]
            == "2024-11-05"
        )
        self.http.post(
            f"{self.base}{self.endpoint}",
            json={"jsonrpc": "2.0", "method": "notifications/initialized"},
            headers=self.auth,
        )

    def _post(self, message: dict[str, Any]) -> list[dict[str, Any]]:
        assert self.http.post(f"{self.base}{self.endpoint}", json=message, headers=self.auth).status_code == 202
        seen = []
        for line in self.lines:
            if line.startswith("data: "):
                seen.append(json.loads(line[6:]))
                if seen[-1].get("id") == message["id"] and ("result" in seen[-1] or "error" in seen[-1]):
                    return seen
        raise AssertionError(f"stream ended: {seen}")

    def call(
        self, msg_id: int, name: str, arguments: dict[str, Any], meta: dict[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"name": name, "arguments": arguments, **({"_meta": meta} if meta else {})}
        return self._post({"jsonrpc": "2.0", "id": msg_id, "method": "tools/call", "params": params})

    def close(self) -> None:
        self.stream_cm.__exit__(None, None, None)


@pytest.mark.parametrize(("client_revision", "downstream"), CLIENTS)
def test_every_client_revision_reaches_every_upstream_revision(
    stack: LocalStack, upstreams: None, client_revision: str, downstream: str
) -> None:
    token = stack.idp.mint(f"matrix-{client_revision}-{downstream}", ["viewer"], stack.audience)
    with httpx.Client(timeout=30) as http:
        if downstream == "sse":
            client: Any = SseClient(stack, http, token)
        elif client_revision == "2026-07-28":
            client = ModernClient(stack, http, token)
        else:
            client = HandshakeClient(stack, http, token, client_revision)
        try:
            for n, (server, (transport, upstream_revision)) in enumerate(sorted(UPSTREAMS.items())):
                where = f"{client_revision}/{downstream} -> {server} ({transport}, {upstream_revision})"
                [answer] = [
                    m for m in client.call(10 * n + 1, f"{server}__revision", {}) if "id" in m and "method" not in m
                ]
                assert answer["result"]["content"][0]["text"] == upstream_revision, where
                messages = client.call(
                    10 * n + 2, f"{server}__count", {"steps": 2, "pause": 0.01}, {"progressToken": f"tok-{n}"}
                )
                progress = [m["params"] for m in messages if m.get("method") == "notifications/progress"]
                assert [(p["progressToken"], p["progress"]) for p in progress] == [(f"tok-{n}", 1), (f"tok-{n}", 2)], (
                    where
                )
                assert messages[-1]["result"]["content"][0]["text"] == "counted 2", where
        finally:
            if isinstance(client, SseClient):
                client.close()
