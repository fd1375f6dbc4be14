"""Helpers shared by the end-to-end modules (real processes on loopback)."""

from __future__ import annotations

import subprocess
import time
from typing import Any

import httpx
import httpx2
import mcp_types as types
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from gateway.devtools.stack import LocalStack

__all__ = ["Answering", "audit_item", "client", "recorded", "stop_processes"]


def client(stack: LocalStack, token: str, path: str = "/mcp", mode: str = "auto", **callbacks: Any) -> Client:
    """An ``mcp`` SDK ``Client`` for the gateway's data plane, carrying ``token`` (and the
    client ``callbacks``: ``sampling_callback``, ``elicitation_callback``, ...)."""
    http = httpx2.AsyncClient(headers={"authorization": f"Bearer {token}"}, timeout=httpx2.Timeout(30, read=60))
    return Client(streamable_http_client(f"{stack.data_url}{path}", http_client=http), mode=mode, **callbacks)


class Answering:
    """A client's side of server-to-client traffic, recorded: progress values, the first
    message of each sampling request (answered ``sampled``), each elicitation's question
    (answered with ``elicit_action``)."""

    def __init__(self, sampled: str = "sampled answer", elicit_action: str = "decline") -> None:
        self.progress: list[float] = []
        self.prompts: list[str] = []
        self.questions: list[str] = []
        self._sampled, self._action = sampled, elicit_action

    async def on_progress(self, value: float, total: float | None, message: str | None) -> None:
        self.progress.append(value)

    async def sample(self, context: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        text = params.messages[0].content
        self.prompts.append(text.text if isinstance(text, types.TextContent) else "?")
        content = types.TextContent(type="text", text=self._sampled)
        return types.CreateMessageResult(role="assistant", content=content, model="test-model")

    async def elicit(self, context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        self.questions.append(params.message)
        return types.ElicitResult(action=self._action)  # type: ignore[arg-type]

    def callbacks(self) -> dict[str, Any]:
        return {"sampling_callback": self.sample, "elicitation_callback": self.elicit}


def stop_processes(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM each process, SIGKILL after 10 s."""
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


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
