"""Resources, prompts, completion and logging through the PEP, with in-memory doubles behind
its ports (PolicyEngine, upstream pool, audit), and through the in-process endpoint."""

from __future__ import annotations

import types
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.dataplane.feature_routing import advertised_capabilities, serve_feature
from gateway.dataplane.features import FeatureGovernor
from gateway.dataplane.governance import CallContext
from gateway.dataplane.projection import ActiveProjection, compile_projection
from gateway.dataplane.session_seal import session_ref
from gateway.devtools.idp import DevIdentityProvider
from gateway.errors import UpstreamUnavailable
from gateway.mcp.messages import parse_message
from gateway.policy.decision import Decision, ListDecision
from gateway.policy.input import Subject
from tests.dataplane.test_audit import _config
from tests.dataplane.test_endpoint import ENVELOPE, Gateway, _auth, _initialize, _legacy, _modern_headers
from tests.dataplane.test_governance import Audit

pytestmark = pytest.mark.anyio

ALICE = Subject("alice", "https://idp.test", ("viewer",))
AGGREGATED = CallContext(ALICE, None, "2026-07-28", None)
PER_SERVER = CallContext(ALICE, "s-1", "2025-11-25", "demo")
FEATURES = {"resources": {}, "prompts": {}, "completions": {}, "logging": {}}
PROMPTS = [
    {
        "name": "incident_report",
        "arguments": [{"name": "service", "required": True}, {"name": "severity"}],
    },
    {"name": "weather_brief", "arguments": [{"name": "city", "required": True}]},
]


def _projection(demo_caps: dict[str, Any] | None = None, other_caps: dict[str, Any] | None = None) -> ActiveProjection:
    return compile_projection(
        {
            "version": 5,
            "policy_version": 2,
            "revision": "p5-pv2",
            "servers": [
                {
                    "name": "demo",
                    "transport": "streamable_http",
                    "url": "http://demo/mcp",
                    "tools": [{"name": "echo", "inputSchema": {"type": "object"}}],
                    "prompts": PROMPTS,
                    "capabilities": FEATURES if demo_caps is None else demo_caps,
                },
                {
                    "name": "other",
                    "transport": "streamable_http",
                    "url": "http://other/mcp",
                    "tools": [],
                    "capabilities": {"resources": {}, "logging": {}} if other_caps is None else other_caps,
                },
            ],
        }
    )


class Engine:
    """A PDP double: ``allow(input)`` decides calls and every list candidate; records every input."""

    def __init__(self, allow: Callable[[dict[str, Any]], bool] = lambda doc: True) -> None:
        self.allow = allow
        self.inputs: list[dict[str, Any]] = []

    async def decide(self, doc: dict[str, Any]) -> Decision:
        self.inputs.append(doc)
        return Decision(self.allow(doc), ("r",), {}, f"d{len(self.inputs)}", "p5-pv2")

    async def visible(self, doc: dict[str, Any]) -> ListDecision:
        self.inputs.append(doc)
        base = {k: v for k, v in doc.items() if k != "candidates"}
        allowed = {c["key"] for c in doc["candidates"] if self.allow({**base, **c})}
        return ListDecision(frozenset(allowed), "list-1", "p5-pv2")


class Upstreams:
    """Per-server upstream doubles: ``answers[(server, method)]`` is a reply, a list of replies
    (one per request, in turn), or an exception; records ``(server, method, params)``."""

    def __init__(self, answers: dict[tuple[str, str], Any] | None = None) -> None:
        self.answers = answers or {}
        self.calls: list[tuple[str, str, dict[str, Any]]] = []

    def get(self, name: str, transport: str, url: str, caller: Any = None, credential: Any = None) -> Any:
        upstreams = self

        class One:
            async def request(self, method: str, params: dict[str, Any], channel: Any = None) -> dict[str, Any]:
                upstreams.calls.append((name, method, params))
                answer = upstreams.answers.get((name, method), {"result": {}})
                if isinstance(answer, list):
                    answer = answer.pop(0)
                if isinstance(answer, BaseException):
                    raise answer
                return {"jsonrpc": "2.0", "id": 1, **answer}

        return One()


def _governor(
    tmp_path: Path, engine: Engine | None = None, upstreams: Upstreams | None = None
) -> tuple[FeatureGovernor, Engine, Upstreams, Audit]:
    engine, upstreams, audit = engine or Engine(), upstreams or Upstreams(), Audit()
    return FeatureGovernor(_config(tmp_path), engine, upstreams, audit), engine, upstreams, audit  # type: ignore[arg-type]


# ------------------------------------------------------------------ prompts
async def test_prompts_list_is_the_pinned_prompts_namespaced_and_filtered_in_one_query(tmp_path: Path) -> None:
    engine = Engine(lambda doc: doc.get("prompt", {}).get("name") != "weather_brief")
    gov, _, upstreams, audit = _governor(tmp_path, engine)
    prompts = await gov.list_prompts(_projection(), AGGREGATED)
    assert prompts == [{**PROMPTS[0], "name": "demo__incident_report"}]
    [doc] = engine.inputs
    assert doc["action"] == "prompts/list"
    assert doc["candidates"][1] == {
        "key": "demo__weather_brief",
        "server": {"name": "demo", "transport": "streamable_http"},
        "prompt": {"name": "weather_brief", "arguments": {}},
    }
    assert upstreams.calls == [], "prompts are pinned at approval, never listed live"
    assert (audit.events[-1]["action"], audit.events[-1]["reasons"]) == ("prompts/list", ["listed:1/2"])


async def test_prompts_list_on_the_per_server_endpoint_keeps_plain_names(tmp_path: Path) -> None:
    gov, *_ = _governor(tmp_path)
    names = [p["name"] for p in await gov.list_prompts(_projection(), PER_SERVER)]
    assert names == ["incident_report", "weather_brief"]


async def test_an_allowed_prompts_get_is_decided_on_the_prompt_and_forwarded_with_its_own_name(tmp_path: Path) -> None:
    embedded = {"type": "resource", "resource": {"uri": "demo://weather/Paris", "text": "t"}}
    result = {"messages": [{"role": "user", "content": embedded}]}
    gov, engine, upstreams, audit = _governor(
        tmp_path, upstreams=Upstreams({("demo", "prompts/get"): {"result": result}})
    )
    params = {"name": "demo__weather_brief", "arguments": {"city": "Paris"}, "_meta": {"x": 1}}
    reply = await gov.get_prompt(_projection(), AGGREGATED, 7, params)
    assert upstreams.calls == [("demo", "prompts/get", {"name": "weather_brief", "arguments": {"city": "Paris"}})]
    assert reply["id"] == 7
    assert reply["result"]["messages"][0]["content"]["resource"]["uri"] == "mcp-gw://demo/demo://weather/Paris"
    [doc] = engine.inputs
    assert doc["action"] == "prompts/get" and "tool" not in doc and "resource" not in doc
    assert doc["prompt"] == {"name": "weather_brief", "arguments": {"city": "Paris"}}
    assert doc["server"] == {"name": "demo", "transport": "streamable_http"}
    event = audit.events[-1]
    assert (event["action"], event["server"], event["tool"], event["status"]) == (
        "prompts/get",
        "demo",
        "weather_brief",
        "ok",
    )
    assert event["decision_id"] == "d1" and event["arguments_sha256"] and "Paris" not in str(event)


@pytest.mark.parametrize(
    ("arguments", "category", "fragment"),
    [
        pytest.param(
            {"severity": "high"}, "invalid_arguments", "missing required argument(s) ['service']", id="missing"
        ),
        pytest.param({"service": "vpn", "x": "1"}, "invalid_arguments", "undeclared argument(s) ['x']", id="unknown"),
        pytest.param({"service": 1}, "bad_request", "strings", id="not-a-string"),
        pytest.param(["service"], "bad_request", "strings", id="not-an-object"),
    ],
)
async def test_prompt_arguments_are_checked_against_the_declared_ones_before_policy(
    tmp_path: Path, arguments: Any, category: str, fragment: str
) -> None:
    gov, engine, upstreams, audit = _governor(tmp_path)
    reply = await gov.get_prompt(
        _projection(), AGGREGATED, 1, {"name": "demo__incident_report", "arguments": arguments}
    )
    assert reply["error"]["code"] == -32602 and reply["error"]["data"] == {"category": category}
    assert fragment in reply["error"]["message"]
    assert engine.inputs == [] and upstreams.calls == []
    assert (audit.events[-1]["status"], audit.events[-1]["error_category"]) == ("rejected", category)


async def test_an_unknown_prompt_is_an_audited_32602_naming_it(tmp_path: Path) -> None:
    gov, engine, upstreams, audit = _governor(tmp_path)
    # on /mcp the name must be namespaced: the plain upstream name is unknown there
    reply = await gov.get_prompt(_projection(), AGGREGATED, 1, {"name": "incident_report", "arguments": {"k": "s3"}})
    assert reply["error"]["code"] == -32602 and reply["error"]["data"] == {"category": "unknown_prompt"}
    event = audit.events[-1]
    assert (event["action"], event["tool"], event["status"]) == ("prompts/get", "incident_report", "rejected")
    assert "s3" not in str(event) and engine.inputs == [] and upstreams.calls == []


async def test_a_denied_prompts_get_never_reaches_the_upstream(tmp_path: Path) -> None:
    gov, _, upstreams, audit = _governor(tmp_path, Engine(lambda doc: False))
    reply = await gov.get_prompt(_projection(), PER_SERVER, 1, {"name": "weather_brief", "arguments": {"city": "x"}})
    assert reply["error"]["code"] == -32003
    assert reply["error"]["data"] == {"category": "policy_denied", "reasons": ["r"], "decision_id": "d1"}
    assert upstreams.calls == [] and audit.events[-1]["status"] == "denied"


async def test_an_unexpected_params_key_is_refused(tmp_path: Path) -> None:
    gov, _, upstreams, audit = _governor(tmp_path)
    params = {"name": "weather_brief", "arguments": {"city": "x"}, "requestState": "s"}
    reply = await gov.get_prompt(_projection(), PER_SERVER, 1, params)
    assert reply["error"]["data"] == {"category": "unexpected_param"} and "'requestState'" in reply["error"]["message"]
    assert upstreams.calls == [] and audit.events[-1]["error_category"] == "unexpected_param"


async def test_an_unexpected_failure_is_audited_once_then_raised(tmp_path: Path) -> None:
    upstreams = Upstreams({("demo", "prompts/get"): RuntimeError("boom")})
    gov, _, _, audit = _governor(tmp_path, upstreams=upstreams)
    with pytest.raises(RuntimeError):
        await gov.get_prompt(_projection(), PER_SERVER, 1, {"name": "weather_brief", "arguments": {"city": "x"}})
    assert [(e["action"], e["error_category"]) for e in audit.events] == [("prompts/get", "internal_error")]


# ------------------------------------------------------------------ resources
async def test_resources_read_on_mcp_forwards_the_original_uri_and_namespaces_the_contents(tmp_path: Path) -> None:
    result = {"contents": [{"uri": "demo://docs/readme", "text": "hi"}]}
    gov, engine, upstreams, audit = _governor(
        tmp_path, upstreams=Upstreams({("demo", "resources/read"): {"result": result}})
    )
    reply = await gov.read_resource(_projection(), AGGREGATED, 3, {"uri": "mcp-gw://demo/demo://docs/readme"})
    assert upstreams.calls == [("demo", "resources/read", {"uri": "demo://docs/readme"})]
    assert reply["result"]["contents"] == [{"uri": "mcp-gw://demo/demo://docs/readme", "text": "hi"}]
    [doc] = engine.inputs
    assert doc["action"] == "resources/read" and doc["resource"] == {"uri": "demo://docs/readme", "server": "demo"}
    assert (audit.events[-1]["tool"], audit.events[-1]["server"]) == ("demo://docs/readme", "demo")


async def test_resources_read_on_the_per_server_endpoint_is_plain(tmp_path: Path) -> None:
    result = {"contents": [{"uri": "demo://docs/readme", "text": "hi"}]}
    gov, _, upstreams, _ = _governor(tmp_path, upstreams=Upstreams({("demo", "resources/read"): {"result": result}}))
    reply = await gov.read_resource(_projection(), PER_SERVER, 3, {"uri": "demo://docs/readme"})
    assert upstreams.calls == [("demo", "resources/read", {"uri": "demo://docs/readme"})]
    assert reply["result"] == result


@pytest.mark.parametrize(
    ("ctx", "uri"),
    [
        pytest.param(AGGREGATED, "demo://docs/readme", id="not-namespaced-on-mcp"),
        pytest.param(AGGREGATED, "mcp-gw://nope/demo://x", id="unknown-server"),
        pytest.param(AGGREGATED, "mcp-gw://other/demo://x", id="server-without-resources"),
    ],
)
async def test_an_unknown_resource_is_an_audited_32602(tmp_path: Path, ctx: CallContext, uri: str) -> None:
    gov, engine, upstreams, audit = _governor(tmp_path)
    projection = _projection(other_caps={"logging": {}})
    reply = await gov.read_resource(projection, ctx, 1, {"uri": uri})
    assert reply["error"]["code"] == -32602 and reply["error"]["data"] == {"category": "unknown_resource"}
    assert engine.inputs == [] and upstreams.calls == []
    assert (audit.events[-1]["action"], audit.events[-1]["tool"]) == ("resources/read", uri)


async def test_an_upstream_error_to_a_read_is_relayed_and_audited_as_such(tmp_path: Path) -> None:
    error = {"code": -32602, "message": "Resource not found"}
    gov, _, _, audit = _governor(tmp_path, upstreams=Upstreams({("demo", "resources/read"): {"error": error}}))
    reply = await gov.read_resource(_projection(), PER_SERVER, 2, {"uri": "demo://nope"})
    assert reply == {"jsonrpc": "2.0", "id": 2, "error": error}
    assert audit.events[-1]["status"] == "tool_error" and audit.events[-1]["allowed"] is True


async def test_resources_list_is_live_from_every_server_paged_and_filtered(tmp_path: Path) -> None:
    answers: dict[tuple[str, str], Any] = {
        ("demo", "resources/list"): [
            {"result": {"resources": [{"uri": "demo://a", "name": "a"}], "nextCursor": "c2"}},
            {"result": {"resources": [{"uri": "demo://internal/b", "name": "b"}, {"name": "no uri"}]}},
        ],
        ("other", "resources/list"): {"result": {"resources": [{"uri": "file:///x", "name": "x"}]}},
    }
    engine = Engine(lambda doc: "internal" not in doc["resource"]["uri"])
    gov, _, upstreams, audit = _governor(tmp_path, engine, Upstreams(answers))
    reply = await gov.list_resources(_projection(), AGGREGATED, 4)
    assert reply["result"] == {
        "resources": [
            {"uri": "mcp-gw://demo/demo://a", "name": "a"},
            {"uri": "mcp-gw://other/file:///x", "name": "x"},
        ]
    }
    demo_calls = [params for server, _, params in upstreams.calls if server == "demo"]
    assert demo_calls == [{}, {"cursor": "c2"}]
    [doc] = engine.inputs
    assert doc["action"] == "resources/list"
    assert [c["resource"] for c in doc["candidates"]] == [
        {"uri": "demo://a", "server": "demo"},
        {"uri": "demo://internal/b", "server": "demo"},
        {"uri": "file:///x", "server": "other"},
    ]
    assert (audit.events[-1]["reasons"], audit.events[-1]["status"]) == (["listed:2/3"], "ok")


async def test_an_upstream_that_fails_to_list_is_left_out_and_audited(tmp_path: Path) -> None:
    answers = {
        ("demo", "resources/list"): UpstreamUnavailable("down"),
        ("other", "resources/list"): {"result": {"resources": [{"uri": "file:///x", "name": "x"}]}},
    }
    gov, _, _, audit = _governor(tmp_path, upstreams=Upstreams(answers))
    reply = await gov.list_resources(_projection(), AGGREGATED, 4)
    assert [r["uri"] for r in reply["result"]["resources"]] == ["mcp-gw://other/file:///x"]
    event = audit.events[-1]
    assert (event["status"], event["error_category"], event["reasons"]) == (
        "error",
        "upstream_unavailable",
        ["listed:1/1"],
    )


async def test_every_upstream_failing_to_list_is_32004(tmp_path: Path) -> None:
    answers = {("demo", "resources/list"): {"error": {"code": -32601, "message": "Method not found"}}}
    gov, _, _, audit = _governor(tmp_path, upstreams=Upstreams(answers))
    reply = await gov.list_resources(_projection(), PER_SERVER, 4)
    assert reply["error"]["code"] == -32004
    assert reply["error"]["data"] == {"category": "upstream_protocol_error"}
    assert audit.events[-1]["status"] == "error" and audit.events[-1]["allowed"] is False


async def test_resource_templates_are_namespaced_and_judged_as_resources(tmp_path: Path) -> None:
    templates = {"resourceTemplates": [{"uriTemplate": "demo://weather/{city}", "name": "w"}]}
    answers = {("demo", "resources/templates/list"): {"result": templates}}
    gov, engine, _, audit = _governor(tmp_path, upstreams=Upstreams(answers))
    reply = await gov.list_resources(_projection(other_caps={}), AGGREGATED, 4, templates=True)
    assert reply["result"] == {
        "resourceTemplates": [{"uriTemplate": "mcp-gw://demo/demo://weather/{city}", "name": "w"}]
    }
    assert engine.inputs[0]["action"] == "resources/templates/list"
    assert engine.inputs[0]["candidates"][0]["resource"] == {"uri": "demo://weather/{city}", "server": "demo"}
    assert audit.events[-1]["action"] == "resources/templates/list"


async def test_resource_links_in_tool_results_are_namespaced_on_mcp_only(tmp_path: Path) -> None:
    link = {"type": "resource_link", "uri": "demo://a", "name": "a"}
    result = {"content": [link, {"type": "text", "text": "t"}], "isError": False}
    answers = {("demo", "tools/call"): {"result": result}}
    gov, *_ = _governor(tmp_path, upstreams=Upstreams(answers))
    reply = await gov.call_tool(_projection(), AGGREGATED, 1, {"name": "demo__echo", "arguments": {}})
    assert reply["result"]["content"] == [{**link, "uri": "mcp-gw://demo/demo://a"}, {"type": "text", "text": "t"}]
    fresh = {"content": [dict(link)], "isError": False}
    gov, *_ = _governor(tmp_path, upstreams=Upstreams({("demo", "tools/call"): {"result": fresh}}))
    reply = await gov.call_tool(_projection(), PER_SERVER, 1, {"name": "echo", "arguments": {}})
    assert reply["result"]["content"][0] == link


# ------------------------------------------------------------------ completion
async def test_completing_a_template_argument_is_decided_on_the_template_and_forwarded(tmp_path: Path) -> None:
    completion = {"completion": {"values": ["paris"], "hasMore": False}}
    answers = {("demo", "completion/complete"): {"result": completion}}
    gov, engine, upstreams, audit = _governor(tmp_path, upstreams=Upstreams(answers))
    params = {
        "ref": {"type": "ref/resource", "uri": "mcp-gw://demo/demo://weather/{city}"},
        "argument": {"name": "city", "value": "pa"},
        "context": {"arguments": {"country": "fr"}},
    }
    reply = await gov.complete(_projection(), AGGREGATED, 5, params)
    assert reply["result"] == completion
    forwarded = {**params, "ref": {"type": "ref/resource", "uri": "demo://weather/{city}"}}
    assert upstreams.calls == [("demo", "completion/complete", forwarded)]
    [doc] = engine.inputs
    assert doc["action"] == "completion/complete"
    assert doc["resource"] == {"uri": "demo://weather/{city}", "server": "demo"}
    assert doc["arguments"] == {"country": "fr", "city": "pa"}
    assert audit.events[-1]["tool"] == "demo://weather/{city}"


async def test_completing_a_prompt_argument_needs_a_declared_argument(tmp_path: Path) -> None:
    gov, engine, upstreams, audit = _governor(tmp_path)
    params = {"ref": {"type": "ref/prompt", "name": "demo__incident_report"}, "argument": {"name": "x", "value": "v"}}
    reply = await gov.complete(_projection(), AGGREGATED, 5, params)
    assert reply["error"]["data"] == {"category": "invalid_arguments"}
    assert engine.inputs == [] and upstreams.calls == [] and audit.events[-1]["tool"] == "incident_report"


async def test_completing_a_prompt_argument_carries_the_prompt_and_its_values(tmp_path: Path) -> None:
    gov, engine, upstreams, _ = _governor(tmp_path)
    params = {"ref": {"type": "ref/prompt", "name": "incident_report"}, "argument": {"name": "service", "value": "b"}}
    await gov.complete(_projection(), PER_SERVER, 5, params)
    assert engine.inputs[0]["prompt"] == {"name": "incident_report", "arguments": {"service": "b"}}
    assert upstreams.calls[0][2]["ref"] == {"type": "ref/prompt", "name": "incident_report"}


async def test_a_server_without_completions_is_not_asked_and_the_completion_is_empty(tmp_path: Path) -> None:
    gov, engine, upstreams, audit = _governor(tmp_path)
    projection = _projection(demo_caps={"resources": {}, "prompts": {}})
    params = {"ref": {"type": "ref/prompt", "name": "incident_report"}, "argument": {"name": "service", "value": "b"}}
    reply = await gov.complete(projection, PER_SERVER, 5, params)
    assert reply["result"] == {"completion": {"values": [], "hasMore": False}}
    assert len(engine.inputs) == 1 and upstreams.calls == [] and audit.events[-1]["status"] == "ok"


@pytest.mark.parametrize(
    "params",
    [
        {"ref": {"type": "ref/tool", "name": "x"}, "argument": {"name": "a", "value": "b"}},
        {"ref": {"type": "ref/prompt"}, "argument": {"name": "a", "value": "b"}},
        {"ref": {"type": "ref/prompt", "name": "incident_report"}, "argument": {"name": "service"}},
        {
            "ref": {"type": "ref/prompt", "name": "incident_report"},
            "argument": {"name": "service", "value": "b"},
            "context": {"arguments": {"a": 1}},
        },
    ],
)
async def test_a_malformed_completion_request_is_a_bad_request(tmp_path: Path, params: dict[str, Any]) -> None:
    gov, engine, _, audit = _governor(tmp_path)
    reply = await gov.complete(_projection(), PER_SERVER, 5, params)
    assert reply["error"]["data"] == {"category": "bad_request"} and engine.inputs == []
    assert audit.events[-1]["action"] == "completion/complete"


# ------------------------------------------------------------------ logging
async def test_set_level_is_one_decision_without_a_server_on_mcp_and_reaches_every_logging_server(
    tmp_path: Path,
) -> None:
    modern = {"error": {"code": -32601, "message": "Method not found"}}
    gov, engine, upstreams, audit = _governor(tmp_path, upstreams=Upstreams({("other", "logging/setLevel"): modern}))
    reply = await gov.set_logging_level(_projection(), AGGREGATED, 6, {"level": "debug"})
    assert reply == {"jsonrpc": "2.0", "id": 6, "result": {}}
    assert sorted(upstreams.calls) == [
        ("demo", "logging/setLevel", {"level": "debug"}),
        ("other", "logging/setLevel", {"level": "debug"}),
    ]
    [doc] = engine.inputs
    assert doc["action"] == "logging/setLevel" and "server" not in doc and doc["arguments"] == {"level": "debug"}
    assert (audit.events[-1]["status"], audit.events[-1]["server"]) == ("ok", None)


async def test_set_level_on_a_server_endpoint_names_the_server_and_relays_its_error(tmp_path: Path) -> None:
    error = {"code": -32603, "message": "nope"}
    gov, engine, upstreams, audit = _governor(
        tmp_path, upstreams=Upstreams({("demo", "logging/setLevel"): {"error": error}})
    )
    reply = await gov.set_logging_level(_projection(), PER_SERVER, 6, {"level": "info"})
    assert reply["error"] == error and [c[0] for c in upstreams.calls] == ["demo"]
    assert engine.inputs[0]["server"] == {"name": "demo", "transport": "streamable_http"}
    assert audit.events[-1]["status"] == "tool_error"


async def test_one_unreachable_logging_server_does_not_fail_the_others(tmp_path: Path) -> None:
    answers = {("other", "logging/setLevel"): UpstreamUnavailable("down")}
    gov, _, upstreams, audit = _governor(tmp_path, upstreams=Upstreams(answers))
    reply = await gov.set_logging_level(_projection(), AGGREGATED, 6, {"level": "debug"})
    assert reply["result"] == {} and {c[0] for c in upstreams.calls} == {"demo", "other"}
    assert (audit.events[-1]["status"], audit.events[-1]["error_category"]) == ("error", "upstream_unavailable")
    # every server failing is -32004
    gov, _, _, audit = _governor(tmp_path, upstreams=Upstreams(answers))
    reply = await gov.set_logging_level(_projection(demo_caps={}), AGGREGATED, 6, {"level": "debug"})
    assert reply["error"]["code"] == -32004 and reply["error"]["data"]["category"] == "upstream_unavailable"


async def test_an_unknown_level_is_invalid_and_never_decided(tmp_path: Path) -> None:
    gov, engine, upstreams, audit = _governor(tmp_path)
    reply = await gov.set_logging_level(_projection(), AGGREGATED, 6, {"level": "verbose"})
    assert reply["error"]["data"] == {"category": "invalid_arguments"}
    assert engine.inputs == [] and upstreams.calls == [] and audit.events[-1]["status"] == "rejected"


# ------------------------------------------------------------------ capabilities and routing
def test_capabilities_are_the_union_on_mcp_and_the_server_s_own_on_mcp_server() -> None:
    projection = _projection(demo_caps={"prompts": {}}, other_caps={"resources": {"subscribe": True}, "logging": {}})
    assert advertised_capabilities(projection, None, handshake=True) == {
        "tools": {"listChanged": True},
        "resources": {"subscribe": True, "listChanged": True},
        "prompts": {"listChanged": True},
        "logging": {},
    }
    assert advertised_capabilities(projection, "demo", handshake=True) == {
        "tools": {"listChanged": True},
        "prompts": {"listChanged": True},
    }
    assert "logging" not in advertised_capabilities(projection, None, handshake=False)
    assert advertised_capabilities(None, None, handshake=True) == {"tools": {"listChanged": True}}
    # subscribe only where a server of the endpoint declared it
    plain = _projection(demo_caps={"resources": {}}, other_caps={"resources": {"subscribe": False}})
    assert advertised_capabilities(plain, None, handshake=True)["resources"] == {
        "subscribe": False,
        "listChanged": True,
    }


async def test_a_method_the_endpoint_does_not_advertise_is_32601_and_not_governed(tmp_path: Path) -> None:
    gov, engine, upstreams, audit = _governor(tmp_path)
    projection = _projection(demo_caps={"prompts": {}}, other_caps={})
    msg = parse_message(b'{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"demo://x"}}')
    reply = await serve_feature(gov, projection, msg, PER_SERVER, handshake=True)
    assert reply == {
        "jsonrpc": "2.0",
        "id": 1,
        "error": {"code": -32601, "message": "Method not found: resources/read"},
    }
    assert audit.events == [] and engine.inputs == [] and upstreams.calls == []


async def test_subscribe_is_governed_like_a_read_and_refused_where_not_offered(tmp_path: Path) -> None:
    gov, engine, upstreams, audit = _governor(tmp_path)
    applied: list[tuple[str, str]] = []
    projection = _projection(demo_caps={"resources": {"subscribe": True}}, other_caps={"resources": {}})

    def apply(server: Any, uri: str, credential: Any) -> None:
        applied.append((server.name, uri))

    ctx = CallContext(ALICE, "s1", "2025-11-25", None)
    ok = await gov.subscription(
        projection, ctx, 1, {"uri": "mcp-gw://demo/demo://x"}, method="resources/subscribe", apply=apply
    )
    refused = await gov.subscription(
        projection, ctx, 2, {"uri": "mcp-gw://other/o://y"}, method="resources/subscribe", apply=apply
    )
    assert ok == {"jsonrpc": "2.0", "id": 1, "result": {}} and applied == [("demo", "demo://x")]
    assert refused["error"]["code"] == -32602 and refused["error"]["data"]["category"] == "unknown_resource"
    assert engine.inputs[0]["action"] == "resources/subscribe" and engine.inputs[0]["resource"] == {
        "uri": "demo://x",
        "server": "demo",
    }
    assert [e["status"] for e in audit.events] == ["ok", "rejected"] and upstreams.calls == []


# ------------------------------------------------------------------ through the endpoint (both eras)
@pytest.fixture
async def features(idp: DevIdentityProvider, tmp_path: Path) -> AsyncIterator[tuple[Gateway, httpx.AsyncClient]]:
    async with httpx.AsyncClient() as cp_http:
        gateway = Gateway(idp, tmp_path, cp_http)
        upstreams = Upstreams(
            {
                ("demo", "resources/read"): {
                    "result": {"contents": [{"uri": "demo://a", "text": "x"}], "ttlMs": 5000, "cacheScope": "public"}
                },
                ("demo", "resources/list"): {"result": {"resources": [{"uri": "demo://a", "name": "a"}]}},
            }
        )
        gateway.upstreams = upstreams  # type: ignore[assignment]
        gateway.state["dp_sync"] = types.SimpleNamespace(current=_projection())
        gateway.state["dp_governor"] = FeatureGovernor(gateway.config, Engine(), upstreams, gateway.audit)  # type: ignore[arg-type]
        async with gateway.client() as http:
            yield gateway, http


@pytest.fixture
def idp(tmp_path_factory: pytest.TempPathFactory) -> DevIdentityProvider:
    return DevIdentityProvider.create(tmp_path_factory.mktemp("idp"), "https://idp.test.invalid")


def _modern(method: str, params: dict[str, Any]) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": 9, "method": method, "params": {**params, "_meta": ENVELOPE}}


async def test_modern_read_is_always_private_and_keeps_the_upstream_ttl(
    features: tuple[Gateway, httpx.AsyncClient],
) -> None:
    gateway, http = features
    uri = "mcp-gw://demo/demo://a"
    resp = await http.post(
        "/mcp", json=_modern("resources/read", {"uri": uri}), headers=_modern_headers(gateway, "resources/read", uri)
    )
    result = resp.json()["result"]
    assert resp.status_code == 200
    assert (result["resultType"], result["ttlMs"], result["cacheScope"]) == ("complete", 5000, "private")
    assert result["contents"][0]["uri"] == uri


async def test_modern_lists_are_private_and_immediately_stale(features: tuple[Gateway, httpx.AsyncClient]) -> None:
    gateway, http = features
    for method in ("resources/list", "prompts/list"):
        resp = await http.post("/mcp", json=_modern(method, {}), headers=_modern_headers(gateway, method))
        result = resp.json()["result"]
        assert (result["resultType"], result["ttlMs"], result["cacheScope"]) == ("complete", 0, "private"), method


async def test_a_modern_mcp_name_that_disagrees_with_the_uri_is_400_and_not_governed(
    features: tuple[Gateway, httpx.AsyncClient],
) -> None:
    gateway, http = features
    body = _modern("resources/read", {"uri": "mcp-gw://demo/demo://a"})
    resp = await http.post("/mcp", json=body, headers=_modern_headers(gateway, "resources/read", "mcp-gw://demo/x"))
    assert resp.status_code == 400 and resp.json()["error"]["code"] == -32020
    assert gateway.audit.events == []


async def test_logging_set_level_is_not_a_2026_method(features: tuple[Gateway, httpx.AsyncClient]) -> None:
    gateway, http = features
    resp = await http.post(
        "/mcp",
        json=_modern("logging/setLevel", {"level": "info"}),
        headers=_modern_headers(gateway, "logging/setLevel"),
    )
    assert resp.status_code == 404 and resp.json()["error"]["code"] == -32601 and gateway.audit.events == []


async def test_initialize_and_discover_advertise_the_approved_servers_capabilities(
    features: tuple[Gateway, httpx.AsyncClient],
) -> None:
    gateway, http = features
    body = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {"protocolVersion": "2025-11-25"}}
    caps = (await http.post("/mcp", json=body, headers=_auth(gateway))).json()["result"]["capabilities"]
    assert set(caps) == {"tools", "resources", "prompts", "completions", "logging"}
    discover = _modern("server/discover", {})
    resp = await http.post("/mcp/other", json=discover, headers=_modern_headers(gateway, "server/discover"))
    assert set(resp.json()["result"]["capabilities"]) == {"tools", "resources"}


async def test_handshake_era_prompts_get_through_a_session(features: tuple[Gateway, httpx.AsyncClient]) -> None:
    gateway, http = features
    session = await _initialize(http, gateway)
    resp = await _legacy(http, gateway, session, "prompts/get", {"name": "demo__nope"})
    assert resp.status_code == 200 and resp.json()["error"]["data"] == {"category": "unknown_prompt"}
    event = gateway.audit.events[-1]
    assert (event["action"], event["session_id"], event["protocol_version"]) == (
        "prompts/get",
        session_ref(session),
        "2025-11-25",
    )
