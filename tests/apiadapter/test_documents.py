"""load_document and check_document: bounded parsing, local references only, openapi-spec-validator."""

from __future__ import annotations

import copy
import gc
import json
import socket
import time
import urllib.request
import weakref
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.apiadapter import documents
from gateway.apiadapter.documents import (
    MAX_DEPTH,
    MAX_DOCUMENT_BYTES,
    MAX_PATTERN_CHARS,
    check_document,
    dotted,
    load_document,
)
from gateway.errors import InvalidApiDocument

DATA = Path(__file__).parent / "data"
PETSTORE = (DATA / "petstore-3.0.json").read_bytes()
PETSTORE_31 = (DATA / "petstore-3.1.json").read_bytes()
SECRET = "s3cr3t-marker"


def refused(raw: Any, **kw: Any) -> InvalidApiDocument:
    with pytest.raises(InvalidApiDocument) as info:
        load_document(raw, **kw)
    return info.value


def check_refused(doc: Any, **kw: Any) -> InvalidApiDocument:
    with pytest.raises(InvalidApiDocument) as info:
        check_document(doc, **kw)
    return info.value


def petstore() -> dict[str, Any]:
    return load_document(PETSTORE)


def minimal(version: str = "3.0.3", **extra: Any) -> dict[str, Any]:
    return {"openapi": version, "info": {"title": "t", "version": "1"}, "paths": {}, **extra}


# -- the shipped documents --------------------------------------------------------------------


def test_shipped_documents_load_and_check() -> None:
    pet = load_document(PETSTORE)
    assert pet == json.loads(PETSTORE)
    assert check_document(pet) == "3.0"
    pet_31 = load_document(PETSTORE_31.decode())
    assert pet_31 == json.loads(PETSTORE_31)
    assert check_document(pet_31) == "3.1"


def test_parsed_object_and_yaml_text_give_the_same_document() -> None:
    parsed = json.loads(PETSTORE)
    assert load_document(parsed) == parsed
    assert load_document(parsed) is not parsed  # a fresh copy
    text = yaml.safe_dump(parsed, sort_keys=False)
    assert load_document(text) == parsed
    assert load_document(b"\xef\xbb\xbf" + PETSTORE) == parsed  # a UTF-8 BOM is ignored


def test_dotted_locations() -> None:
    assert (
        dotted(["paths", "/pet/{petId}", "get", "parameters", 0, "schema"])
        == "paths./pet/{petId}.get.parameters[0].schema"
    )
    assert dotted([]) == "document"


# -- load_document: shape and bounds ----------------------------------------------------------


@pytest.mark.parametrize("raw", ['["a"]', "just text", "42", "", "null"])
def test_not_an_object(raw: str) -> None:
    err = refused(raw)
    assert err.location == "document"


def test_not_utf8() -> None:
    err = refused(b'{"openapi": "3.0.3", "x": "\xff"}')
    assert "not UTF-8" in str(err)


def test_too_large_text_bytes_and_parsed() -> None:
    body = b'{"a": "' + b"x" * MAX_DOCUMENT_BYTES + b'"}'
    assert "more than 4194304" in str(refused(body))
    assert "more than" in str(refused(body.decode()))
    assert "more than" in str(refused({"a": "x" * MAX_DOCUMENT_BYTES}))
    assert "more than 100" in str(refused({"a": "x" * 200}, max_bytes=100))
    assert load_document({"a": "x" * 50}, max_bytes=100) == {"a": "x" * 50}


def nested(depth: int) -> Any:
    """A value of exactly ``depth`` nested containers (the document itself is depth 1)."""
    value: Any = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def test_depth_cap_for_json_yaml_and_parsed() -> None:
    ok, deep = nested(MAX_DEPTH), nested(MAX_DEPTH + 1)
    assert load_document(json.dumps(ok)) == ok
    assert load_document(ok) == ok
    assert load_document(yaml.safe_dump(ok)) == ok
    for raw in (json.dumps(deep), deep, yaml.safe_dump(deep)):
        assert "deep" in str(refused(raw))


def test_pathological_nesting_is_refused_not_crashed() -> None:
    assert "deep" in str(refused('{"a":' * 200_000 + "1" + "}" * 200_000))
    assert "deep" in str(refused("a:\n" + "".join(" " * i + "- \n" for i in range(0, 400, 2))))
    assert "nesting depth" in str(refused("a: " + "[" * 200_000))  # libyaml's own limit (1000) comes first


@pytest.mark.parametrize(
    "raw",
    ['{"a": NaN}', '{"a": Infinity}', '{"a": 1e400}', '{"a": 123456789012345678901234567890}', "a: .inf", "a: .nan"],
)
def test_values_json_cannot_hold(raw: str) -> None:
    refused(raw)


def test_parsed_objects_must_be_json() -> None:
    assert "not a string" in str(refused({1: "a"}))
    assert "set" in str(refused({"a": {1, 2}}))
    assert "NaN" in str(refused({"a": float("nan")}))


@pytest.mark.parametrize("raw", ['{"a": "\\ud800"}', {"a": "\ud800"}, "a: \ud800", 'a: "\\ud800"'])
def test_lone_surrogates_refused(raw: Any) -> None:
    refused(raw)  # orjson (stored records, routing table) could not write them
    assert load_document('{"a": "\\ud83d\\ude00"}') == {"a": "\U0001f600"}  # a pair is one character


def test_duplicate_keys_refused() -> None:
    assert "duplicate" in str(refused('{"a": 1, "a": 2}'))
    assert "duplicate" in str(refused("a: 1\na: 2\n"))


def test_json_parse_error_names_line_and_column_not_content() -> None:
    err = refused('{\n  "secret": "' + SECRET + '",\n  "x": [1,,]\n}')
    assert "line 3, column" in str(err)
    assert SECRET not in str(err)


def test_yaml_parse_error_names_line_and_column_not_content() -> None:
    err = refused(f"a: 1\nb: '{SECRET}\n  c: [\n")
    assert "line" in str(err) and "column" in str(err)
    assert SECRET not in str(err)


# -- load_document: YAML safety ---------------------------------------------------------------

BILLION_LAUGHS = """
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
"""


def test_yaml_anchors_and_aliases_refused() -> None:
    started = time.monotonic()
    err = refused(BILLION_LAUGHS)
    assert time.monotonic() - started < 1
    assert "anchors are not allowed at line 2" in str(err)
    assert "aliases are not allowed at line 2" in str(refused("openapi: 3.0.3\nx: *nowhere\n"))


@pytest.mark.parametrize(
    "raw",
    [
        "a: !!python/object/apply:os.system ['true']",
        "a: !!binary aGVsbG8=",
        "a: !!timestamp 2024-01-01",
        "a: !!set {x}",
        "a: !custom x",
        "a: !!int 12a",
        "a: !!str [1]",
        "!!python/name:os.system key: 1",
    ],
)
def test_yaml_tags_outside_the_core_schema_refused(raw: str) -> None:
    assert "YAML" in str(refused(raw))


def test_yaml_core_schema_scalars_and_string_keys() -> None:
    doc = load_document(
        "date: 2024-01-01\nyes_no: [yes, no, on, off]\nhex: 0x1F\noct: 0o17\nf: 1.5\nn: ~\nb: true\n"
        "s: !!str 12\ni: !!int '7'\nnull_key: null\n200:\n  description: ok\n"
    )
    assert doc == {
        "date": "2024-01-01",
        "yes_no": ["yes", "no", "on", "off"],
        "hex": 31,
        "oct": 15,
        "f": 1.5,
        "n": None,
        "b": True,
        "s": "12",
        "i": 7,
        "null_key": None,
        "200": {"description": "ok"},
    }


def test_yaml_structure_refusals() -> None:
    assert "key must be a scalar" in str(refused("? [a]\n: 1\n"))
    assert "more than one document" in str(refused("a: 1\n---\nb: 2\n"))


# -- check_document: versions -----------------------------------------------------------------


def test_swagger_2_refused_with_advice() -> None:
    err = check_refused({"swagger": "2.0", "info": {"title": "t", "version": "1"}, "paths": {}})
    assert err.location == "swagger"
    assert "OpenAPI 3" in str(err)


@pytest.mark.parametrize("version", ["3.2.0", "2.0", "3.0", "4.0.0", 3.0, None])
def test_other_versions_refused(version: Any) -> None:
    doc = minimal()
    doc["openapi"] = version
    assert check_refused(doc).location == "openapi"


def test_3_0_and_3_1_minimal() -> None:
    assert check_document(minimal("3.0.3")) == "3.0"
    assert check_document(minimal("3.1.1")) == "3.1"


# -- check_document: references ---------------------------------------------------------------


def with_ref(ref: str, where: str = "schema") -> dict[str, Any]:
    doc = petstore()
    if where == "schema":
        doc["components"]["schemas"]["Pet"]["properties"]["id"] = {"$ref": ref}
    elif where == "default":  # a data position the validator would resolve
        doc["components"]["schemas"]["Pet"]["properties"]["id"]["default"] = {"$ref": ref}
    else:
        doc["paths"]["/pet"]["post"]["requestBody"] = {"$ref": ref}
    return doc


@pytest.mark.parametrize(
    "ref", ["http://127.0.0.1:1/x", "https://example.com/s.json#/A", "file:///etc/passwd", "other.yaml#/A", "//h/x"]
)
@pytest.mark.parametrize("where", ["schema", "default", "requestBody"])
def test_non_local_refs_refused_at_their_location(ref: str, where: str) -> None:
    started = time.monotonic()
    err = check_refused(with_ref(ref, where))
    assert time.monotonic() - started < 2
    expected = {
        "schema": "components.schemas.Pet.properties.id.$ref",
        "default": "components.schemas.Pet.properties.id.default.$ref",
        "requestBody": "paths./pet.post.requestBody.$ref",
    }[where]
    assert err.location == expected
    assert "local" in str(err)


def test_no_network_and_no_file_access_even_if_it_were_tried(monkeypatch: pytest.MonkeyPatch) -> None:
    attempts: list[Any] = []

    def forbidden(*args: Any, **kwargs: Any) -> Any:
        attempts.append(args)
        raise AssertionError("network used")

    monkeypatch.setattr(socket, "socket", forbidden)
    monkeypatch.setattr(socket, "create_connection", forbidden)
    monkeypatch.setattr(urllib.request, "urlopen", forbidden)
    err = check_refused(with_ref("http://127.0.0.1:1/x", "default"))
    assert err.location.endswith(".$ref")
    assert check_document(petstore()) == "3.0"  # a whole valid check runs without any socket
    assert attempts == []


def test_validator_handlers_refuse_fetching_as_defence_in_depth() -> None:
    handler = documents._NO_FETCH["http"]
    with pytest.raises(ValueError, match="never fetches"):
        handler("http://127.0.0.1:1/x")


def test_missing_local_target_refused() -> None:
    err = check_refused(with_ref("#/components/schemas/Nope"))
    assert err.location == "components.schemas.Pet.properties.id.$ref"
    assert "points to nothing" in str(err)
    assert check_refused(with_ref("#/components/requestBodies/Pet/content/x", "requestBody")).location == (
        "paths./pet.post.requestBody.$ref"
    )


def test_local_pointer_escapes_resolve() -> None:
    doc = petstore()
    doc["components"]["schemas"]["A/B ~"] = {"type": "string"}
    doc["components"]["schemas"]["Pet"]["properties"]["name"] = {"$ref": "#/components/schemas/A~1B%20~0"}
    assert check_document(doc) == "3.0"


def test_property_named_ref_is_not_a_reference() -> None:
    doc = petstore()
    doc["components"]["schemas"]["Pet"]["properties"]["$ref"] = {"type": "string"}
    assert check_document(doc) == "3.0"


@pytest.mark.parametrize("keyword", ["$id", "$anchor", "$dynamicRef", "$dynamicAnchor"])
def test_resolution_changing_keywords_refused_in_schemas(keyword: str) -> None:
    doc = load_document(PETSTORE_31)
    doc["components"]["schemas"]["Pet"]["properties"]["name"][keyword] = "x"
    err = check_refused(doc)
    assert err.location == f"components.schemas.Pet.properties.name.{keyword}"
    assert "not supported" in str(err)
    # ... but the same key in example data is data
    doc = load_document(PETSTORE_31)
    doc["components"]["schemas"]["Pet"]["properties"]["name"]["examples"] = [{keyword: "x"}]
    assert check_document(doc) == "3.1"


# -- check_document: openapi-spec-validator ---------------------------------------------------


def test_structural_error_located() -> None:
    doc = petstore()
    doc["paths"]["/pet/{petId}"]["get"]["parameters"][0]["in"] = "body"
    err = check_refused(doc)
    assert err.location == "paths./pet/{petId}.get.parameters[0]"
    assert "OpenAPI 3.0" in str(err)
    doc = petstore()
    del doc["info"]["title"]
    assert check_refused(doc).location == "info"
    doc = petstore()
    doc["paths"]["/pet/{petId}"]["get"]["responses"]["200"]["description"] = 5
    assert check_refused(doc).location.startswith("paths./pet/{petId}.get.responses.200")


def message(err: InvalidApiDocument) -> str:
    """The message without its location prefix (the location may name keys of the document)."""
    text = str(err)
    assert text.startswith(f"{err.location}: ")
    return text[len(err.location) + 2 :]


def test_semantic_errors_located() -> None:
    doc = petstore()
    doc["paths"]["/pet/{petId}"]["get"]["parameters"] = []
    err = check_refused(doc)
    assert err.location == "paths./pet/{petId}.get"  # the location shows the template's {petId}
    assert "path template needs a path parameter" in message(err)
    doc = petstore()
    doc["paths"]["/pet/{petId}"]["get"]["operationId"] = "addPet"
    err = check_refused(doc)
    assert "not unique" in message(err) and "addPet" not in message(err)
    doc = petstore()
    params = doc["paths"]["/pet/{petId}"]["get"]["parameters"]
    params.append(dict(params[0], description=SECRET))
    err = check_refused(doc)
    assert err.location == "paths./pet/{petId}.get.parameters"
    assert message(err) == "not a valid OpenAPI 3.0 document: two parameters have the same name and location (in)"


def test_error_in_a_component_is_shown_at_the_component() -> None:
    doc = petstore()
    order = doc["components"]["schemas"]["Order"]
    order["allOf"] = [{"type": "object"}]
    order["required"] = [SECRET]
    err = check_refused(doc)
    # the validator meets Order through an operation's $ref first; the admin must see the component
    assert err.location == "components.schemas.Order"
    assert "required names properties" in message(err) and SECRET not in message(err)


def test_error_messages_do_not_copy_the_offending_object() -> None:
    doc = petstore()
    param = doc["paths"]["/pet/{petId}"]["get"]["parameters"][0]
    param["in"] = "body"
    param["description"] = SECRET * 100
    err = check_refused(doc)
    assert SECRET not in str(err)
    assert len(str(err)) < 500


def redos_document(n: int, version: str = "3.0.3") -> dict[str, Any]:
    """The review's document: Python ``re`` takes time doubling per character to refuse the default."""
    schema = {"type": "string", "pattern": "^(a+)+$", "default": "a" * n + "!"}
    parameter = {"name": "q", "in": "query", "schema": schema}
    return minimal(version, paths={"/x": {"get": {"operationId": "x", "parameters": [parameter], **ok()}}})


def ok() -> dict[str, Any]:
    return {"responses": {"200": {"description": "ok"}}}


@pytest.mark.parametrize("version", ["3.0.3", "3.1.0"])
def test_no_pattern_of_the_document_runs_on_its_defaults(version: str) -> None:
    # n=27 stalled the whole process for 10-18 s; n=60 would take centuries. Defaults are not
    # validated against their schemas at all, so the document is accepted, at once.
    started = time.monotonic()
    assert check_document(load_document(redos_document(60, version))) == version[:3]
    assert time.monotonic() - started < 2
    # nor their combinators: 2**60 oneOf branches for a default 60 objects deep
    node: dict[str, Any] = {"c": {}}
    for _ in range(60):
        node = {"c": node}
    branch = {"type": "object", "properties": {"c": {"$ref": "#/components/schemas/N"}}}
    doc = minimal(
        version,
        paths={"/x": {"get": {"operationId": "x", **ok()}}},
        components={"schemas": {"N": {"oneOf": [branch, branch], "default": node}}},
    )
    started = time.monotonic()
    check_document(load_document(doc, max_depth=200))
    assert time.monotonic() - started < 2


def test_patterns_are_only_compiled_and_bounded() -> None:
    def with_pattern(pattern: str, version: str = "3.1.0") -> dict[str, Any]:
        doc = redos_document(1, version)
        doc["paths"]["/x"]["get"]["parameters"][0]["schema"] = {"type": "string", "pattern": pattern}
        return doc

    err = check_refused(with_pattern("(" + SECRET))
    assert err.location == "paths./x.get.parameters[0].schema.pattern"
    assert message(err) == "not a valid OpenAPI 3.1 document: must be a valid regex (format)"
    assert check_document(with_pattern("a" * MAX_PATTERN_CHARS)) == "3.1"
    started = time.monotonic()
    for version in ("3.0.3", "3.1.0"):
        err = check_refused(with_pattern("(?:ab|cd)" * 200_000, version))  # re.compile: 20 s
        assert err.location == "paths./x.get.parameters[0].schema.pattern"
        assert f"at most {MAX_PATTERN_CHARS} characters" in str(err)
    doc = with_pattern("a")
    doc["paths"]["/x"]["get"]["parameters"][0]["schema"] = {"patternProperties": {"b" * (MAX_PATTERN_CHARS + 1): {}}}
    assert check_refused(doc).location == "paths./x.get.parameters[0].schema.patternProperties"
    assert time.monotonic() - started < 2


CANARY = "c4n4ry-0b5e"


def _param(doc: dict[str, Any]) -> dict[str, Any]:
    param: dict[str, Any] = doc["paths"]["/x"]["get"]["parameters"][0]
    return param


@pytest.mark.parametrize("version", ["3.0.3", "3.1.0"])
@pytest.mark.parametrize(
    ("change", "location", "says"),
    [
        (lambda d: _param(d).update({"in": CANARY}), "paths./x.get.parameters[0]", ""),
        (lambda d: _param(d).update({"style": CANARY}), "paths./x.get.parameters[0]", ""),
        (lambda d: _param(d).update({"required": CANARY}), "paths./x.get.parameters[0]", ""),
        (lambda d: d["info"].update({"version": [CANARY]}), "info.version", "must be of type string"),
        (lambda d: d["info"].pop("title"), "info", "the required member 'title' is missing"),
        (lambda d: d.update({"tags": [{"name": CANARY}, {"name": CANARY}]}), "tags", ""),
        (lambda d: _param(d)["schema"].update({"enum": CANARY}), "paths./x.get.parameters[0]", ""),
        (lambda d: _param(d)["schema"].update({"type": CANARY}), "paths./x.get.parameters[0]", ""),
        (lambda d: _param(d)["schema"].update({"maxLength": -1, "title": CANARY}), "paths./x.get.parameters[0]", ""),
        (lambda d: _param(d)["schema"].update({"$schema": CANARY}), "paths./x.get.parameters[0]", ""),
        (lambda d: _param(d)["schema"].update({"pattern": f"({CANARY}"}), "paths./x.get.parameters[0]", ""),
        (lambda d: d["paths"]["/x"]["get"]["responses"]["200"].update({"description": 1}), "paths./x", ""),
    ],
)
def test_messages_name_the_rule_never_the_value(version: str, change: Any, location: str, says: str) -> None:
    doc = redos_document(1, version)
    _param(doc)["schema"] = {"type": "string", "default": CANARY}  # a wrong default is accepted (not checked)
    assert check_document(copy.deepcopy(doc)) == version[:3]
    change(doc)
    err = check_refused(doc)
    assert err.location.startswith(location)
    assert CANARY not in message(err)
    assert says in message(err)
    assert "the value" not in message(err)


def test_a_member_not_allowed_is_named_by_the_location() -> None:
    for version in ("3.0.3", "3.1.0"):
        doc = minimal(version)
        doc["info"][CANARY] = "x"
        err = check_refused(doc)
        assert err.location == f"info.{CANARY}"
        assert "this member is not allowed here" in message(err) and CANARY not in message(err)


def test_time_budget() -> None:
    err = check_refused(petstore(), time_budget=0)
    assert "took more than" in str(err)


def test_checked_documents_are_not_kept_alive() -> None:
    # openapi-spec-validator's own iter_errors is lru_cache'd per validator instance.
    class Doc(dict[str, Any]):
        pass

    doc = Doc(copy.deepcopy(petstore()))
    ref = weakref.ref(doc)
    assert check_document(doc) == "3.0"
    del doc
    gc.collect()
    assert ref() is None
