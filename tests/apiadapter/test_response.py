"""to_result: every mapping of an API response to a CallToolResult and its safe category."""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest
from jsonschema import Draft202012Validator

from gateway.apiadapter.binding import Operation, Output
from gateway.apiadapter.response import EXCERPT_CHARS, META_KEY, error_category, to_result

URL = "https://api.example.test/v1/things/1"
SCHEMA = {
    "type": "object",
    "required": ["id", "name"],
    "properties": {"id": {"type": "integer"}, "name": {"type": "string"}},
}
WRAPPED_SCHEMA = {"type": "object", "properties": {"result": {"type": "array", "items": {"type": "integer"}}}}


def op(*, schema: bool = False, wrapped: bool = False) -> Operation:
    return Operation("t", "t", "GET", "/things/{id}", output=Output("200" if schema else None, wrapped, schema))


def run(
    operation: Operation,
    status: int,
    content_type: str | None,
    body: bytes,
    validator: Any = None,
) -> tuple[dict[str, Any], str | None]:
    result, category = to_result(
        operation, status=status, content_type=content_type, body=body, url_for_blob=URL, output_validator=validator
    )
    assert result["_meta"][META_KEY] == {"status": status, "category": category}
    assert result.get("isError", False) is (category is not None)
    return result, category


def text_of(result: dict[str, Any]) -> str:
    (block,) = result["content"]
    assert block["type"] == "text"
    return str(block["text"])


def test_json_object_without_schema_is_structured_and_text() -> None:
    result, category = run(op(), 200, "application/json; charset=utf-8", b'{ "a" : [1, 2],\n "b": null }')
    assert category is None
    assert result["structuredContent"] == {"a": [1, 2], "b": None}
    assert text_of(result) == '{"a":[1,2],"b":null}'


def test_json_non_object_without_wrapping_is_text_only() -> None:
    result, category = run(op(), 200, "application/json", b"[1, 2, 3]")
    assert category is None and "structuredContent" not in result
    assert text_of(result) == "[1,2,3]"


def test_wrapped_json_and_plus_json_types() -> None:
    validator = Draft202012Validator(WRAPPED_SCHEMA)
    result, category = run(op(schema=True, wrapped=True), 201, "application/vnd.api+json", b"[1,2]", validator)
    assert category is None
    assert result["structuredContent"] == {"result": [1, 2]}
    assert text_of(result) == "[1,2]"


def test_output_schema_match() -> None:
    validator = Draft202012Validator(SCHEMA)
    result, category = run(op(schema=True), 200, "application/json", b'{"id": 1, "name": "rex"}', validator)
    assert category is None and result["structuredContent"] == {"id": 1, "name": "rex"}


def test_output_schema_mismatch_names_the_path_only() -> None:
    validator = Draft202012Validator(SCHEMA)
    body = b'{"id": "SECRET-VALUE", "name": "rex"}'
    result, category = run(op(schema=True), 200, "application/json", body, validator)
    assert category == "upstream_response_invalid"
    text = text_of(result)
    assert "$.id" in text and "SECRET-VALUE" not in text
    assert "structuredContent" not in result


def test_output_schema_but_json_is_not_an_object() -> None:
    result, category = run(op(schema=True), 200, "application/json", b"[1]", Draft202012Validator(SCHEMA))
    assert category == "upstream_response_invalid"


@pytest.mark.parametrize(
    ("status", "content_type", "body"),
    [(204, None, b""), (200, "text/plain", b"hello"), (200, "application/json", b"")],
)
def test_output_schema_without_a_json_body_is_invalid(status: int, content_type: str | None, body: bytes) -> None:
    result, category = run(op(schema=True), status, content_type, body, Draft202012Validator(SCHEMA))
    assert category == "upstream_response_invalid"
    assert f"HTTP {status}" in text_of(result)


def test_unparseable_json_is_invalid() -> None:
    result, category = run(op(), 200, "application/json", b'{"a": NaN SECRET')
    assert category == "upstream_response_invalid"
    assert "SECRET" not in text_of(result)


def test_text_is_decoded_with_its_charset() -> None:
    result, category = run(op(), 200, "text/plain; charset=ISO-8859-1", "café".encode("latin-1"))
    assert category is None and text_of(result) == "café"
    result, _ = run(op(), 200, "text/csv", b"a,b\n1,2\n")
    assert text_of(result) == "a,b\n1,2\n"


def test_image_becomes_an_image_block() -> None:
    result, category = run(op(), 200, "image/png", b"\x89PNG\r\n")
    assert category is None
    assert result["content"] == [
        {"type": "image", "data": base64.b64encode(b"\x89PNG\r\n").decode(), "mimeType": "image/png"}
    ]


@pytest.mark.parametrize(
    ("content_type", "mime"),
    [
        ("application/octet-stream", "application/octet-stream"),
        (None, "application/octet-stream"),
        ("application/pdf; x=1", "application/pdf"),
    ],
)
def test_other_media_becomes_an_embedded_blob(content_type: str | None, mime: str) -> None:
    body = bytes(range(10))
    result, category = run(op(), 200, content_type, body)
    assert category is None
    assert result["content"] == [
        {"type": "resource", "resource": {"uri": URL, "mimeType": mime, "blob": base64.b64encode(body).decode()}}
    ]


@pytest.mark.parametrize("content_type", [None, "application/json", "text/plain"])
def test_empty_success_body_is_http_status_text(content_type: str | None) -> None:
    result, category = run(op(), 204, content_type, b"")
    assert category is None and text_of(result) == "HTTP 204"


@pytest.mark.parametrize(
    ("status", "category"),
    [
        (301, "upstream_redirect"),
        (302, "upstream_redirect"),
        (307, "upstream_redirect"),
        (400, "api_bad_request"),
        (422, "api_bad_request"),
        (401, "api_unauthorized"),
        (403, "api_forbidden"),
        (404, "api_not_found"),
        (409, "api_conflict"),
        (429, "api_rate_limited"),
        (405, "api_client_error"),
        (418, "api_client_error"),
        (500, "api_server_error"),
        (502, "api_server_error"),
        (503, "api_server_error"),
    ],
)
def test_error_statuses_map_to_categories(status: int, category: str) -> None:
    assert error_category(status) == category
    result, got = run(op(schema=True), status, "application/json", b'{"error": "nope"}')
    assert got == category
    text = text_of(result)
    assert text.startswith(f"HTTP {status} ")
    if category != "upstream_redirect":
        assert text.endswith('{"error": "nope"}')
    assert "structuredContent" not in result


def test_error_text_has_reason_and_bounded_excerpt() -> None:
    result, _ = run(op(), 404, "text/plain", b"x" * 10_000)
    text = text_of(result)
    assert text.startswith("HTTP 404 Not Found: xxx")
    assert len(text) <= len("HTTP 404 Not Found: ") + EXCERPT_CHARS
    result, _ = run(op(), 500, "application/octet-stream", b"\x00binary")
    assert text_of(result) == "HTTP 500 Internal Server Error"
    result, _ = run(op(), 503, "application/problem+json", orjson.dumps({"title": "down"}))
    assert text_of(result) == 'HTTP 503 Service Unavailable: {"title":"down"}'


def test_unusual_statuses_are_invalid() -> None:
    _, category = run(op(), 199, None, b"")
    assert category == "upstream_response_invalid"
