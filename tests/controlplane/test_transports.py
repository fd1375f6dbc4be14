"""Registering and approving ``legacy_sse`` and ``stdio`` servers, in-process against real PostgreSQL and opa.

Proven here: each transport's fields are validated with a 400 naming the field; a stdio
record's ``env`` values never appear in an admin answer (only ``env_keys``); approving a
stdio server needs ``{"trust_stdio": true}`` (400 naming it otherwise), which is refused
for other transports and recorded as ``trusted``/``trusted_at``; discovery starts the real
command (``tests/support/stdio_server.py``) and pins its tools; the projection feed carries
the launch (env included: data planes run it) and the OPA bundle does not.
"""

from __future__ import annotations

import io
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

from gateway.config import Config
from tests.controlplane.helpers import OPA_TOKEN, asgi_controlplane
from tests.support.ports import free_port

pytestmark = [pytest.mark.anyio, pytest.mark.db]

SERVER = Path(__file__).resolve().parents[1] / "support" / "stdio_server.py"
CANARY = "env-secret-canary-7f3a9d"
STDIO = {
    "name": "local",
    "transport": "stdio",
    "command": sys.executable,
    "args": [str(SERVER)],
    "env": {"STDIO_MARKER": "visible", "API_TOKEN": CANARY},
    "description": "a trusted local tool",
}


INVALID: list[tuple[dict[str, Any], str]] = [
    ({"transport": "stdio", "command": "x", "url": "http://x/mcp"}, "url"),
    ({"transport": "stdio"}, "command"),
    ({"transport": "stdio", "command": ""}, "command"),
    ({"transport": "stdio", "command": "a\nb"}, "command"),
    ({"transport": "stdio", "command": "x", "args": "--flag"}, "args"),
    ({"transport": "stdio", "command": "x", "args": [1]}, "args"),
    ({"transport": "stdio", "command": "x", "args": ["a\x00"]}, "args"),
    ({"transport": "stdio", "command": "x", "cwd": "relative/dir"}, "cwd"),
    ({"transport": "stdio", "command": "x", "env": ["A"]}, "env"),
    ({"transport": "stdio", "command": "x", "env": {"A-B": "1"}}, "env"),
    ({"transport": "stdio", "command": "x", "env": {"A": 1}}, "env"),
    ({"transport": "legacy_sse"}, "url"),
    ({"transport": "legacy_sse", "url": "ftp://x/sse"}, "url"),
    ({"transport": "streamable_http", "url": "http://x/mcp", "env": {}}, "env"),
]

OPA = {"Authorization": f"Bearer {OPA_TOKEN}"}


async def test_invalid_transport_fields_are_400_naming_the_field(cp_config: Config) -> None:
    async with asgi_controlplane(cp_config) as (admin, _, _):
        for body, field in INVALID:  # one database for all cases: each answer is checked
            r = await admin.post("/v1/servers", json={"name": "a", **body})
            assert r.status_code == 400, (body, r.text)
            assert r.json()["error"] == "bad_request" and r.json()["message"].startswith(field), (body, r.text)
        assert (await admin.get("/v1/servers")).json()["items"] == []


async def test_a_stdio_server_needs_trust_stdio_and_its_env_values_are_never_shown(cp_config: Config) -> None:
    async with asgi_controlplane(cp_config) as (admin, internal, _):
        created = await admin.post("/v1/servers", json=STDIO)
        assert created.status_code == 201, created.text
        record = created.json()
        assert record["url"] is None and record["command"] == sys.executable and record["args"] == [str(SERVER)]
        assert record["cwd"] is None and record["env_keys"] == ["API_TOKEN", "STDIO_MARKER"]
        assert record["trusted"] is False and record["trusted_at"] is None and "env" not in record

        for body, message in [
            ({"trust_stdio": True}, "comment: an approval needs a comment"),
            ({"comment": "reviewed"}, "trust_stdio: approving a stdio server"),
            ({"trust_stdio": False, "comment": "reviewed"}, "trust_stdio: approving a stdio server"),
            ({"trust_stdio": "yes", "comment": "reviewed"}, "trust_stdio must be a boolean"),
            ({"trust": True, "comment": "reviewed"}, "the approval body must be"),
        ]:
            refused = await admin.post("/v1/servers/local/approve", json=body)
            assert refused.status_code == 400 and refused.json()["message"].startswith(message), refused.text
        assert (await admin.get("/v1/servers/local")).json()["status"] == "pending_approval"

        approved = await admin.post("/v1/servers/local/approve", json={"trust_stdio": True, "comment": "reviewed"})
        assert approved.status_code == 200, approved.text
        shown = approved.json()
        assert shown["status"] == "approved" and shown["trusted"] is True and shown["trusted_at"] is not None
        assert [t["name"] for t in shown["tools"]] == [
            "whoami",
            "echo",
            "stderr",
            "long_line",
            "sleep",
            "ask_ping",
            "close_stdin",
            "exit",
        ]

        answers = [created.text, approved.text, (await admin.get("/v1/servers")).text]
        answers.append((await admin.get("/v1/servers/local")).text)
        assert all(CANARY not in text for text in answers)

        feed = (await internal.get("/v1/dataplane/projection", params={"dataplane_id": "dp1"})).json()
        (entry,) = feed["servers"]
        assert entry["url"] is None and entry["trusted"] is True
        assert entry["command"] == sys.executable and entry["env"] == STDIO["env"]  # what data planes run
        bundle = (await internal.get("/v1/opa/bundles/gateway", headers=OPA)).content
        with tarfile.open(fileobj=io.BytesIO(bundle), mode="r:gz") as tar:
            files = b"".join(tar.extractfile(m).read() for m in tar.getmembers() if m.isfile())  # type: ignore[union-attr]
        assert b'"local"' in files and CANARY.encode() not in files and b"stdio_server.py" not in files


async def test_trust_stdio_is_refused_for_other_transports(cp_config: Config) -> None:
    async with asgi_controlplane(cp_config) as (admin, _, _):
        body = {"name": "web", "transport": "streamable_http", "url": f"http://127.0.0.1:{free_port()}/mcp"}
        assert (await admin.post("/v1/servers", json=body)).status_code == 201
        r = await admin.post("/v1/servers/web/approve", json={"trust_stdio": True, "comment": "reviewed"})
    assert r.status_code == 400 and r.json()["message"] == "trust_stdio applies to stdio servers only"


async def test_unreachable_legacy_sse_and_unstartable_stdio_approvals_are_502(cp_config: Config) -> None:
    async with asgi_controlplane(cp_config) as (admin, _, _):
        sse = {"name": "old", "transport": "legacy_sse", "url": f"http://127.0.0.1:{free_port()}/sse"}
        created = await admin.post("/v1/servers", json=sse)
        assert created.status_code == 201 and created.json()["url"] == sse["url"], created.text
        assert created.json()["command"] is None and created.json()["env_keys"] is None
        r = await admin.post("/v1/servers/old/approve", json={"comment": "reviewed"})
        assert r.status_code == 502 and r.json()["error"] == "upstream_unavailable"
        assert "check its SSE URL" in r.json()["message"]

        missing = {"name": "gone", "transport": "stdio", "command": "/nonexistent/mcp-server"}
        assert (await admin.post("/v1/servers", json=missing)).status_code == 201
        r = await admin.post("/v1/servers/gone/approve", json={"trust_stdio": True, "comment": "reviewed"})
        assert r.status_code == 502 and r.json()["error"] == "upstream_unavailable"
        assert "check its command, args, cwd and env" in r.json()["message"]
        assert (await admin.get("/v1/servers/gone")).json()["trusted"] is False
