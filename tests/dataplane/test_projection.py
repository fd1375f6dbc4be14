"""Tests for gateway.dataplane.projection.compile_projection (pure part of the sync)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from jsonschema.exceptions import ValidationError

from gateway.dataplane.projection import ActiveProjection, compile_projection

WEATHER_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1}},
    "required": ["city"],
    "additionalProperties": False,
}


def _tool(name: str, schema: Any = WEATHER_SCHEMA, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "description": f"{name} tool",
        "inputSchema": schema,
        "annotations": {"readOnlyHint": True},
        "sha256": f"sha-{name}",
        **extra,
    }


def _table(*tools: dict[str, Any], version: int = 3) -> dict[str, Any]:
    return {
        "version": version,
        "policy_version": 2,
        "revision": f"p{version}-pv2",
        "servers": [
            {
                "name": "demo",
                "transport": "streamable_http",
                "url": "http://x/mcp",
                "tools": list(tools) or [_tool("get_weather")],
            }
        ],
    }


def test_compile_projection_keeps_version_metadata() -> None:
    projection = compile_projection(_table())

    assert isinstance(projection, ActiveProjection)
    assert (projection.version, projection.policy_version, projection.revision) == (3, 2, "p3-pv2")
    server = projection.servers["demo"]
    assert (server.name, server.transport, server.url) == ("demo", "streamable_http", "http://x/mcp")


def test_a_tool_resolves_by_aggregated_name_and_by_server_and_name() -> None:
    projection = compile_projection(_table())

    by_aggregate = projection.resolve(None, "demo__get_weather")
    by_server = projection.resolve("demo", "get_weather")

    assert by_aggregate is not None and by_aggregate is by_server
    assert (by_aggregate.server, by_aggregate.name, by_aggregate.sha256) == ("demo", "get_weather", "sha-get_weather")
    assert by_aggregate.annotations == {"readOnlyHint": True}


def test_the_wire_definition_drops_the_hash_and_keeps_everything_else() -> None:
    entry = compile_projection(_table(_tool("get_weather", _meta={"x": 1}))).resolve("demo", "get_weather")

    assert entry is not None
    assert "sha256" not in entry.wire
    assert entry.wire["_meta"] == {"x": 1}
    assert entry.wire["inputSchema"] == WEATHER_SCHEMA


@pytest.mark.parametrize(
    ("server", "name"),
    [
        pytest.param(None, "get_weather", id="original-name-without-server"),
        pytest.param(None, "other__get_weather", id="aggregate-of-unknown-server"),
        pytest.param("demo", "demo__get_weather", id="aggregate-under-server"),
        pytest.param("demo", "missing", id="unknown-tool"),
        pytest.param("other", "get_weather", id="unknown-server"),
    ],
)
def test_unknown_tools_resolve_to_none(server: str | None, name: str) -> None:
    assert compile_projection(_table()).resolve(server, name) is None


def test_the_validator_enforces_the_input_schema() -> None:
    entry = compile_projection(_table()).resolve("demo", "get_weather")
    assert entry is not None

    entry.validator.validate({"city": "Paris", "days": 2})
    with pytest.raises(ValidationError):
        entry.validator.validate({"days": 0})


@pytest.mark.parametrize(
    "schema",
    [
        pytest.param({"type": "objekt"}, id="unknown-type"),
        pytest.param({"type": "object", "required": "city"}, id="required-not-array"),
        pytest.param({"type": "object", "properties": {"a": {"minimum": "one"}}}, id="bad-keyword-value"),
        pytest.param(False, id="boolean-false"),
        pytest.param("object", id="string"),
        pytest.param([], id="array"),
    ],
)
def test_a_tool_with_an_invalid_input_schema_is_dropped(schema: Any) -> None:
    projection = compile_projection(_table(_tool("broken", schema), _tool("get_weather")))

    assert projection.resolve(None, "demo__broken") is None
    assert projection.resolve("demo", "broken") is None
    assert projection.resolve(None, "demo__get_weather") is not None


def test_a_tool_without_input_schema_accepts_any_object() -> None:
    tool = {k: v for k, v in _tool("ping").items() if k != "inputSchema"}
    entry = compile_projection(_table(tool)).resolve("demo", "ping")

    assert entry is not None
    entry.validator.validate({"anything": 1})
    with pytest.raises(ValidationError):
        entry.validator.validate("not an object")


def test_a_tool_without_hash_is_keyed_by_the_hash_of_its_definition() -> None:
    tool = {k: v for k, v in _tool("get_weather").items() if k != "sha256"}
    cache: dict[str, Any] = {}

    first = compile_projection(_table(tool), cache).resolve("demo", "get_weather")
    second = compile_projection(_table(copy.deepcopy(tool)), cache).resolve("demo", "get_weather")

    assert first is not None and second is not None
    assert len(first.sha256) == 64 and first.sha256 == second.sha256
    assert first.validator is second.validator


def test_validators_are_reused_across_compilations() -> None:
    cache: dict[str, Any] = {}

    first = compile_projection(_table(version=3), cache)
    second = compile_projection(_table(version=4), cache)

    old = first.resolve("demo", "get_weather")
    new = second.resolve("demo", "get_weather")
    assert old is not None and new is not None
    assert new.validator is old.validator
    assert cache == {"sha-get_weather": old.validator}


def test_without_a_shared_cache_validators_are_compiled_again() -> None:
    old = compile_projection(_table()).resolve("demo", "get_weather")
    new = compile_projection(_table()).resolve("demo", "get_weather")

    assert old is not None and new is not None
    assert new.validator is not old.validator


def test_an_empty_table_has_no_servers() -> None:
    projection = compile_projection({"version": 1})

    assert (projection.servers, projection.aggregated, projection.policy_version, projection.revision) == (
        {},
        {},
        None,
        "",
    )


def test_tools_of_several_servers_are_aggregated_by_server_prefix() -> None:
    table = _table()
    table["servers"].append(
        {"name": "tickets", "transport": "sse", "url": "http://y/sse", "tools": [_tool("get_weather", sha256="t")]}
    )

    projection = compile_projection(table)

    assert set(projection.aggregated) == {"demo__get_weather", "tickets__get_weather"}
    tickets = projection.resolve(None, "tickets__get_weather")
    assert tickets is not None and tickets.server == "tickets"


def _table_with_schema(schema: object) -> dict[str, object]:
    return {
        "version": 1,
        "policy_version": 1,
        "revision": "p1-pv1",
        "servers": [
            {
                "name": "demo",
                "transport": "streamable_http",
                "url": "http://x/mcp",
                "tools": [{"name": "t", "inputSchema": schema}, {"name": "ok", "inputSchema": {"type": "object"}}],
            }
        ],
    }


@pytest.mark.parametrize(
    "schema",
    [
        pytest.param({"properties": {"a": {"$ref": "http://127.0.0.1:9/s.json"}}}, id="remote-ref"),
        pytest.param({"$defs": {"x": {"$ref": "other.json#/x"}}}, id="relative-external-ref"),
        pytest.param({"$schema": {}, "type": "object"}, id="unhashable-dialect"),
    ],
)
def test_tools_with_unusable_schemas_are_dropped_without_blocking_the_projection(schema: object) -> None:
    projection = compile_projection(_table_with_schema(schema))
    assert projection.resolve("demo", "t") is None
    assert projection.resolve("demo", "ok") is not None


def test_local_refs_still_validate() -> None:
    schema = {"$defs": {"p": {"enum": ["low", "high"]}}, "properties": {"p": {"$ref": "#/$defs/p"}}}
    entry = compile_projection(_table_with_schema(schema)).resolve("demo", "t")
    assert entry is not None
    assert entry.validator.is_valid({"p": "low"}) and not entry.validator.is_valid({"p": "urgent"})
