"""Tests for gateway.policy.input: the OPA input documents."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway.policy.input import Candidate, Subject, build_discovery_input, build_input

ALICE = Subject(
    sub="alice",
    issuer="https://idp.test.invalid",
    roles=("viewer", "operator"),
    scopes=("mcp:tools",),
    client_id="demo-agent",
    claims={"sub": "alice", "roles": ["viewer", "operator"]},
)


def _call_input(**overrides: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "tenant": "tenant_local",
        "environment": "prod",
        "action": "tools/call",
        "subject": ALICE,
        "server": "demo",
        "transport": "streamable_http",
        "tool": "get_weather",
        "annotations": {"readOnlyHint": True},
        "arguments": {"city": "Paris"},
        "session_id": "s-1",
        "protocol_version": "2025-11-25",
        "projection_version": 3,
    }
    kwargs.update(overrides)
    return build_input(**kwargs)


def test_subject_as_input_has_every_member_as_json_types() -> None:
    assert ALICE.as_input() == {
        "sub": "alice",
        "issuer": "https://idp.test.invalid",
        "roles": ["viewer", "operator"],
        "scopes": ["mcp:tools"],
        "client_id": "demo-agent",
        "claims": {"sub": "alice", "roles": ["viewer", "operator"]},
        "groups": [],
        "agent": None,
        "delegation": [],
        "credential_kind": "jwt",
        "key_id": None,
    }


def test_subject_defaults_to_no_roles_scopes_client_or_claims() -> None:
    assert Subject(sub="bob", issuer="iss").as_input() == {
        "sub": "bob",
        "issuer": "iss",
        "roles": [],
        "scopes": [],
        "client_id": None,
        "claims": {},
        "groups": [],
        "agent": None,
        "delegation": [],
        "credential_kind": "jwt",
        "key_id": None,
    }


def test_build_input_has_the_decision_input_shape() -> None:
    assert _call_input() == {
        "tenant": "tenant_local",
        "environment": "prod",
        "action": "tools/call",
        "subject": ALICE.as_input(),
        "server": {"name": "demo", "transport": "streamable_http"},
        "tool": {"name": "get_weather", "annotations": {"readOnlyHint": True}},
        "arguments": {"city": "Paris"},
        "session": {"id": "s-1", "protocol_version": "2025-11-25"},
        "projection": {"version": 3},
    }


@pytest.mark.parametrize(
    ("overrides", "path", "expected"),
    [
        pytest.param({"session_id": None}, ("session", "id"), None, id="session-id-none"),
        pytest.param({"annotations": None}, ("tool", "annotations"), {}, id="annotations-none"),
        pytest.param({"annotations": {}}, ("tool", "annotations"), {}, id="annotations-empty"),
        pytest.param({"arguments": None}, ("arguments",), {}, id="arguments-none"),
        pytest.param({"action": "tools/list"}, ("action",), "tools/list", id="action-passed-through"),
    ],
)
def test_build_input_normalises_optional_members(
    overrides: dict[str, Any], path: tuple[str, ...], expected: Any
) -> None:
    node: Any = _call_input(**overrides)
    for key in path:
        node = node[key]

    assert node == expected


def test_build_input_copies_caller_mappings() -> None:
    annotations = {"readOnlyHint": True}
    arguments = {"city": "Paris"}
    doc = _call_input(annotations=annotations, arguments=arguments)
    annotations["readOnlyHint"] = False
    arguments["city"] = "Rome"

    assert doc["tool"]["annotations"] == {"readOnlyHint": True}
    assert doc["arguments"] == {"city": "Paris"}


def test_build_input_is_json_serialisable() -> None:
    doc = _call_input(session_id=None, annotations=None)

    assert orjson.loads(orjson.dumps(doc)) == doc


def test_build_discovery_input_lists_every_candidate() -> None:
    candidates = [
        Candidate("demo__get_weather", "demo", "streamable_http", "get_weather", {"readOnlyHint": True}),
        Candidate("demo__delete", "demo", "streamable_http", "delete", {}),
    ]

    doc = build_discovery_input(
        tenant="tenant_local",
        environment="prod",
        subject=ALICE,
        candidates=candidates,
        session_id=None,
        protocol_version="2026-07-28",
        projection_version=4,
    )

    assert doc == {
        "tenant": "tenant_local",
        "environment": "prod",
        "action": "tools/list",
        "subject": ALICE.as_input(),
        "arguments": {},
        "session": {"id": None, "protocol_version": "2026-07-28"},
        "projection": {"version": 4},
        "candidates": [
            {
                "key": "demo__get_weather",
                "server": {"name": "demo", "transport": "streamable_http"},
                "tool": {"name": "get_weather", "annotations": {"readOnlyHint": True}},
            },
            {
                "key": "demo__delete",
                "server": {"name": "demo", "transport": "streamable_http"},
                "tool": {"name": "delete", "annotations": {}},
            },
        ],
    }
    assert orjson.loads(orjson.dumps(doc)) == doc


def test_build_discovery_input_without_candidates_has_an_empty_list() -> None:
    doc = build_discovery_input(
        tenant="t",
        environment="e",
        subject=ALICE,
        candidates=[],
        session_id="s",
        protocol_version="2025-11-25",
        projection_version=1,
    )

    assert doc["candidates"] == []
    assert doc["session"] == {"id": "s", "protocol_version": "2025-11-25"}


def test_a_resource_read_input_has_a_resource_and_no_tool() -> None:
    doc = _call_input(action="resources/read", tool=None, annotations=None, arguments=None, resource_uri="demo://a")
    assert doc["resource"] == {"uri": "demo://a", "server": "demo"}
    assert "tool" not in doc and "prompt" not in doc and doc["arguments"] == {}


def test_a_prompt_input_carries_its_arguments_in_the_prompt() -> None:
    arguments = {"city": "Paris"}
    doc = _call_input(action="prompts/get", tool=None, arguments=None, prompt="brief", prompt_arguments=arguments)
    arguments["city"] = "Rome"
    assert doc["prompt"] == {"name": "brief", "arguments": {"city": "Paris"}}
    assert "tool" not in doc and "resource" not in doc and doc["arguments"] == {}


def test_an_input_without_a_server_has_no_server_and_no_resource() -> None:
    doc = _call_input(
        action="logging/setLevel",
        server=None,
        transport=None,
        tool=None,
        arguments={"level": "debug"},
        resource_uri="x",
    )
    assert "server" not in doc and "resource" not in doc and doc["arguments"] == {"level": "debug"}


def test_discovery_candidates_carry_the_member_their_list_judges() -> None:
    candidates = [
        Candidate("mcp-gw://demo/demo://a", "demo", "streamable_http", resource_uri="demo://a"),
        Candidate("demo__brief", "demo", "streamable_http", prompt="brief"),
    ]
    doc = build_discovery_input(
        tenant="t",
        environment="e",
        subject=ALICE,
        candidates=candidates,
        session_id=None,
        protocol_version="2026-07-28",
        projection_version=1,
        action="resources/list",
    )
    assert doc["action"] == "resources/list"
    assert doc["candidates"] == [
        {
            "key": "mcp-gw://demo/demo://a",
            "server": {"name": "demo", "transport": "streamable_http"},
            "resource": {"uri": "demo://a", "server": "demo"},
        },
        {
            "key": "demo__brief",
            "server": {"name": "demo", "transport": "streamable_http"},
            "prompt": {"name": "brief", "arguments": {}},
        },
    ]
