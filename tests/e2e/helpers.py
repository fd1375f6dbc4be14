"""Helpers shared by the end-to-end modules (real processes on loopback)."""

from __future__ import annotations

import time
from typing import Any

import httpx
import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from gateway.devtools.stack import LocalStack

__all__ = ["audit_item", "client", "recorded"]


def client(stack: LocalStack, token: str, path: str = "/mcp", mode: str = "auto") -> Client:
    """An ``mcp`` SDK ``Client`` for the gateway's data plane, carrying ``token``."""
    http = httpx2.AsyncClient(headers={"authorization": f"Bearer {token}"}, timeout=httpx2.Timeout(30, read=60))
    return Client(streamable_http_client(f"{stack.data_url}{path}", http_client=http), mode=mode)


def recorded(stack: LocalStack) -> dict[str, Any]:
    """What the sample upstream received: ``{"calls": [...], "last_authorization", ...}``."""
    return httpx.get(f"http://127.0.0.1:{stack.upstream_port}/_recorded").json()  # type: ignore[no-any-return]


def audit_item(stack: LocalStack, decision_id: str, *, opa_logged: bool = False, timeout: float = 15) -> dict[str, Any]:
    """Wait (bounded) until the audit API has ``decision_id`` (and OPA's log for it, if asked)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        resp = httpx.get(f"{stack.control_url}/v1/audit/decisions/{decision_id}", headers=stack.admin_headers)
        if resp.status_code == 200 and (resp.json()["opa_logged"] or not opa_logged):
            return resp.json()  # type: ignore[no-any-return]
        time.sleep(0.1)
    raise AssertionError(f"decision {decision_id} not in the audit log after {timeout}s")
