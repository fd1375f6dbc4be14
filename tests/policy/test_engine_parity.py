"""Parity: the embedded engine decides exactly as the sidecar, over a Hypothesis corpus.

Real parts only: a local stack (control plane + data plane + the OPA sidecar it supervises +
PostgreSQL) serves the sample policy with the whole policy library switched on through the
policy version's data (``data.gateway.rules``). The sidecar is asked over its Data API; the
embedded engine (the pinned OPA's SDK, loaded in this process by
:mod:`gateway.policy.embedded`) fetches the *same* signed bundle from the same control plane
with the same configuration. Every generated input — subjects, roles, scopes, delegation
chains, servers, tools, annotations, arguments, environments, actions — must get the same
``gateway_runtime.main.call`` result (allow, reasons, obligations, revision), and every
generated discovery input the same ``gateway_runtime.main.list`` result.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gateway.config import Config
from gateway.devtools.stack import LocalStack
from gateway.policy.embedded import EmbeddedOpa
from tests.support.stacks import sample_stack

pytestmark = [pytest.mark.integration, pytest.mark.db]

# Every library package configured, so that each can grant or refuse. The time window from
# 00:00 until 00:00 is never open, so "oncall" is refused whatever the time of either decision.
RULES = {
    "rules": {
        "tool_grants": [{"roles": ["deployer"], "server": "ci", "tools": ["deploy*"]}],
        "tool_restrictions": [{"server": "demo", "tools": ["search_docs"], "roles": ["operator", "admin"]}],
        "server_tools": {"github": ["list_*", "get_issue"]},
        "annotations": {"open_world_roles": ["operator"], "non_idempotent_roles": ["admin"]},
        "arguments": [
            {"server": "demo", "tools": ["search_docs"], "argument": "limit", "max": 10, "exempt_roles": ["admin"]},
            {"tools": ["run_sql"], "argument": "query", "pattern": "(?i)\\b(drop|truncate)\\b"},
            {"tools": ["run_sql"], "argument": "database", "values": ["prod", "billing"]},
            {"tools": ["deploy"], "argument": ["target", "region"], "required_pattern": "^eu-[a-z]+-[0-9]$"},
        ],
        "time_windows": [{"roles": ["oncall"], "from": "00:00", "until": "00:00"}],
        "environments": {
            "prod": {
                "destructive_roles": ["admin"],
                "write_roles": ["admin", "operator"],
                "refused_tools": [{"server": "demo", "tools": ["debug_*"]}],
            },
            "staging": {},
        },
        "delegation": {"max_depth": 1, "servers": {"payments": 0}},
    }
}

ROLES = ["viewer", "operator", "admin", "deployer", "oncall", "auditor", "Viewer", ""]
SERVERS = ["demo", "ci", "github", "payments", "unknown"]
TOOLS = ["echo", "get_weather", "search_docs", "create_ticket", "deploy", "deploy_prod", "run_sql", "debug_dump",
         "list_repos", "get_issue", "delete_record"]  # fmt: skip
ACTIONS = ["tools/call", "tools/call", "tools/call", "resources/read", "prompts/get", "logging/setLevel",
           "completion/complete", "sampling/createMessage", "elicitation/create", "unknown/method"]  # fmt: skip
HINTS = ["readOnlyHint", "destructiveHint", "idempotentHint", "openWorldHint"]

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
    st.sampled_from(["DROP table x", "select 1", "prod", "billing", "eu-west-1", "us-east-1", "eu-x-9"]),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
arguments = st.dictionaries(
    st.sampled_from(["limit", "query", "database", "target", "region", "text", "city"]) | st.text(max_size=6),
    json_values,
    max_size=4,
)
actors = st.fixed_dictionaries({"sub": st.sampled_from(["research-agent", "orchestrator", "ci-bot"])})
subjects = st.fixed_dictionaries(
    {
        "sub": st.text(min_size=1, max_size=10),
        "issuer": st.sampled_from(["http://127.0.0.1/dev-idp", "urn:gateway:api-key"]),
        "roles": st.lists(st.sampled_from(ROLES), max_size=3, unique=True),
        "scopes": st.lists(st.sampled_from(["mcp:tools", "mcp:read", "openid"]), max_size=2, unique=True),
        "client_id": st.none() | st.sampled_from(["demo-agent", "api_key:k1"]),
        "claims": st.dictionaries(st.text(max_size=5), json_scalars, max_size=2),
        "groups": st.lists(st.sampled_from(["eng", "ops"]), max_size=2, unique=True),
        "agent": st.none() | st.sampled_from(["demo-agent", "cursor"]),
        "delegation": st.lists(actors, max_size=3),
        "credential_kind": st.sampled_from(["jwt", "api_key"]),
        "key_id": st.none() | st.just("k1"),
    }
)
annotations = st.dictionaries(st.sampled_from(HINTS), st.booleans(), max_size=4)
servers = st.fixed_dictionaries(
    {"name": st.sampled_from(SERVERS), "transport": st.sampled_from(["streamable_http", "legacy_sse", "stdio"])}
)
tools = st.fixed_dictionaries({"name": st.sampled_from(TOOLS) | st.text(max_size=8), "annotations": annotations})


@st.composite
def call_inputs(draw: st.DrawFn) -> dict[str, Any]:
    action = draw(st.sampled_from(ACTIONS))
    doc: dict[str, Any] = {
        "tenant": "tenant_local",
        "environment": draw(st.sampled_from(["prod", "staging", "dev"])),
        "action": action,
        "subject": draw(subjects),
        "server": draw(servers),
        "arguments": draw(arguments),
        "session": {"id": draw(st.none() | st.just("s-1")), "protocol_version": draw(st.sampled_from(["2025-11-25", "2026-07-28"]))},
        "projection": {"version": draw(st.integers(min_value=0, max_value=9))},
    }  # fmt: skip
    if action == "tools/call":
        doc["tool"] = draw(tools)
    elif action == "resources/read":
        doc["resource"] = {"uri": draw(st.sampled_from(["demo://docs/readme", "file:///etc/passwd"]))}
    elif action == "prompts/get":
        doc["prompt"] = {"name": draw(st.sampled_from(["summarize", "triage"]))}
    return doc


@st.composite
def list_inputs(draw: st.DrawFn) -> dict[str, Any]:
    doc = draw(call_inputs())
    doc["action"] = "tools/list"
    for member in ("tool", "resource", "prompt"):
        doc.pop(member, None)
    candidates = draw(st.lists(st.tuples(servers, tools), max_size=6))
    doc["candidates"] = [
        {"key": f"{i}:{server['name']}__{tool['name']}", "server": server, "tool": tool}
        for i, (server, tool) in enumerate(candidates)
    ]
    return doc


class Engines:
    """The two engines, asked for the same document."""

    def __init__(self, stack: LocalStack, embedded: EmbeddedOpa) -> None:
        self.sidecar = httpx.Client(base_url=f"http://127.0.0.1:{stack.opa_port}/v1/data", timeout=10)
        self.embedded = embedded
        self.seen: set[tuple[Any, ...]] = set()

    def both(self, path: str, doc: dict[str, Any]) -> tuple[Any, Any]:
        response = self.sidecar.post(path, content=orjson.dumps({"input": doc}))
        assert response.status_code == 200, response.text
        sidecar = response.json().get("result")
        answer = self.embedded.decide_raw(path.encode(), orjson.dumps(doc))
        assert "error" not in answer or answer["error"]["code"] == "opa_undefined_error", answer
        return sidecar, answer.get("result")


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory, pg_admin_url: str, opa_bin: Path, embedded_opa_lib: Path) -> Iterator[Engines]:  # fmt: skip
    run_dir = tmp_path_factory.mktemp("parity")
    with sample_stack(run_dir, pg_admin_url, opa_bin, policy_data=RULES) as stack:
        desired = stack.wait_projection_active()["desired_version"]
        env = stack.gateway_env() | {
            "GATEWAY_PLANE": "data",
            "GATEWAY_DECISION_ENGINE": "embedded",
            "GATEWAY_OPA_EMBEDDED_LIB": str(embedded_opa_lib),
            "GATEWAY_DATAPLANE_ID": "dp-parity",
        }
        config = Config.from_env(env)
        embedded = EmbeddedOpa(config)
        embedded.start()
        try:
            deadline = time.monotonic() + 30
            while not embedded.bundle_active():
                assert time.monotonic() < deadline, f"the embedded engine never activated a bundle: {run_dir}"
                time.sleep(0.02)
            both = Engines(stack, embedded)
            revisions = both.both("/gateway_runtime/main/list", {"action": "tools/list", "candidates": []})
            assert revisions[0] == revisions[1] and revisions[0]["revision"].startswith(f"p{desired}-"), revisions
            yield both
        finally:
            embedded.close()


def _call(
    roles: list[str],
    server: str,
    tool: str,
    annotations: dict[str, bool] | None = None,
    arguments: dict[str, Any] | None = None,
    environment: str = "prod",
    delegation: int = 0,
) -> dict[str, Any]:
    """A tools/call input that names one library rule's case (the corpus below always has these)."""
    return {
        "tenant": "tenant_local",
        "environment": environment,
        "action": "tools/call",
        "subject": {
            "sub": "alice", "issuer": "http://127.0.0.1/dev-idp", "roles": roles, "scopes": [], "client_id": None,
            "claims": {}, "groups": [], "agent": None, "delegation": [{"sub": "research-agent"}] * delegation,
            "credential_kind": "jwt", "key_id": None,
        },
        "server": {"name": server, "transport": "streamable_http"},
        "tool": {"name": tool, "annotations": annotations or {}},
        "arguments": arguments or {},
        "session": {"id": None, "protocol_version": "2026-07-28"},
        "projection": {"version": 1},
    }  # fmt: skip


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=call_inputs())
@example(doc=_call(["deployer"], "ci", "deploy_prod"))  # granted_by_tool_grant
@example(doc=_call(["viewer"], "demo", "search_docs"))  # tool_restricted_to_roles
@example(doc=_call(["viewer"], "github", "create_ticket"))  # tool_not_allowed_on_server
@example(doc=_call(["viewer"], "demo", "echo", {"openWorldHint": True}))  # open_world_tool_requires_role
@example(doc=_call(["viewer"], "demo", "echo", {"idempotentHint": False}))  # non_idempotent_tool_requires_role
@example(doc=_call(["admin"], "demo", "run_sql", arguments={"query": "DROP TABLE t", "database": "dev"}))
@example(doc=_call(["oncall"], "demo", "echo"))  # outside_time_window
@example(doc=_call(["viewer"], "demo", "delete_record", {"destructiveHint": True}))  # destructive in prod
@example(doc=_call(["operator"], "payments", "echo", delegation=1))  # delegation_depth_exceeded
@example(doc=_call(["viewer"], "demo", "debug_dump"))  # tool_refused_in_environment
def test_every_generated_call_gets_the_same_decision_from_both_engines(engines: Engines, doc: dict[str, Any]) -> None:
    sidecar, embedded = engines.both("/gateway_runtime/main/call", doc)
    assert embedded == sidecar
    decision = sidecar["decision"]
    engines.seen.add((decision["allow"], *decision["reasons"]))


def test_the_call_corpus_exercised_allows_denials_and_the_library(engines: Engines) -> None:
    """Guards the corpus itself (runs after the test above, which records what it saw): a
    corpus that only ever met one outcome would make the parity vacuous."""
    outcomes = engines.seen
    assert any(allow for allow, *_ in outcomes) and any(not allow for allow, *_ in outcomes), outcomes
    reasons = {r for _, *rs in outcomes for r in rs}
    library = {
        "granted_by_tool_grant", "tool_restricted_to_roles", "tool_not_allowed_on_server",
        "open_world_tool_requires_role", "non_idempotent_tool_requires_role", "argument_above_maximum",
        "argument_matches_refused_pattern", "argument_value_refused", "argument_does_not_match_pattern",
        "outside_time_window", "destructive_tool_refused_in_environment", "write_tool_refused_in_environment",
        "tool_refused_in_environment", "delegation_depth_exceeded",
    }  # fmt: skip
    assert len(reasons & library) >= 8, sorted(reasons)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=list_inputs())
def test_every_generated_discovery_gets_the_same_filter_from_both_engines(engines: Engines, doc: dict[str, Any]) -> None:  # fmt: skip
    sidecar, embedded = engines.both("/gateway_runtime/main/list", doc)
    assert embedded == sidecar
