"""SchemaConverter: OpenAPI 3.0/3.1 Schema Objects as JSON Schema 2020-12 (MCP tool schemas)."""

from __future__ import annotations

from typing import Any

import pytest
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from gateway.apiadapter.documents import check_document
from gateway.apiadapter.schemas import MAX_SCHEMA_BYTES, REQUEST, RESPONSE, SchemaConverter
from gateway.errors import InvalidApiDocument


def document(schemas: dict[str, Any], version: str = "3.0.3") -> dict[str, Any]:
    doc = {"openapi": version, "info": {"title": "t", "version": "1"}, "paths": {}, "components": {"schemas": schemas}}
    check_document(doc)  # every document here is a valid OpenAPI document
    return doc


def convert(
    schema: Any, schemas: dict[str, Any] | None = None, *, version: str = "3.0.3", context: str = REQUEST
) -> dict[str, Any]:
    """``schema`` as a finished tool schema (wrapped in an object property ``v`` with its $defs)."""
    doc = document({**(schemas or {}), "Subject": schema}, version)
    bundle = SchemaConverter(doc, version=version[:3], context=context).bundle()
    converted = bundle.convert({"$ref": "#/components/schemas/Subject"}, ["x"])
    out = bundle.finish({"type": "object", "properties": {"v": converted}}, ["x"])
    Draft202012Validator.check_schema(out)
    return out


def subject(out: dict[str, Any]) -> Any:
    return out["$defs"]["Subject"]


def valid(out: dict[str, Any], value: Any) -> bool:
    try:
        Draft202012Validator(out).validate({"v": value})
    except ValidationError:
        return False
    return True


def refused(schema: Any, schemas: dict[str, Any] | None = None, **kw: Any) -> InvalidApiDocument:
    with pytest.raises(InvalidApiDocument) as info:
        convert(schema, schemas, **kw)
    return info.value


# -- 3.0 rewriting ----------------------------------------------------------------------------


def test_nullable_adds_null_to_type_and_enum() -> None:
    out = convert({"type": "string", "enum": ["a", "b"], "nullable": True})
    assert subject(out) == {"type": ["string", "null"], "enum": ["a", "b", None]}
    assert valid(out, None) and valid(out, "a") and not valid(out, "c")
    assert subject(convert({"type": "string", "nullable": False})) == {"type": "string"}


def test_nullable_without_type_becomes_any_of() -> None:
    out = convert({"allOf": [{"$ref": "#/components/schemas/A"}], "nullable": True}, {"A": {"type": "integer"}})
    assert subject(out) == {"anyOf": [{"allOf": [{"$ref": "#/$defs/A"}]}, {"type": "null"}]}
    assert valid(out, None) and valid(out, 3) and not valid(out, "3")


def test_exclusive_bounds_become_numeric() -> None:
    out = convert({"type": "number", "minimum": 1, "exclusiveMinimum": True, "maximum": 5, "exclusiveMaximum": False})
    assert subject(out) == {"type": "number", "exclusiveMinimum": 1, "maximum": 5}
    assert not valid(out, 1) and valid(out, 1.5) and valid(out, 5)


def test_3_0_ref_siblings_dropped_3_1_kept() -> None:
    schemas = {"A": {"type": "string"}}
    out = convert(
        {"type": "object", "properties": {"a": {"$ref": "#/components/schemas/A", "description": "d"}}}, schemas
    )
    assert subject(out)["properties"]["a"] == {"$ref": "#/$defs/A"}
    out = convert(
        {"type": "object", "properties": {"a": {"$ref": "#/components/schemas/A", "maxLength": 2}}},
        schemas,
        version="3.1.1",
    )
    assert subject(out)["properties"]["a"] == {"$ref": "#/$defs/A", "maxLength": 2}
    assert not valid(out, {"a": "abc"})


def test_3_1_is_not_rewritten() -> None:
    schema = {"type": ["string", "null"], "exclusiveMinimum": 3, "examples": ["a"], "const": "a"}
    assert subject(convert(schema, version="3.1.1")) == schema


# -- dropped keywords and data positions ------------------------------------------------------


def test_openapi_only_keywords_dropped() -> None:
    doc = document(
        {
            "Subject": {
                "type": "object",
                "example": {"a": 1},
                "xml": {"name": "s"},
                "externalDocs": {"url": "https://example.com"},
                "discriminator": {"propertyName": "a"},
                "x-internal": True,
                "properties": {"a": {"type": "string", "x-order": 1}},
                "required": ["a"],
            }
        }
    )
    converter = SchemaConverter(doc, version="3.0", context=REQUEST)
    bundle = converter.bundle()
    out = bundle.inline({"$ref": "#/components/schemas/Subject"}, ["x"])
    assert out == {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}
    assert converter.dropped == {
        "example": 1,
        "xml": 1,
        "externalDocs": 1,
        "discriminator": 1,
        "x-internal": 1,
        "x-order": 1,
    }


def test_data_positions_are_copied_verbatim() -> None:
    data = {"nullable": True, "x-keep": 1, "example": 2, "readOnly": True, "exclusiveMinimum": True}
    schema = {
        "type": "object",
        "properties": {"a": {"type": "object"}},
        "default": data,
        "enum": [data, None],
        "nullable": True,
    }
    converted = subject(convert(schema))
    assert converted["default"] == data
    assert converted["enum"] == [data, None]
    assert converted["type"] == ["object", "null"]


# -- readOnly / writeOnly ---------------------------------------------------------------------

CONTEXTED = {
    "type": "object",
    "required": ["id", "secret", "name", "stamp"],
    "properties": {
        "id": {"type": "integer", "readOnly": True},
        "secret": {"type": "string", "writeOnly": True},
        "name": {"type": "string"},
        "stamp": {"$ref": "#/components/schemas/Stamp"},
    },
}


def test_request_context_drops_read_only() -> None:
    converted = subject(convert(CONTEXTED, {"Stamp": {"type": "string", "readOnly": True}}, context=REQUEST))
    assert list(converted["properties"]) == ["secret", "name"]
    assert converted["required"] == ["secret", "name"]


def test_response_context_drops_write_only() -> None:
    converted = subject(convert(CONTEXTED, {"Stamp": {"type": "string", "readOnly": True}}, context=RESPONSE))
    assert list(converted["properties"]) == ["id", "name", "stamp"]
    assert converted["required"] == ["id", "name", "stamp"]


# -- references -------------------------------------------------------------------------------


def test_recursive_schema_stays_a_reference() -> None:
    node = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "children": {"type": "array", "items": {"$ref": "#/components/schemas/Node"}},
        },
    }
    out = convert({"$ref": "#/components/schemas/Node"}, {"Node": node})
    assert out["$defs"]["Node"]["properties"]["children"]["items"] == {"$ref": "#/$defs/Node"}
    tree = {"name": "a", "children": [{"name": "b", "children": [{"name": "c", "children": []}]}]}
    assert valid(out, tree)
    assert not valid(out, {"name": "a", "children": [{"name": 1}]})


def test_inline_resolves_only_the_top_level_reference() -> None:
    doc = document({"Node": {"type": "object", "properties": {"next": {"$ref": "#/components/schemas/Node"}}}})
    bundle = SchemaConverter(doc, version="3.0", context=RESPONSE).bundle()
    inlined = bundle.inline({"$ref": "#/components/schemas/Node"}, ["x"])
    assert inlined == {"type": "object", "properties": {"next": {"$ref": "#/$defs/Node"}}}
    out = bundle.finish(inlined, ["x"], what="outputSchema")
    assert set(out["$defs"]) == {"Node"}


def test_transitive_components_gathered_sorted() -> None:
    schemas = {
        "B": {"type": "object", "properties": {"c": {"$ref": "#/components/schemas/C"}}},
        "C": {"type": "string"},
        "Unused": {"type": "string"},
    }
    out = convert({"type": "object", "properties": {"b": {"$ref": "#/components/schemas/B"}}}, schemas)
    assert list(out["$defs"]) == ["B", "C", "Subject"]


def test_reference_into_a_component_and_escaped_names() -> None:
    schemas = {
        "A/B ~": {"type": "object", "properties": {"inner": {"type": "integer", "minimum": 3}}},
    }
    out = convert({"$ref": "#/components/schemas/A~1B%20~0/properties/inner"}, schemas)
    assert subject(out) == {"$ref": "#/$defs/A~1B%20~0/properties/inner"}
    assert valid(out, 4) and not valid(out, 2)


def test_reference_into_what_conversion_removed_is_refused() -> None:
    schemas = {"A": {"type": "object", "properties": {"id": {"type": "integer", "readOnly": True}}}}
    err = refused({"$ref": "#/components/schemas/A/properties/id"}, schemas)
    assert err.location == "components.schemas.Subject.$ref"


@pytest.mark.parametrize(
    "ref",
    ["#/components/parameters/P/schema", "#/paths/~1x", "#/components/schemas", "#/components/responses/R/content"],
)
def test_schema_reference_outside_components_schemas_refused(ref: str) -> None:
    doc = {
        "openapi": "3.0.3",
        "info": {"title": "t", "version": "1"},
        "paths": {"/x": {}},
        "components": {
            "schemas": {"Subject": {"type": "object", "properties": {"a": {"$ref": ref}}}},
            "parameters": {"P": {"name": "p", "in": "query", "schema": {"type": "string"}}},
            "responses": {"R": {"description": "r", "content": {"application/json": {"schema": {"type": "string"}}}}},
        },
    }
    bundle = SchemaConverter(doc, version="3.0", context=REQUEST).bundle()
    with pytest.raises(InvalidApiDocument) as info:
        bundle.convert({"$ref": "#/components/schemas/Subject"}, ["x"])
        bundle.finish({}, ["x"])
    assert info.value.location == "components.schemas.Subject.properties.a.$ref"
    assert "components/schemas" in str(info.value)


@pytest.mark.parametrize("keyword", ["$id", "$anchor", "$dynamicRef", "$dynamicAnchor"])
def test_resolution_keywords_refused(keyword: str) -> None:
    doc = {"openapi": "3.1.0", "info": {"title": "t", "version": "1"}, "paths": {}}
    bundle = SchemaConverter(doc, version="3.1", context=REQUEST).bundle()
    with pytest.raises(InvalidApiDocument) as info:
        bundle.convert({"type": "object", "properties": {"a": {keyword: "x"}}}, ["here"])
    assert info.value.location == f"here.properties.a.{keyword}"


# -- bounds -----------------------------------------------------------------------------------


def test_depth_bound() -> None:
    doc = {"openapi": "3.0.3", "info": {"title": "t", "version": "1"}, "paths": {}}
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(80):
        schema = {"type": "array", "items": schema}
    bundle = SchemaConverter(doc, version="3.0", context=REQUEST).bundle()
    with pytest.raises(InvalidApiDocument, match="nest more than 64"):
        bundle.convert(schema, ["x"])


def test_size_bound() -> None:
    big = {"type": "string", "enum": [f"value-{i:08d}" for i in range(MAX_SCHEMA_BYTES // 16)]}
    err = refused(big)
    assert err.location == "x"
    assert f"more than {MAX_SCHEMA_BYTES}" in str(err)
    assert subject(convert({"type": "string", "enum": [f"v{i}" for i in range(1000)]}))  # small enough


def test_every_converted_shipped_component_is_2020_12() -> None:
    import json
    from pathlib import Path

    for name, version in (("petstore-3.0.json", "3.0"), ("petstore-3.1.json", "3.1")):
        doc = json.loads((Path(__file__).parent / "data" / name).read_text())
        for context in (REQUEST, RESPONSE):
            converter = SchemaConverter(doc, version=version, context=context)
            for component in doc["components"]["schemas"]:
                bundle = converter.bundle()
                root = bundle.convert({"$ref": f"#/components/schemas/{component}"}, ["x"])
                Draft202012Validator.check_schema(bundle.finish({"properties": {"v": root}}, ["x"]))
