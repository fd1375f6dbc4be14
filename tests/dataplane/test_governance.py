"""The PEP with in-memory doubles behind its ports (PolicyEngine, upstream pool, audit)."""

from __future__ import annotations

import dataclasses
from typing import Any

import anyio
import orjson
import pytest

from gateway.dataplane import governance
from gateway.dataplane.governance import CallContext, Governor, is_stale
from gateway.dataplane.projection import ActiveProjection, compile_projection
from gateway.dataplane.relay import Outbox
from gateway.errors import ArgumentsTooDeep
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
    """Records forwarded params; answers ``reply`` (or raises ``fail``)."""

    def __init__(self, reply: dict[str, Any] | None = None, fail: BaseException | None = None) -> None:
        self.calls: list[dict[str, Any]] = []
        self.reply = reply or {"jsonrpc": "2.0", "id": 1, "result": {"content": [], "isError": False}}
        self.fail = fail

    def get(self, name: str, transport: str, url: str, caller: Any = None, credential: Any = None) -> Upstreams:
        return self

    async def request(self, method: str, params: dict[str, Any], channel: Any = None) -> dict[str, Any]:
        self.calls.append(params)
        if self.fail is not None:
            raise self.fail
        return self.reply


class Audit:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def emit(self, event: dict[str, Any]) -> None:
        self.events.append(event)


def _governor(tmp_path: Any, engine: Engine, upstreams: Upstreams | None = None) -> tuple[Governor, Upstreams, Audit]:
    upstreams, audit = upstreams or Upstreams(), Audit()
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


def _deep(levels: int) -> Any:
    """A JSON value ``levels`` deep (``{}`` is one level), built without recursion."""
    value: Any = {}
    for _ in range(levels - 1):
        value = {"a": value}
    return value


async def test_params_the_parser_marked_too_deep_are_refused_and_audited_as_rejected(tmp_path: Any) -> None:
    engine = Engine("p5-pv2")
    gov, upstreams, audit = _governor(tmp_path, engine)
    params = {"name": "demo__echo", "arguments": _deep(300)}
    reply = await gov.call_tool(_projection(), CTX, 7, params, rejection=ArgumentsTooDeep("too deep"))
    assert reply["id"] == 7 and reply["error"]["code"] == -32602
    assert reply["error"]["data"] == {"category": "arguments_too_deep"}
    assert [(e["status"], e["error_category"], e["allowed"], e["tool"]) for e in audit.events] == [
        ("rejected", "arguments_too_deep", False, "demo__echo")
    ]
    assert audit.events[0]["arguments_sha256"] is None
    assert engine.asked == 0 and upstreams.calls == []


HANDSHAKE_CTX = CallContext(Subject("alice", "https://idp.test", ("viewer",)), "s1", "2025-11-25", None)


@pytest.mark.parametrize(
    ("key", "ctx"),
    [
        ("task", CTX),
        ("extra", CTX),
        # MRTR retries come from 2026-07-28 clients only
        ("inputResponses", HANDSHAKE_CTX),
        ("requestState", HANDSHAKE_CTX),
    ],
)
async def test_a_params_key_policy_would_not_see_is_refused_naming_it(
    tmp_path: Any, key: str, ctx: CallContext
) -> None:
    engine = Engine("p5-pv2")
    gov, upstreams, audit = _governor(tmp_path, engine)
    params = {"name": "demo__echo", "arguments": {"text": "hi"}, key: {"ttl": 1}}
    reply = await gov.call_tool(_projection(), ctx, 1, params)
    assert reply["error"]["code"] == -32602 and repr(key) in reply["error"]["message"]
    assert audit.events[-1]["status"] == "rejected" and audit.events[-1]["error_category"] == "unexpected_param"
    assert engine.asked == 0 and upstreams.calls == []


async def test_only_the_name_and_the_arguments_policy_saw_are_forwarded(tmp_path: Any) -> None:
    gov, upstreams, _ = _governor(tmp_path, Engine("p5-pv2"))
    params = {"name": "demo__echo", "arguments": {"text": "hi"}, "_meta": {"progressToken": 1, "x": 2}}
    assert "result" in await gov.call_tool(_projection(), CTX, 1, params)
    # No client stream to relay progress to: the token is not forwarded either.
    assert upstreams.calls == [{"name": "echo", "arguments": {"text": "hi"}}]


async def test_a_modern_clients_mrtr_retry_and_progress_token_are_forwarded(tmp_path: Any) -> None:
    gov, upstreams, _ = _governor(tmp_path, Engine("p5-pv2"))
    ctx = CallContext(CTX.subject, None, "2026-07-28", None, client=Outbox(None))
    params = {
        "name": "demo__echo",
        "arguments": {"text": "hi"},
        "_meta": {"progressToken": "t1", "other": 1},
        "inputResponses": {"k": {"action": "accept"}},
        "requestState": "opaque",
    }
    assert "result" in await gov.call_tool(_projection(), ctx, 1, params)
    assert upstreams.calls == [
        {
            "name": "echo",
            "arguments": {"text": "hi"},
            "_meta": {"progressToken": "t1"},
            "inputResponses": {"k": {"action": "accept"}},
            "requestState": "opaque",
        }
    ]


async def test_a_non_string_name_is_refused_and_audited(tmp_path: Any) -> None:
    gov, upstreams, audit = _governor(tmp_path, Engine("p5-pv2"))
    reply = await gov.call_tool(_projection(), CTX, 1, {"name": 5, "arguments": {}})
    assert reply["error"]["code"] == -32602
    assert audit.events[-1]["status"] == "rejected" and audit.events[-1]["error_category"] == "bad_request"
    assert upstreams.calls == []


async def test_a_result_too_deep_to_relay_becomes_an_audited_upstream_protocol_error(tmp_path: Any) -> None:
    deep = {"jsonrpc": "2.0", "id": 1, "result": {"content": [], "structuredContent": _deep(300)}}
    gov, upstreams, audit = _governor(tmp_path, Engine("p5-pv2"), Upstreams(reply=deep))
    reply = await _call(gov, _projection())
    assert reply["error"]["code"] == governance.UPSTREAM_FAILED
    assert reply["error"]["data"]["category"] == "upstream_protocol_error"
    orjson.dumps(reply)  # the answer itself can be encoded
    [event] = audit.events
    assert (event["allowed"], event["status"], event["error_category"]) == (True, "error", "upstream_protocol_error")
    assert event["decision_id"] == reply["error"]["data"]["decision_id"] and len(upstreams.calls) == 1


async def test_the_deepest_relayable_result_is_relayed_and_encodes(tmp_path: Any) -> None:
    # The response message adds one level above the result: 253 levels of result fit in orjson's 254.
    result = _deep(253)
    result.update({"content": []})
    gov, _, audit = _governor(
        tmp_path, Engine("p5-pv2"), Upstreams(reply={"jsonrpc": "2.0", "id": 1, "result": result})
    )
    reply = await _call(gov, _projection())
    assert reply["result"] is result and audit.events[-1]["status"] == "ok"
    orjson.dumps(reply)
    too_deep = {"jsonrpc": "2.0", "id": 1, "result": {"content": [], "a": _deep(253)}}
    gov, _, audit = _governor(tmp_path, Engine("p5-pv2"), Upstreams(reply=too_deep))
    assert (await _call(gov, _projection()))["error"]["data"]["category"] == "upstream_protocol_error"


@pytest.mark.parametrize(
    "reply",
    [
        pytest.param({"jsonrpc": "2.0", "id": 1, "result": None}, id="null-result"),
        pytest.param({"jsonrpc": "2.0", "id": 1, "result": [1]}, id="array-result"),
        pytest.param({"jsonrpc": "2.0", "id": 1, "error": "boom"}, id="string-error"),
        pytest.param({"jsonrpc": "2.0", "id": 1, "error": {"code": "x", "message": "m"}}, id="error-code-not-int"),
    ],
)
async def test_an_answer_that_is_neither_a_result_object_nor_an_error_object_is_a_protocol_error(
    tmp_path: Any, reply: dict[str, Any]
) -> None:
    gov, _, audit = _governor(tmp_path, Engine("p5-pv2"), Upstreams(reply=reply))
    answer = await _call(gov, _projection())
    assert answer["error"]["data"]["category"] == "upstream_protocol_error"
    assert audit.events[-1]["allowed"] is True and audit.events[-1]["status"] == "error"


async def test_an_upstream_json_rpc_error_is_relayed_and_audited_as_a_tool_error(tmp_path: Any) -> None:
    error = {"code": -32000, "message": "tool blew up"}
    gov, _, audit = _governor(tmp_path, Engine("p5-pv2"), Upstreams(reply={"jsonrpc": "2.0", "id": 1, "error": error}))
    assert (await _call(gov, _projection()))["error"] == error
    assert audit.events[-1]["status"] == "tool_error" and audit.events[-1]["result_sha256"]


async def test_an_unexpected_exception_after_the_upstream_ran_is_audited_once_then_raised(tmp_path: Any) -> None:
    gov, upstreams, audit = _governor(tmp_path, Engine("p5-pv2"), Upstreams(fail=RuntimeError("bug")))
    with pytest.raises(RuntimeError):
        await _call(gov, _projection())
    [event] = audit.events
    assert (event["allowed"], event["status"], event["error_category"]) == (True, "error", "internal_error")
    assert event["decision_id"] == "d0" and event["tool"] == "echo" and len(upstreams.calls) == 1


async def test_a_cancelled_call_is_still_audited(tmp_path: Any) -> None:
    gov, _, audit = _governor(tmp_path, Engine("p5-pv2"), Upstreams(fail=anyio.get_cancelled_exc_class()()))
    with pytest.raises(anyio.get_cancelled_exc_class()):
        await _call(gov, _projection())
    assert [(e["status"], e["error_category"]) for e in audit.events] == [("error", "cancelled")]


async def test_a_list_that_fails_unexpectedly_is_empty_and_audited(tmp_path: Any) -> None:
    class Broken(Engine):
        async def visible(self, input_doc: dict[str, Any]) -> ListDecision:
            raise RuntimeError("bug")

    gov, _, audit = _governor(tmp_path, Broken("p5-pv2"))
    assert await gov.list_tools(_projection(), CTX) == []
    assert audit.events[-1]["error_category"] == "internal_error"


def test_the_relay_hash_is_the_canonical_hash_of_the_value() -> None:
    value = {"b": [1, {"d": 2, "c": 3}], "a": "x"}
    assert governance._relay_sha256(value) == governance._sha256(value)


@pytest.mark.parametrize("extra", [{"inputResponses": {"k": 1}}, {"inputResponses": ["x"]}, {"requestState": {"s": 1}}])
async def test_a_malformed_mrtr_retry_is_refused_before_policy(tmp_path: Any, extra: dict[str, Any]) -> None:
    engine = Engine("p5-pv2")
    gov, upstreams, audit = _governor(tmp_path, engine)
    params = {"name": "demo__echo", "arguments": {"text": "hi"}, **extra}
    reply = await gov.call_tool(_projection(), CTX, 1, params)  # CTX speaks 2026-07-28
    assert reply["error"]["code"] == -32602 and reply["error"]["data"]["category"] == "bad_request"
    assert engine.asked == 0 and upstreams.calls == [] and audit.events[-1]["status"] == "rejected"


async def test_an_input_request_the_client_cannot_take_is_refused_and_audited(tmp_path: Any) -> None:
    engine = Engine("p5-pv2")
    gov, _, audit = _governor(tmp_path, engine)
    channel = gov.channel(_projection(), CTX, "demo")  # CTX declared no capabilities
    result = {"resultType": "input_required", "inputRequests": {"k": {"method": "sampling/createMessage"}}}
    refusal = await channel.check_input_requests(result)
    assert refusal is not None and refusal["data"]["category"] == "capability_not_declared"
    event = audit.events[-1]
    assert (event["action"], event["status"], event["error_category"]) == (
        "sampling/createMessage",
        "rejected",
        "capability_not_declared",
    )
    assert engine.asked == 0


class DenyMethods(Engine):
    """Denies the actions in ``denied``; allows the rest."""

    def __init__(self, *denied: str) -> None:
        super().__init__("p5-pv2")
        self.denied = set(denied)

    async def decide(self, input_doc: dict[str, Any]) -> Decision:
        allowed = input_doc["action"] not in self.denied
        return Decision(allowed, ("r",), {}, f"d{self.asked}", self._next())


ASKS_BOTH = {
    "resultType": "input_required",
    "inputRequests": {
        "s": {"method": "sampling/createMessage", "params": {"maxTokens": 5}},
        "e": {"method": "elicitation/create", "params": {"mode": "form"}},
    },
}
CAN_BE_ASKED = dataclasses.replace(CTX, client_capabilities={"sampling": {}, "elicitation": {}})


def _by_action(audit: Audit) -> dict[str, tuple[str, str | None]]:
    return {e["action"]: (e["status"], e["error_category"]) for e in audit.events}


async def test_input_requests_all_allowed_are_audited_as_passed(tmp_path: Any) -> None:
    gov, _, audit = _governor(tmp_path, DenyMethods())
    assert await gov.channel(_projection(), CAN_BE_ASKED, "demo").check_input_requests(ASKS_BOTH) is None
    assert _by_action(audit) == {"sampling/createMessage": ("ok", None), "elicitation/create": ("ok", None)}


@pytest.mark.parametrize("denied", ["sampling/createMessage", "elicitation/create"])
async def test_one_denied_input_request_withholds_the_allowed_ones_in_the_audit(tmp_path: Any, denied: str) -> None:
    engine = DenyMethods(denied)
    gov, _, audit = _governor(tmp_path, engine)
    refusal = await gov.channel(_projection(), CAN_BE_ASKED, "demo").check_input_requests(ASKS_BOTH)
    assert refusal is not None and refusal["code"] == -32003
    allowed = ({"sampling/createMessage", "elicitation/create"} - {denied}).pop()
    assert engine.asked == 2 and len(audit.events) == 2
    assert _by_action(audit) == {denied: ("denied", "policy_denied"), allowed: ("error", "withheld")}


async def test_an_input_request_refused_before_policy_withholds_the_others(tmp_path: Any) -> None:
    engine = DenyMethods()
    gov, _, audit = _governor(tmp_path, engine)
    ctx = dataclasses.replace(CTX, client_capabilities={"elicitation": {}})  # no sampling
    refusal = await gov.channel(_projection(), ctx, "demo").check_input_requests(ASKS_BOTH)
    assert refusal is not None and refusal["data"]["category"] == "capability_not_declared"
    assert engine.asked == 0
    assert _by_action(audit) == {
        "sampling/createMessage": ("rejected", "capability_not_declared"),
        "elicitation/create": ("rejected", "withheld"),
    }
