"""Policy reload time: from approving a policy version to the first call decided by it.

Measured the way an operator sees it, through the gateway: ``POST /v1/policies/{v}/approve``
(which compiles the projection and sends ``NOTIFY``), then governed ``tools/call`` requests
back to back until one is decided by the new version. In between come the engine's bundle
long poll returning, the download, the signature check and the activation — for the sidecar
in the ``opa`` process, for the embedded engine in the gateway process. Rounds alternate a
version that denies everything with the sample policy, so each approval changes the decision.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import httpx

from gateway.devtools.stack import LocalStack, sample_policy_modules

__all__ = ["measure_reload"]

DENY_ALL = {
    "gateway.rego": (
        "package gateway\n\n"
        'default decision := {"allow": false, "reasons": ["maintenance_window"], "obligations": {}}\n'
    )
}

_META = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}


def _denied(http: httpx.Client, url: str, token: str) -> bool:
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "demo__echo", "arguments": {"text": "r"}, "_meta": _META}}  # fmt: skip
    headers = {
        "authorization": f"Bearer {token}",
        "accept": "application/json, text/event-stream",
        "mcp-protocol-version": "2026-07-28",
        "mcp-method": "tools/call",
        "mcp-name": "demo__echo",
    }
    answer = http.post(url, json=body, headers=headers).json()
    return "error" in answer and "maintenance_window" in str(answer["error"].get("data", {}).get("reasons"))


def measure_reload(stack: LocalStack, token: str, rounds: int = 4, timeout: float = 30.0) -> dict[str, Any]:
    """Approve alternately a deny-all version and the sample policy ``rounds`` times each.

    Returns:
        ``{"samples_ms": [...], "p50_ms", "max_ms", "n"}``: milliseconds from sending the
        approval to the first response decided by the approved version.

    Raises:
        TimeoutError: A version did not take effect within ``timeout`` seconds.
    """
    deny_all = int(stack.admin("POST", "/v1/policies", {"modules": DENY_ALL})["version"])
    sample = int(stack.admin("POST", "/v1/policies", {"modules": sample_policy_modules()})["version"])
    url = f"{stack.data_url}/mcp"
    samples: list[float] = []
    with httpx.Client(timeout=10) as http:
        for _ in range(rounds):
            for version, want_denied in ((deny_all, True), (sample, False)):
                started = time.perf_counter()
                stack.admin("POST", f"/v1/policies/{version}/approve", {"comment": "reload bench"})
                while _denied(http, url, token) is not want_denied:
                    if time.perf_counter() - started > timeout:
                        raise TimeoutError(f"policy version {version} not in effect after {timeout}s")
                samples.append((time.perf_counter() - started) * 1000)
    stack.wait_projection_active()
    return {
        "samples_ms": [round(s, 1) for s in samples],
        "p50_ms": statistics.median(samples),
        "max_ms": max(samples),
        "n": len(samples),
    }
