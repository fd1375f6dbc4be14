"""The PEP with in-memory doubles behind its ports (PolicyEngine, upstream pool, audit)."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.dataplane import governance
from gateway.dataplane.governance import CallContext, Governor, is_stale
from gateway.dataplane.projection import ActiveProjection, compile_projection
from gateway.policy.decision import Decision, ListDecision
from gateway.policy.input import Subject
from tests.dataplane.test_audit import _config

pytestmark = pytest.mark.anyio

CTX = CallContext(Subject("alice", "https://idp.test", ("viewer",)), None, "2026-07-28", None)


def _projection(version: int = 5, policy_version: int | None = 2, schema: Any = None) -> ActiveProjection:
    tool = {"name": "echo", "inputSchema": schema or {"type": "object", "properties": {"text": {"type": "string"}}}}
    return compile_projection(
        {
            "version": version,
            "policy_version": policy_version,
            "revision": f"p{version}-pv{policy_version or 0}",
            "servers": [{"name": "demo", "transport": "streamable_http", "url": "http://u/mcp", "tools": [tool]}],
        }
    )


class Engine:
    """Answers with the given revisions in turn (the last one repeats)."""

    def __init__(self, *revisions: str, allow: bool = True) -> None:
        self.revisions = list(revisions)
        self.allow = allow
        self.asked = 0

    def _next(self) -> str:
        self.asked += 1
        return self.revisions.pop(0) if len(self.revisions) > 1 else self.revisions[0]

    async def decide(self, input_doc: dict[str, Any]) -> Decision:
        return Decision(self.allow, ("r",), {}, f"d{self.asked}", self._next())

    async def visible(self, input_doc: dict[str, Any]) -> ListDecision:
        return ListDecision(frozenset(c["key"] for c in input_doc["candidates"]), "d", self._next())


class Upstreams:
    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def get(self, name: str, transport: str, url: str) -> Upstreams:
        return self

    async def request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(params)
        return {"jsonrpc": "2.0", "id": 1, "result": {"content": [], "isError": False}}


class Audit:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def emit(self, event: dict[str, Any]) -> None:
        self.events.append(event)


def _governor(tmp_path: Any, engine: Engine) -> tuple[Governor, Upstreams, Audit]:
    upstreams, audit = Upstreams(), Audit()
    return Governor(_config(tmp_path), engine, upstreams, audit), upstreams, audit  # type: ignore[arg-type]


async def _call(gov: Governor, projection: ActiveProjection) -> dict[str, Any]:
    return await gov.call_tool(projection, CTX, 1, {"name": "demo__echo", "arguments": {"text": "hi"}})


@pytest.mark.parametrize(
    ("revision", "stale"),
    [
        pytest.param("p5-pv2", False, id="same"),
        pytest.param("p4-pv2", False, id="older-projection-same-policy"),
        pytest.param("p4-pv1", True, id="older-projection-other-policy"),
        pytest.param("p6-pv3", False, id="newer-projection"),
        pytest.param("p5-pv9", True, id="same-projection-other-policy"),
        pytest.param("unknown", True, id="unparseable"),
        pytest.param(None, True, id="missing"),
    ],
)
def test_is_stale(revision: str | None, stale: bool) -> None:
    assert is_stale(revision, _projection()) is stale


async def test_a_stale_answer_is_asked_again_until_opa_catches_up(tmp_path: Any) -> None:
    engine = Engine("p4-pv1", "p4-pv1", "p5-pv2")
    gov, upstreams, audit = _governor(tmp_path, engine)
    reply = await _call(gov, _projection())
    assert "result" in reply and engine.asked == 3
    assert len(upstreams.calls) == 1 and audit.events[-1]["policy_revision"] == "p5-pv2"


async def test_an_opa_stuck_on_a_superseded_policy_denies_without_reaching_the_upstream(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(governance, "STALE_WAIT", 0.05)
    gov, upstreams, audit = _governor(tmp_path, Engine("p4-pv1"))
    reply = await _call(gov, _projection())
    assert reply["error"]["data"]["category"] == "policy_revision_stale"
    assert upstreams.calls == [] and audit.events[-1]["allowed"] is False


async def test_a_stale_discovery_answer_lists_nothing(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(governance, "STALE_WAIT", 0.05)
    gov, _, audit = _governor(tmp_path, Engine("p4-pv1"))
    assert await gov.list_tools(_projection(), CTX) == []
    assert audit.events[-1]["error_category"] == "policy_revision_stale"


async def test_a_schema_that_cannot_be_resolved_at_call_time_is_refused(tmp_path: Any) -> None:
    schema = {"type": "object", "properties": {"text": {"$ref": "#/$defs/missing"}}}
    gov, upstreams, audit = _governor(tmp_path, Engine("p5-pv2"))
    reply = await _call(gov, _projection(schema=schema))
    assert reply["error"]["data"]["category"] == "invalid_tool_schema"
    assert upstreams.calls == [] and audit.events[-1]["status"] == "rejected"


async def test_an_unknown_tool_is_audited_with_its_name_only(tmp_path: Any) -> None:
    gov, upstreams, audit = _governor(tmp_path, Engine("p5-pv2"))
    reply = await gov.call_tool(_projection(), CTX, 1, {"name": "demo__nope\x00", "arguments": {"secret": "s3"}})
    assert reply["error"]["code"] == -32602
    event = audit.events[-1]
    assert event["error_category"] == "unknown_tool" and "s3" not in str(event)
    assert upstreams.calls == []
