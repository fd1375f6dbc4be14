"""compile_source: OpenAPI operations as MCP tools and their bindings (real documents and small ones)."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from jsonschema import Draft202012Validator

from gateway.apiadapter import operations
from gateway.apiadapter.binding import Body, Operation, Output, Param
from gateway.apiadapter.documents import MAX_OPERATIONS, check_document, load_document
from gateway.apiadapter.operations import (
    MAX_SOURCE_BYTES,
    CompiledSource,
    Override,
    Selection,
    compile_source,
    overrides_from_body,
    tool_name,
)
from gateway.errors import InvalidApiDocument

DATA = Path(__file__).parent / "data"
TOOL_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")

PETSTORE_TOOLS = [
    "addPet",
    "updatePet",
    "findPetsByStatus",
    "findPetsByTags",
    "getPetById",
    "updatePetWithForm",
    "deletePet",
    "getInventory",
    "placeOrder",
    "getOrderById",
    "deleteOrder",
    "createUser",
    "createUsersWithArrayInput",
    "createUsersWithListInput",
    "loginUser",
    "logoutUser",
    "getUserByName",
    "updateUser",
    "deleteUser",
]
NO_UPLOAD = {"exclude": {"operation_ids": ["uploadFile"]}}


def compiled(doc: dict[str, Any], selection: Any = None, overrides: Any = None) -> CompiledSource:
    """Check, compile, and assert what must hold for every compiled source."""
    check_document(doc)
    out = compile_source(doc, selection=Selection.from_body(selection), overrides=overrides_from_body(overrides))
    assert [t["name"] for t in out.tools] == [op.tool for op in out.operations]
    for tool, op in zip(out.tools, out.operations, strict=True):
        assert TOOL_NAME.fullmatch(tool["name"])
        Draft202012Validator.check_schema(tool["inputSchema"])
        assert tool["inputSchema"]["type"] == "object"
        assert tool["inputSchema"]["additionalProperties"] is False
        if "outputSchema" in tool:
            Draft202012Validator.check_schema(tool["outputSchema"])
            assert tool["outputSchema"]["type"] == "object"
        assert op.output.schema == ("outputSchema" in tool)
        assert Operation.from_record(json.loads(json.dumps(op.to_record()))) == op
        arguments = set(tool["inputSchema"]["properties"])
        bound = {p.argument for p in op.parameters}
        if op.body is not None:
            bound |= set(op.body.properties) if op.body.argument is None else {op.body.argument}
        assert arguments == bound  # every argument is sent somewhere, and only those
    json.dumps(out.report)
    return out


def refused(doc: dict[str, Any], selection: Any = None, overrides: Any = None) -> InvalidApiDocument:
    with pytest.raises(InvalidApiDocument) as info:
        compiled(doc, selection, overrides)
    return info.value


def petstore() -> dict[str, Any]:
    return load_document((DATA / "petstore-3.0.json").read_bytes())


def tool(out: CompiledSource, name: str) -> tuple[dict[str, Any], Operation]:
    for wire, op in zip(out.tools, out.operations, strict=True):
        if wire["name"] == name:
            return wire, op
    raise AssertionError(name)


def api(paths: dict[str, Any], components: dict[str, Any] | None = None, version: str = "3.0.3") -> dict[str, Any]:
    doc: dict[str, Any] = {"openapi": version, "info": {"title": "t", "version": "1"}, "paths": paths}
    if components:
        doc["components"] = components
    return doc


def op(operation_id: str | None = "op", **fields: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"responses": {"200": {"description": "ok"}}, **fields}
    if operation_id is not None:
        out["operationId"] = operation_id
    return out


def param(name: str, where: str, **fields: Any) -> dict[str, Any]:
    out = {"name": name, "in": where, "schema": {"type": "string"}, **fields}
    if where == "path":
        out["required"] = True
    return out


def json_body(schema: Any, required: bool = True, media_type: str = "application/json") -> dict[str, Any]:
    return {"required": required, "content": {media_type: {"schema": schema}}}


# -- the Swagger Petstore (OpenAPI 3.0) -------------------------------------------------------


def test_petstore_tools() -> None:
    out = compiled(petstore(), NO_UPLOAD)
    assert [t["name"] for t in out.tools] == PETSTORE_TOOLS
    assert out.report["openapi"] == "3.0" and out.report["tools"] == 19
    assert out.report["renamed"] == [] and out.report["ignored_parameters"] == []


def test_petstore_multipart_upload_refused_at_its_location() -> None:
    err = refused(petstore())
    assert err.location == "paths./pet/{petId}/uploadImage.post.requestBody.content"
    assert "multipart/form-data" in str(err)
    assert "selection.exclude" in str(err)


def test_petstore_get_pet_by_id() -> None:
    wire, bound = tool(compiled(petstore(), NO_UPLOAD), "getPetById")
    assert wire["title"] == "Find pet by ID"
    assert wire["description"] == "Find pet by ID\n\nReturns a single pet"
    assert wire["inputSchema"] == {
        "type": "object",
        "properties": {"petId": {"type": "integer", "format": "int64", "description": "ID of pet to return"}},
        "required": ["petId"],
        "additionalProperties": False,
    }
    assert bound == Operation(
        "getPetById",
        "getPetById",
        "GET",
        "/pet/{petId}",
        (Param("petId", "petId", "path", "simple", False, True),),
        None,
        Output("200", False, True),
    )
    output = wire["outputSchema"]
    assert output["type"] == "object"
    assert set(output["properties"]) == {"id", "category", "name", "photoUrls", "tags", "status"}
    assert output["properties"]["category"] == {"$ref": "#/$defs/Category"}
    assert set(output["$defs"]) == {"Category", "Tag"}
    assert "xml" not in json.dumps(output)
    assert wire["annotations"] == {"readOnlyHint": True}
    Draft202012Validator(output).validate({"name": "doggie", "photoUrls": [], "category": {"id": 1, "name": "dogs"}})


def test_petstore_find_by_status_array_query() -> None:
    wire, bound = tool(compiled(petstore(), NO_UPLOAD), "findPetsByStatus")
    assert bound.parameters == (Param("status", "status", "query", "form", True, True),)
    status = wire["inputSchema"]["properties"]["status"]
    assert status["type"] == "array"
    assert status["items"]["enum"] == ["available", "pending", "sold"]
    assert bound.output == Output("200", True, True)  # an array: wrapped as {"result": [...]}
    assert wire["outputSchema"]["required"] == ["result"]


def test_petstore_delete_pet() -> None:
    wire, bound = tool(compiled(petstore(), NO_UPLOAD), "deletePet")
    assert [(p.argument, p.location, p.required) for p in bound.parameters] == [
        ("petId", "path", True),
        ("api_key", "header", False),
    ]
    assert wire["inputSchema"]["required"] == ["petId"]
    assert wire["annotations"] == {"readOnlyHint": False, "destructiveHint": True, "idempotentHint": True}
    assert bound.output == Output(None, False, False)


def test_petstore_add_pet_body_from_a_referenced_request_body_is_flattened() -> None:
    wire, bound = tool(compiled(petstore(), NO_UPLOAD), "addPet")
    # components.requestBodies.Pet: required, a plain object schema: its properties are the arguments
    assert bound.body == Body("application/json", True, None, ("category", "name", "photoUrls", "tags", "status"))
    schema = wire["inputSchema"]
    assert "id" not in schema["properties"]  # readOnly: the request context drops it
    assert schema["required"] == ["name", "photoUrls"]
    assert set(schema["$defs"]) == {"Category", "Tag"}
    assert wire["annotations"] == {"readOnlyHint": False}
    assert "outputSchema" not in wire  # only a 405 is documented


def test_petstore_bodies_that_stay_one_argument() -> None:
    out = compiled(petstore(), NO_UPLOAD)
    wire, bound = tool(out, "updateUser")  # property "username" collides with the path parameter
    assert bound.body == Body("application/json", True, "body")
    assert wire["inputSchema"]["required"] == ["username", "body"]
    assert wire["inputSchema"]["properties"]["body"]["description"] == "Updated user object"
    wire, bound = tool(out, "createUsersWithArrayInput")  # an array
    assert bound.body == Body("application/json", True, "body")
    assert wire["inputSchema"]["properties"]["body"]["items"] == {"$ref": "#/$defs/User"}
    wire, bound = tool(out, "updatePetWithForm")  # a form body that is not required
    assert bound.body == Body("application/x-www-form-urlencoded", False, "body")
    assert wire["inputSchema"]["required"] == ["petId"]


# -- the Swagger Petstore (OpenAPI 3.1) and a small 3.1 document -----------------------------


def petstore_31() -> dict[str, Any]:
    return load_document((DATA / "petstore-3.1.json").read_bytes())


def test_petstore_31_compiles_like_30() -> None:
    out = compiled(petstore_31(), NO_UPLOAD)
    assert [t["name"] for t in out.tools] == PETSTORE_TOOLS
    assert out.report["openapi"] == "3.1" and out.report["tools"] == 19
    assert out.report["renamed"] == [] and out.report["ignored_parameters"] == []
    wire, bound = tool(out, "addPet")
    assert bound.body == Body("application/json", True, None, ("category", "name", "photoUrls", "tags", "status"))
    assert "id" not in wire["inputSchema"]["properties"]  # readOnly: the request context drops it
    wire, bound = tool(out, "getPetById")
    assert bound.output == Output("200", False, True)
    assert wire["outputSchema"]["properties"]["id"] == {"type": "integer", "format": "int64", "readOnly": True}
    # uploadFile offers only application/octet-stream in the 3.1 copy
    err = refused(petstore_31())
    assert err.location == "paths./pet/{petId}/uploadImage.post.requestBody.content"
    assert "application/octet-stream" in str(err)


LOAN = {
    "type": "object",
    "properties": {
        "id": {"type": "string", "format": "uuid", "readOnly": True},
        "title": {"type": "string"},
        "due": {"type": ["string", "null"], "format": "date"},
    },
    "required": ["title"],
}
LINKS = {"type": "object", "properties": {"self": {"type": "string", "format": "uri"}}}
WITH_LINKS = {
    "allOf": [{"$ref": "#/components/schemas/Loan"}, {"properties": {"links": {"$ref": "#/components/schemas/Links"}}}]
}


def loans_31() -> dict[str, Any]:
    """OpenAPI 3.1: path-item parameters, allOf responses, a readOnly property, 201/204 and webhooks."""

    def returns(status: str, schema: Any = None) -> dict[str, Any]:
        response: dict[str, Any] = {"description": "ok"}
        if schema is not None:
            response["content"] = {"application/json": {"schema": schema}}
        return {status: response}

    loan_ref = {"$ref": "#/components/schemas/Loan"}
    doc = api(
        {
            "/loans": {
                "get": {"operationId": "listLoans", "responses": returns("200", {"type": "array", "items": loan_ref})},
                "post": {
                    "operationId": "createLoan",
                    "requestBody": json_body(loan_ref),
                    "responses": returns("201", WITH_LINKS),
                },
            },
            "/loans/{loanId}": {
                "parameters": [param("loanId", "path", schema={"type": "string", "format": "uuid"})],
                "get": {"operationId": "getLoan", "responses": returns("200", WITH_LINKS)},
                "delete": {"operationId": "deleteLoan", "responses": returns("204")},
            },
        },
        {"schemas": {"Loan": LOAN, "Links": LINKS}},
        version="3.1.0",
    )
    doc["webhooks"] = {"loanDue": {"post": {"requestBody": json_body(loan_ref, False), "responses": returns("200")}}}
    return doc


def test_small_31_document_compiles() -> None:
    out = compiled(loans_31())
    assert [t["name"] for t in out.tools] == ["listLoans", "createLoan", "getLoan", "deleteLoan"]
    assert out.report["openapi"] == "3.1" and out.report["tools"] == 4
    assert out.report["skipped"] == [
        {"location": "webhooks", "construct": "webhooks", "reason": "webhooks are requests the API sends: no tools"}
    ]
    loan_id = Param("loanId", "loanId", "path", "simple", False, True)
    defs = {"Loan": LOAN, "Links": LINKS}
    allof = [{"$ref": "#/$defs/Loan"}, {"properties": {"links": {"$ref": "#/$defs/Links"}}}]
    wire, bound = tool(out, "getLoan")  # the path parameter is declared on the path item
    assert bound == Operation(
        "getLoan", "getLoan", "GET", "/loans/{loanId}", (loan_id,), None, Output("200", False, True)
    )
    assert wire["inputSchema"]["properties"] == {"loanId": {"type": "string", "format": "uuid"}}
    assert wire["outputSchema"] == {"type": "object", "allOf": allof, "$defs": defs}  # allOf: object-like, not wrapped
    Draft202012Validator(wire["outputSchema"]).validate({"id": "x", "title": "t", "due": None, "links": {"self": "u"}})
    wire, bound = tool(out, "createLoan")
    assert bound.body == Body("application/json", True, None, ("title", "due"))
    assert wire["inputSchema"] == {
        "type": "object",
        "properties": {"title": {"type": "string"}, "due": {"type": ["string", "null"], "format": "date"}},
        "required": ["title"],
        "additionalProperties": False,
    }  # readOnly "id" dropped from the input
    assert bound.output == Output("201", False, True)
    assert wire["outputSchema"]["allOf"] == allof
    wire, bound = tool(out, "deleteLoan")  # the same path-item parameter, and a 204 without content
    assert bound.parameters == (loan_id,)
    assert bound.output == Output("204", False, False)
    assert "outputSchema" not in wire
    wire, bound = tool(out, "listLoans")  # an array: wrapped
    assert bound.output == Output("200", True, True)
    assert wire["outputSchema"]["properties"] == {"result": {"type": "array", "items": {"$ref": "#/$defs/Loan"}}}


# -- parameters -------------------------------------------------------------------------------


def test_every_location_and_style() -> None:
    params = [
        param("a", "path"),
        param("b", "path", style="label", explode=True),
        param("c", "path", style="matrix"),
        param("q1", "query"),
        param("q2", "query", style="form", explode=False, required=True),
        param("q3", "query", style="spaceDelimited", schema={"type": "array", "items": {"type": "string"}}),
        param("q4", "query", style="pipeDelimited", schema={"type": "array", "items": {"type": "string"}}),
        param("q5", "query", style="deepObject", explode=True, schema={"type": "object"}),
        param("q6", "query", allowReserved=True),
        param("X-H", "header"),
        param("c1", "cookie"),
    ]
    doc = api({"/x/{a}/{b}/{c}": {"get": op(parameters=list(reversed(params)))}})
    _, bound = tool(compiled(doc), "op")
    assert bound.parameters == (
        Param("c", "c", "path", "matrix", False, True),
        Param("b", "b", "path", "label", True, True),
        Param("a", "a", "path", "simple", False, True),
        Param("q6", "q6", "query", "form", True, False, True),
        Param("q5", "q5", "query", "deepObject", True, False),
        Param("q4", "q4", "query", "pipeDelimited", False, False),
        Param("q3", "q3", "query", "spaceDelimited", False, False),
        Param("q2", "q2", "query", "form", False, True),
        Param("q1", "q1", "query", "form", True, False),
        Param("X-H", "X-H", "header", "simple", False, False),
        Param("c1", "c1", "cookie", "form", True, False),
    )


@pytest.mark.parametrize(
    ("where", "style"), [("query", "matrix"), ("header", "form"), ("path", "form"), ("cookie", "simple"), ("query", 3)]
)
def test_undefined_styles_refused(where: str, style: Any) -> None:
    name = "p" if where == "path" else "v"
    params = [param("p", "path")] + ([param(name, where)] if where != "path" else [])
    params[-1]["style"] = style
    doc = api({"/x/{p}": {"get": op(parameters=params)}})
    with pytest.raises(InvalidApiDocument) as info:
        check_document(doc)  # the OpenAPI schema knows the styles of each location ...
    assert info.value.location == f"paths./x/{{p}}.get.parameters[{len(params) - 1}]"
    with pytest.raises(InvalidApiDocument) as info:
        compile_source(doc)  # ... and so does the compiler, on its own
    assert info.value.location == f"paths./x/{{p}}.get.parameters[{len(params) - 1}].style"


def test_parameter_refs_and_path_item_merge() -> None:
    components = {"parameters": {"Limit": param("limit", "query", description="shared", schema={"type": "integer"})}}
    item = {
        "parameters": [{"$ref": "#/components/parameters/Limit"}, param("X-Trace", "header"), param("keep", "query")],
        "get": op(parameters=[param("limit", "query", description="own"), param("x-trace", "header", required=True)]),
    }
    wire, bound = tool(compiled(api({"/x": item}, components)), "op")
    assert [(p.argument, p.location) for p in bound.parameters] == [
        ("keep", "query"),
        ("limit", "query"),
        ("x-trace", "header"),
    ]
    assert wire["inputSchema"]["properties"]["limit"] == {"type": "string", "description": "own"}
    assert wire["inputSchema"]["required"] == ["x-trace"]
    # without the operation's own, the referenced component is used
    item["get"] = op()
    wire, _ = tool(compiled(api({"/x": item}, components)), "op")
    assert wire["inputSchema"]["properties"]["limit"] == {"type": "integer", "description": "shared"}


def test_parameter_content() -> None:
    json_param = {"name": "filter", "in": "query", "content": {"application/json": {"schema": {"type": "object"}}}}
    wire, bound = tool(compiled(api({"/x": {"get": op(parameters=[json_param])}})), "op")
    assert bound.parameters[0].content_type == "application/json"
    assert wire["inputSchema"]["properties"]["filter"] == {"type": "object"}
    xml_param = {"name": "filter", "in": "query", "content": {"application/xml": {"schema": {"type": "object"}}}}
    err = refused(api({"/x": {"get": op(parameters=[xml_param])}}))
    assert err.location == "paths./x.get.parameters[0].content.application/xml"


def test_argument_name_collisions() -> None:
    params = [param("id", "path"), param("id", "query"), param("ID", "header"), param("id", "cookie")]
    wire, bound = tool(compiled(api({"/x/{id}": {"get": op(parameters=params)}})), "op")
    assert [(p.argument, p.name, p.location) for p in bound.parameters] == [
        ("id", "id", "path"),
        ("query_id", "id", "query"),
        ("header_ID", "ID", "header"),
        ("cookie_id", "id", "cookie"),
    ]
    assert list(wire["inputSchema"]["properties"]) == ["id", "query_id", "header_ID", "cookie_id"]
    # a header compares case-insensitively with any earlier argument
    _, bound = tool(
        compiled(api({"/x": {"get": op(parameters=[param("trace", "query"), param("Trace", "header")])}})), "op"
    )
    assert [p.argument for p in bound.parameters] == ["trace", "header_Trace"]
    # colliding twice is refused
    params = [param("id", "path"), param("query_id", "query"), param("id", "query")]
    err = refused(api({"/x/{id}": {"get": op(parameters=params)}}))
    assert err.location == "paths./x/{id}.get.parameters[2]"
    assert "collides" in str(err)


def test_ignored_headers_reported() -> None:
    names = ["Accept", "content-type", "Authorization", "Host", "Cookie", "Content-Length", "Connection", "User-Agent"]
    params = [param(n, "header") for n in names] + [param("X-Kept", "header")]
    out = compiled(api({"/x": {"get": op(parameters=params)}}))
    wire, bound = tool(out, "op")
    assert [p.name for p in bound.parameters] == ["X-Kept"]
    ignored = out.report["ignored_parameters"]
    assert [i["name"] for i in ignored] == names
    assert all(i["operation"] == "GET /x" and i["in"] == "header" for i in ignored)
    assert "OpenAPI" in ignored[0]["reason"] and "gateway" in ignored[3]["reason"]


def test_header_names_must_be_tokens() -> None:
    err = refused(api({"/x": {"get": op(parameters=[param("X Bad", "header")])}}))
    assert err.location == "paths./x.get.parameters[0].name"


# -- request bodies ---------------------------------------------------------------------------

OBJ = {"type": "object", "required": ["a"], "properties": {"a": {"type": "string"}, "b": {"type": "integer"}}}


def body_tool(
    request_body: Any, parameters: list[Any] | None = None, **components: Any
) -> tuple[dict[str, Any], Operation]:
    doc = api({"/x": {"post": op(requestBody=request_body, parameters=parameters or [])}}, components or None)
    return tool(compiled(doc), "op")


def test_required_plain_object_body_is_flattened() -> None:
    wire, bound = body_tool(json_body(OBJ))
    assert bound.body == Body("application/json", True, None, ("a", "b"))
    assert wire["inputSchema"]["properties"] == OBJ["properties"]
    assert wire["inputSchema"]["required"] == ["a"]


@pytest.mark.parametrize(
    "schema",
    [
        {**OBJ, "additionalProperties": True},
        {**OBJ, "additionalProperties": {"type": "string"}},
        {"oneOf": [OBJ, {"type": "string"}]},
        {"allOf": [OBJ]},
        {"type": "object"},
        {"type": "array", "items": OBJ},
        {**OBJ, "nullable": True},
    ],
)
def test_bodies_that_are_not_plain_objects_stay_one_argument(schema: Any) -> None:
    wire, bound = body_tool(json_body(schema))
    assert bound.body == Body("application/json", True, "body")
    assert wire["inputSchema"]["required"] == ["body"]


def test_optional_body_is_an_optional_argument() -> None:
    wire, bound = body_tool(json_body(OBJ, required=False))
    assert bound.body == Body("application/json", False, "body")
    assert "required" not in wire["inputSchema"]


def test_body_argument_names() -> None:
    wire, bound = body_tool(json_body(OBJ), [param("a", "query")])  # property a collides: not flattened
    assert bound.body == Body("application/json", True, "body")
    _, bound = body_tool(json_body({"type": "array"}), [param("body", "query")])
    assert bound.body is not None and bound.body.argument == "request_body"
    err = refused(
        api(
            {
                "/x": {
                    "post": op(
                        requestBody=json_body({"type": "array"}),
                        parameters=[param("body", "query"), param("request_body", "query")],
                    )
                }
            }
        )
    )
    assert err.location == "paths./x.post.requestBody"


def test_body_media_type_preference() -> None:
    content = {
        "application/xml": {"schema": OBJ},
        "application/x-www-form-urlencoded": {"schema": OBJ},
        "application/merge-patch+json; charset=utf-8": {"schema": OBJ},
    }
    _, bound = body_tool({"required": True, "content": content})
    assert bound.body == Body("application/merge-patch+json", True, None, ("a", "b"))
    content["Application/JSON"] = {"schema": OBJ}
    _, bound = body_tool({"required": True, "content": content})
    assert bound.body is not None and bound.body.content_type == "application/json"


def test_form_bodies() -> None:
    form = {
        "type": "object",
        "properties": {
            "s": {"type": "string"},
            "n": {"type": "integer", "nullable": True},
            "tags": {"type": "array", "items": {"type": "string"}},
            "e": {"$ref": "#/components/schemas/Color"},
        },
    }
    media = "application/x-www-form-urlencoded"
    _, bound = body_tool(json_body(form, media_type=media), schemas={"Color": {"type": "string", "enum": ["red"]}})
    assert bound.body == Body(media, True, None, ("s", "n", "tags", "e"))
    nested = {"type": "object", "properties": {"o": {"type": "object", "properties": {"x": {"type": "string"}}}}}
    err = refused(api({"/x": {"post": op(requestBody=json_body(nested, media_type=media))}}))
    assert err.location == f"paths./x.post.requestBody.content.{media}.schema"
    err = refused(api({"/x": {"post": op(requestBody=json_body({"type": "string"}, media_type=media))}}))
    assert "scalars" in str(err)


def test_text_plain_body() -> None:
    wire, bound = body_tool(json_body({"type": "string", "maxLength": 5}, media_type="text/plain"))
    assert bound.body == Body("text/plain", True, "body")
    assert wire["inputSchema"]["properties"]["body"] == {"type": "string", "maxLength": 5}


def test_unsupported_body_refused_with_advice() -> None:
    body = {"content": {"application/octet-stream": {"schema": {"type": "string"}}, "application/xml": {}}}
    err = refused(api({"/x": {"post": op(requestBody=body)}}))
    assert err.location == "paths./x.post.requestBody.content"
    assert "application/octet-stream, application/xml" in str(err)
    assert "Exclude the operation" in str(err)


# -- outputs ----------------------------------------------------------------------------------


def responses_tool(responses: dict[str, Any], **components: Any) -> tuple[dict[str, Any], Operation, CompiledSource]:
    out = compiled(api({"/x": {"get": op(responses=responses)}}, components or None))
    wire, bound = tool(out, "op")
    return wire, bound, out


def returns(schema: Any, media_type: str = "application/json") -> dict[str, Any]:
    return {"description": "r", "content": {media_type: {"schema": schema}}}


def test_success_response_choice() -> None:
    _, bound, _ = responses_tool({"202": returns(OBJ), "201": returns({"type": "string"}), "default": returns(OBJ)})
    assert bound.output == Output("201", True, True)
    _, bound, _ = responses_tool({"2XX": returns(OBJ), "default": returns({"type": "string"})})
    assert bound.output == Output("2XX", False, True)
    _, bound, _ = responses_tool({"404": returns(OBJ), "default": returns({"type": "string"})})
    assert bound.output == Output("default", True, True)
    _, bound, _ = responses_tool({"204": {"description": "none"}, "default": returns(OBJ)})
    assert bound.output == Output("204", False, False)  # 2xx without content: no outputSchema, not default's


def test_output_object_and_wrapping() -> None:
    wire, bound, _ = responses_tool({"200": returns({"$ref": "#/components/schemas/O"})}, schemas={"O": OBJ})
    assert bound.output == Output("200", False, True)
    assert wire["outputSchema"] == OBJ
    wire, bound, _ = responses_tool({"200": returns({"type": "integer"}, "application/problem+json")})
    assert bound.output == Output("200", True, True)
    assert wire["outputSchema"] == {
        "type": "object",
        "properties": {"result": {"type": "integer"}},
        "required": ["result"],
    }
    wire, bound, _ = responses_tool({"200": returns({**OBJ, "nullable": True})})
    assert bound.output.wrapped  # null is not an object
    wire, bound, _ = responses_tool({"200": returns({"allOf": [OBJ, {"properties": {"c": {"type": "string"}}}]})})
    assert not bound.output.wrapped and wire["outputSchema"]["type"] == "object"


def test_write_only_dropped_from_outputs() -> None:
    schema = {"type": "object", "properties": {"pw": {"type": "string", "writeOnly": True}, "id": {"type": "integer"}}}
    wire, _, _ = responses_tool({"200": returns(schema)})
    assert list(wire["outputSchema"]["properties"]) == ["id"]


def test_non_json_success_has_no_output_schema() -> None:
    wire, bound, out = responses_tool({"200": returns({"type": "string"}, "text/csv")})
    assert bound.output == Output("200", False, False)
    assert "outputSchema" not in wire
    assert any(s["construct"] == "outputSchema" for s in out.report["skipped"])


# -- names, descriptions, annotations ---------------------------------------------------------


def test_tool_names() -> None:
    assert tool_name("get pet/by id", "GET", "/x") == ("get_pet_by_id", "sanitised")
    assert tool_name(None, "GET", "/pet/{petId}") == ("get_pet_petId", "no operationId")
    assert tool_name(None, "POST", "/") == ("post", "no operationId")
    assert tool_name("a" * 70, "GET", "/x") == ("a" * 64, "truncated")
    paths = {
        "/pet/{petId}": {"get": op(None, parameters=[param("petId", "path")])},
        "/z": {"get": op("list zoo.animals:v2")},
    }
    out = compiled(api(paths))
    assert [t["name"] for t in out.tools] == ["get_pet_petId", "list_zoo.animals_v2"]
    assert out.report["renamed"] == [
        {"operation": "GET /pet/{petId}", "operation_id": None, "tool": "get_pet_petId", "reason": "no operationId"},
        {
            "operation": "GET /z",
            "operation_id": "list zoo.animals:v2",
            "tool": "list_zoo.animals_v2",
            "reason": "sanitised",
        },
    ]


def test_tool_name_collisions_refused_then_resolved_by_override_or_exclusion() -> None:
    doc = api({"/a": {"get": op("list:items")}, "/b": {"get": op("list/items")}})
    err = refused(doc)
    assert err.location == "paths./b.get"
    assert "GET /a (operationId list:items)" in str(err) and "GET /b (operationId list/items)" in str(err)
    assert "overrides" in str(err) and "exclude" in str(err)
    out = compiled(doc, overrides={"list/items": {"name": "list_b"}})
    assert [t["name"] for t in out.tools] == ["list_items", "list_b"]
    assert out.report["renamed"][-1] == {
        "operation": "GET /b",
        "operation_id": "list/items",
        "tool": "list_b",
        "reason": "override",
    }
    assert [t["name"] for t in compiled(doc, {"exclude": {"paths": ["/b"]}}).tools] == ["list_items"]
    err = refused(doc, overrides={"list/items": {"name": "list_items"}, "list:items": {"name": "x"}, "GET /x": {}})
    assert err.location == "overrides.GET /x"


def test_descriptions_titles_deprecation() -> None:
    paths = {
        "/a": {"get": op("a", summary="Same", description="Same", deprecated=True)},
        "/b": {"get": op("b", description="x" * 5000)},
        "/c": {"get": op("c")},
    }
    out = compiled(api(paths))
    a, b, c = out.tools
    assert a["description"] == "Deprecated. Same" and a["title"] == "Same"
    assert len(b["description"]) == 4096 and b["description"].endswith("…") and "title" not in b
    assert "description" not in c and "title" not in c


def test_method_annotations() -> None:
    methods = ["get", "head", "options", "put", "post", "patch", "delete"]
    out = compiled(api({"/x": {m: op(m) for m in methods}}))
    assert [t["annotations"] for t in out.tools] == [
        {"readOnlyHint": True},
        {"readOnlyHint": True},
        {"readOnlyHint": True},
        {"readOnlyHint": False, "idempotentHint": True},
        {"readOnlyHint": False},
        {"readOnlyHint": False},
        {"readOnlyHint": False, "destructiveHint": True, "idempotentHint": True},
    ]


# -- overrides --------------------------------------------------------------------------------


def test_override_rename_and_annotations() -> None:
    overrides = {
        "deletePet": {
            "name": "remove_pet",
            "title": "Remove a pet",
            "description": "Removes it.",
            "annotations": {"destructiveHint": False, "openWorldHint": False, "title": "Remove"},
        },
        "get /pet/{petId}": {"annotations": {"readOnlyHint": False}},
    }
    out = compiled(petstore(), NO_UPLOAD, overrides)
    wire, bound = tool(out, "remove_pet")
    assert bound.tool == "remove_pet" and bound.operation_id == "deletePet"
    assert wire["title"] == "Remove a pet" and wire["description"] == "Removes it."
    assert wire["annotations"] == {
        "readOnlyHint": False,
        "destructiveHint": False,
        "idempotentHint": True,
        "openWorldHint": False,
        "title": "Remove",
    }
    assert tool(out, "getPetById")[0]["annotations"] == {"readOnlyHint": False}


@pytest.mark.parametrize(
    ("overrides", "location"),
    [
        ([], "overrides"),
        ({"addPet": []}, "overrides.addPet"),
        ({"addPet": {"nam": "x"}}, "overrides.addPet"),
        ({"addPet": {"name": "has space"}}, "overrides.addPet.name"),
        ({"addPet": {"name": "x" * 65}}, "overrides.addPet.name"),
        ({"addPet": {"title": 3}}, "overrides.addPet.title"),
        ({"addPet": {"description": "x" * 4097}}, "overrides.addPet.description"),
        ({"addPet": {"annotations": []}}, "overrides.addPet.annotations"),
        ({"addPet": {"annotations": {"readOnlyHint": "yes"}}}, "overrides.addPet.annotations.readOnlyHint"),
        ({"addPet": {"annotations": {"cheap": True}}}, "overrides.addPet.annotations.cheap"),
        ({"GET /pet/{petId}": {}, "get /pet/{petId}": {}}, "overrides.get /pet/{petId}"),
    ],
)
def test_malformed_overrides(overrides: Any, location: str) -> None:
    with pytest.raises(InvalidApiDocument) as info:
        overrides_from_body(overrides)
    assert info.value.location == location


def test_override_keys_must_name_selected_operations() -> None:
    assert refused(petstore(), NO_UPLOAD, {"nope": {}}).location == "overrides.nope"
    err = refused(petstore(), NO_UPLOAD, {"uploadFile": {"name": "u"}})
    assert err.location == "overrides.uploadFile" and "not selected" in str(err)
    err = refused(petstore(), NO_UPLOAD, {"getPetById": {}, "GET /pet/{petId}": {}})
    assert "already overrides" in str(err)
    assert overrides_from_body(None) == {} and overrides_from_body({"a": {}}) == {"a": Override()}


# -- selection --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("selection", "names"),
    [
        ({"include": {"tags": ["store"]}}, ["getInventory", "placeOrder", "getOrderById", "deleteOrder"]),
        ({"include": {"paths": ["/store/order*"]}}, ["placeOrder", "getOrderById", "deleteOrder"]),
        ({"include": {"operation_ids": ["getPetById", "loginUser"]}}, ["getPetById", "loginUser"]),
        (
            {"include": {"tags": ["store"], "operation_ids": ["logoutUser"]}, "exclude": {"paths": ["/store/order/*"]}},
            ["getInventory", "placeOrder", "logoutUser"],
        ),
        (
            {"include": {"tags": ["user"]}, "exclude": {"operation_ids": ["deleteUser"], "tags": ["pet"]}},
            PETSTORE_TOOLS[11:18],
        ),
        (NO_UPLOAD, PETSTORE_TOOLS),
    ],
)
def test_selection(selection: Any, names: list[str]) -> None:
    assert [t["name"] for t in compiled(petstore(), selection).tools] == names


@pytest.mark.parametrize(
    ("selection", "location"),
    [
        ([], "selection"),
        ({"only": {}}, "selection"),
        ({"include": []}, "selection.include"),
        ({"include": {"tag": ["pet"]}}, "selection.include"),
        ({"include": {"tags": "pet"}}, "selection.include.tags"),
        ({"exclude": {"paths": ["/pet", 3]}}, "selection.exclude.paths[1]"),
        ({"exclude": {"operation_ids": [""]}}, "selection.exclude.operation_ids[0]"),
    ],
)
def test_malformed_selection(selection: Any, location: str) -> None:
    with pytest.raises(InvalidApiDocument) as info:
        Selection.from_body(selection)
    assert info.value.location == location


def test_selection_refusals() -> None:
    assert refused(petstore(), {"include": {"tags": ["nope"]}}).location == "selection"
    err = refused(petstore(), {"include": {"operation_ids": ["getPetById", "getPetByID"]}})
    assert err.location == "selection.include.operation_ids[1]"
    assert Selection.from_body(None) == Selection.from_body({}) == Selection()
    selection = Selection.from_body({"include": {"tags": ["a"], "paths": ["/x*"]}, "exclude": {"operation_ids": ["b"]}})
    assert Selection.from_body(selection.to_body()) == selection


def test_constructs_not_served_are_reported() -> None:
    callbacks = {"onEvent": {"{$request.body#/url}": {"post": op("cb")}}}
    paths = {"/x": {"servers": [{"url": "https://other.example"}], "get": op("x", callbacks=callbacks), "put": op("y")}}
    skipped = compiled(api(paths)).report["skipped"]
    assert [(s["location"], s["construct"]) for s in skipped] == [
        ("paths./x.get.callbacks", "callbacks"),
        ("paths./x.servers", "servers"),
    ]


def test_operation_cap() -> None:
    paths = {f"/r{i}": {"get": op(f"op{i}")} for i in range(MAX_OPERATIONS + 1)}
    doc = api(paths)
    err = refused(doc)
    assert err.location == "selection" and f"more than {MAX_OPERATIONS}" in str(err)
    out = compiled(doc, {"exclude": {"operation_ids": ["op7"]}})
    assert len(out.tools) == MAX_OPERATIONS


# -- TRACE ------------------------------------------------------------------------------------


def test_trace_operations_are_never_compiled_but_reported() -> None:
    # A TRACE request is echoed back, headers included: the brokered credential would reach the agent.
    paths = {"/x": {"get": op("getX"), "trace": op("traceX")}, "/y": {"trace": op(None)}}
    out = compiled(api(paths))
    assert [t["name"] for t in out.tools] == ["getX"]
    assert [o.method for o in out.operations] == ["GET"]
    traces = [s for s in out.report["skipped"] if s["construct"] == "trace"]
    assert [s["location"] for s in traces] == ["paths./x.trace", "paths./y.trace"]
    assert all("credential" in s["reason"] for s in traces)
    # selected by tag or path glob: skipped the same way; excluded: not reported
    out = compiled(api(paths), {"include": {"paths": ["/x"]}})
    assert [s["location"] for s in out.report["skipped"] if s["construct"] == "trace"] == ["paths./x.trace"]
    out = compiled(api(paths), {"exclude": {"operation_ids": ["traceX"]}})
    assert [s["location"] for s in out.report["skipped"] if s["construct"] == "trace"] == ["paths./y.trace"]
    # a selection of TRACE operations only selects nothing
    err = refused(api(paths), {"include": {"paths": ["/y"]}})
    assert err.location == "selection" and "TRACE" in str(err)


def test_trace_operation_named_by_operation_id_refused() -> None:
    paths = {"/x": {"get": op("getX"), "trace": op("traceX")}}
    err = refused(api(paths), {"include": {"operation_ids": ["getX", "traceX"]}})
    assert err.location == "selection.include.operation_ids[1]"
    assert "TRACE" in str(err) and "credential" in str(err)
    # an override of it names no selected operation
    assert refused(api(paths), overrides={"traceX": {"name": "t"}}).location == "overrides.traceX"


# -- total size -------------------------------------------------------------------------------


def size_of(out: CompiledSource) -> int:
    return sum(
        len(orjson.dumps(t)) + len(orjson.dumps(o.to_record())) for t, o in zip(out.tools, out.operations, strict=True)
    )


def test_total_size_cap_is_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    out = compiled(petstore(), NO_UPLOAD)
    total = size_of(out)
    assert total < MAX_SOURCE_BYTES
    monkeypatch.setattr(operations, "MAX_SOURCE_BYTES", total)
    assert len(compiled(petstore(), NO_UPLOAD).tools) == len(PETSTORE_TOOLS)
    monkeypatch.setattr(operations, "MAX_SOURCE_BYTES", total - 1)
    err = refused(petstore(), NO_UPLOAD)
    assert err.location == "paths./user/{username}.delete"  # the last operation tips it over
    assert f"{len(PETSTORE_TOOLS)} of {len(PETSTORE_TOOLS)} selected" in str(err)
    assert f"more than {total - 1} bytes" in str(err) and "narrow the selection" in str(err)


def big_schema_document(operations_count: int) -> dict[str, Any]:
    """The review's document: one 270 KB schema that every operation takes and returns."""
    props = {f"p{i:05d}": {"type": "string", "description": "x" * 40} for i in range(3000)}
    ref = {"$ref": "#/components/schemas/Big"}
    paths = {
        f"/r{i}": {
            "post": op(
                f"op{i}",
                requestBody=json_body(ref),
                responses={"200": {"description": "ok", "content": {"application/json": {"schema": ref}}}},
            )
        }
        for i in range(operations_count)
    }
    return api(paths, {"schemas": {"Big": {"type": "object", "properties": props}}})


def test_total_size_cap_stops_early_on_one_schema_referenced_by_many_operations() -> None:
    doc = load_document(json.dumps(big_schema_document(1000)))
    assert len(json.dumps(doc)) < 600_000  # the document is small; its 1000 tools would be 534 MB
    check_document(doc)
    started = time.monotonic()
    with pytest.raises(InvalidApiDocument) as info:
        compile_source(doc)
    elapsed = time.monotonic() - started
    assert elapsed < 10, elapsed  # it took 46 s (and 2.6 GiB) to build them all
    err = info.value
    # each tool is about half a MB (the schema twice): the 16th or so passes 8 MiB
    match = re.fullmatch(r"paths\./r([0-9]+)\.post", err.location)
    assert match and 10 <= int(match.group(1)) < 20, err.location
    assert f"{int(match.group(1)) + 1} of 1000 selected" in str(err) and "narrow the selection" in str(err)
    out = compile_source(doc, selection=Selection.from_body({"include": {"paths": ["/r1", "/r2"]}}))
    assert [t["name"] for t in out.tools] == ["op1", "op2"]  # a narrower selection compiles
    assert size_of(out) < MAX_SOURCE_BYTES
