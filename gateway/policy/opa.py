"""The only module that knows OPA's wire format: the Data API client (PDP port).

``POST /v1/data/gateway_runtime/main/call`` and ``.../list`` over the shared
keep-alive hot-path client (:mod:`gateway.httpclient`). Source: OPA REST API "Get a Document (with
Input)" — an undefined document is HTTP 200 without ``result``; ``decision_id``
is present when decision logging is on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import orjson

from gateway.errors import PolicyUnavailable
from gateway.httpclient import HttpClient, HttpTimeout, HttpTransportError
from gateway.policy.decision import Decision, ListDecision, parse_call_result, parse_list_result

__all__ = ["OpaPolicyEngine", "PolicyEngine"]

_JSON = {"content-type": "application/json"}


class PolicyEngine(Protocol):
    """The PDP as the data plane sees it."""

    async def decide(self, input_doc: dict[str, Any]) -> Decision:
        """Decide one request; raise PolicyUnavailable/PolicyDecisionInvalid to deny."""
        ...

    async def visible(self, input_doc: dict[str, Any]) -> ListDecision:
        """Filter discovery candidates in one query."""
        ...


class OpaPolicyEngine:
    """PolicyEngine backed by an OPA server (the sidecar).

    Example::

        engine = OpaPolicyEngine(create_http_client("aiohttp"), "http://127.0.0.1:8181", timeout=2.0)
        decision = await engine.decide(build_input(...))

    Args:
        http: The shared hot-path client.
        base_url: The OPA server, e.g. ``http://127.0.0.1:8181``.
        timeout: Seconds for one decision round trip.
        ready: When given and false, deny (``policy_unavailable``) without asking
            OPA — e.g. the supervised sidecar has not activated its bundle (and
            so its decision-log mask) since it last started.
    """

    def __init__(
        self, http: HttpClient, base_url: str, *, timeout: float, ready: Callable[[], bool] | None = None
    ) -> None:
        self._http = http
        self._base = base_url.rstrip("/")
        self._timeout = timeout
        self._ready = ready

    async def _post(self, path: str, input_doc: dict[str, Any]) -> Any:
        if self._ready is not None and not self._ready():
            raise PolicyUnavailable("OPA has not activated its bundle yet")
        body = orjson.dumps({"input": input_doc})
        try:
            async with self._http.request(
                "POST", self._base + path, body=body, headers=_JSON, timeout=self._timeout
            ) as resp:
                status, raw = resp.status, await resp.read()
        except HttpTimeout as exc:
            raise PolicyUnavailable(f"OPA timed out after {self._timeout}s") from exc
        except HttpTransportError as exc:
            raise PolicyUnavailable(f"OPA unreachable: {exc}") from exc
        if status != 200:
            raise PolicyUnavailable(f"OPA answered HTTP {status}")
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise PolicyUnavailable("OPA answered invalid JSON") from exc

    async def decide(self, input_doc: dict[str, Any]) -> Decision:
        """Ask ``data.gateway.decision`` (via the reserved wrapper) for one request.

        Raises:
            PolicyUnavailable: OPA unreachable, timed out, non-200.
            PolicyDecisionInvalid: Undefined or malformed decision.
        """
        return parse_call_result(await self._post("/v1/data/gateway_runtime/main/call", input_doc))

    async def visible(self, input_doc: dict[str, Any]) -> ListDecision:
        """Filter ``input_doc["candidates"]`` through the policy in one query.

        Raises:
            PolicyUnavailable: OPA unreachable, timed out, non-200.
            PolicyDecisionInvalid: Malformed result.
        """
        return parse_list_result(await self._post("/v1/data/gateway_runtime/main/list", input_doc))
