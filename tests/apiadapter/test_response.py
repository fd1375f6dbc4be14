"""to_result: every mapping of an API response to a CallToolResult and its safe category."""

from __future__ import annotations

import base64
import json
from typing import Any
from urllib.parse import quote, quote_plus

import orjson
import pytest
from jsonschema import Draft202012Validator

from gateway.apiadapter.binding import Operation, Output
from gateway.apiadapter.response import (
    EXCERPT_CHARS,
    META_KEY,
    MIN_SECRET_CHARS,
    REDACTED,
    error_category,
    redact,
    secret_forms,
    to_result,
)

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


# ---------------------------------------------------------------- charsets that are not text encodings


@pytest.mark.parametrize(
    "charset",
    [
        "base64",
        "hex",
        "rot13",
        "zlib",
        "bz2",
        "uu",
        "quopri",
        "idna",
        "punycode",
        "undefined",
        "unicode_escape",
        "x-nope",
    ],
)
def test_a_charset_that_does_not_decode_bytes_is_read_as_utf8(charset: str) -> None:
    body = "héllo \xff".encode()
    result, category = run(op(), 200, f"text/plain; charset={charset}", body)
    assert category is None and text_of(result) == "héllo \xff"
    result, category = run(op(), 404, f'application/json; charset="{charset}"', b'{"e": "\xc3\xa9\xff"}')
    assert category == "api_not_found" and text_of(result) == 'HTTP 404 Not Found: {"e": "é\ufffd"}'


def test_real_charsets_are_still_used() -> None:
    for charset in ("utf-16", "UTF-16LE", "latin-1", "cp1252", "utf-8-sig"):
        result, _ = run(op(), 200, f"text/plain; charset={charset}", "café".encode(charset))
        assert text_of(result) == "café", charset


def test_json_nested_too_deeply_raises_for_the_caller_to_map() -> None:
    # The caller (ApiUpstream) turns these into upstream_response_invalid: tests/apiadapter/test_upstream.py.
    node = {"type": "object", "properties": {"c": {"$ref": "#"}}}
    deep = b'{"c":' * 900 + b"{}" + b"}" * 900
    with pytest.raises(RecursionError):
        to_result(
            op(schema=True),
            status=200,
            content_type="application/json",
            body=deep,
            url_for_blob=URL,
            output_validator=Draft202012Validator(node),
        )
    with pytest.raises(orjson.JSONEncodeError):
        to_result(op(), status=200, content_type="application/json", body=deep, url_for_blob=URL, output_validator=None)


# ---------------------------------------------------------------- brokered secrets


SECRET = 'k3y/with+odd "chars" é&='
TOKEN = "tok-5e1f9a"


def _bodies(value: Any) -> list[bytes]:
    """``value`` as JSON the ways an API may write it: minimal escaping, \\uXXXX, \\/."""
    ascii_json = json.dumps(value)
    return [orjson.dumps(value), ascii_json.encode(), ascii_json.replace("/", "\\/").encode()]


def test_secret_forms_cover_raw_percent_encoded_and_json_escaped_values() -> None:
    forms = secret_forms([SECRET, f"Bearer {TOKEN}", "abc"])
    echoed = {
        "header": SECRET,
        "authorization": f"Bearer {TOKEN}",
        "token": TOKEN,
        "query": f"api_key={quote(SECRET, safe='')}&x=1",
        "slash_kept": quote(SECRET),
        "form": quote_plus(SECRET),
        "lower": quote(SECRET, safe="").lower(),
        "short": "abc",
    }
    for body in _bodies(echoed):
        redacted = redact(body, forms)
        data = json.loads(redacted)  # still valid JSON
        assert data == {
            "header": REDACTED,
            "authorization": REDACTED,
            "token": REDACTED,
            "query": f"api_key={REDACTED}&x=1",
            "slash_kept": REDACTED,
            "form": REDACTED,
            "lower": REDACTED,
            "short": "abc",  # shorter than MIN_SECRET_CHARS: left alone
        }, body
    assert MIN_SECRET_CHARS == 4 and secret_forms(["abc", ""]) == ()


def test_to_result_never_carries_a_secret() -> None:
    forms = secret_forms([SECRET, TOKEN])
    secrets = (SECRET, TOKEN, quote(SECRET, safe=""), base64.b64encode(SECRET.encode()).decode())

    def clean(result: dict[str, Any]) -> dict[str, Any]:
        dumped = orjson.dumps(result).decode()
        for secret in secrets:
            assert secret not in dumped and orjson.dumps(secret).decode()[1:-1] not in dumped
        return result

    echoed = {"headers": {"x-api-key": SECRET}, "query": f"api_key={TOKEN}"}
    for body in _bodies(echoed):
        result, category = to_result(
            op(schema=True),
            status=200,
            content_type="application/json",
            body=body,
            url_for_blob=URL,
            output_validator=Draft202012Validator({"type": "object"}),
            secrets=forms,
        )
        assert category is None
        assert clean(result)["structuredContent"] == {
            "headers": {"x-api-key": REDACTED},
            "query": f"api_key={REDACTED}",
        }
        result, category = to_result(
            op(),
            status=400,
            content_type="application/problem+json",
            body=body,
            url_for_blob=URL,
            output_validator=None,
            secrets=forms,
        )
        assert category == "api_bad_request" and REDACTED in text_of(clean(result))
    for media in ("text/plain", "image/png", "application/octet-stream"):
        body = b"\x00\x01 " + SECRET.encode() + b" " + TOKEN.encode()
        result, _ = to_result(
            op(), status=200, content_type=media, body=body, url_for_blob=URL, output_validator=None, secrets=forms
        )
        block = clean(result)["content"][0]
        raw = block.get("text") or block.get("data") or block["resource"]["blob"]
        shown = raw.encode() if media == "text/plain" else base64.b64decode(raw)
        assert shown == f"\x00\x01 {REDACTED} {REDACTED}".encode(), media
    assert clean(result)["_meta"] == {META_KEY: {"status": 200, "category": None}}


@pytest.mark.parametrize("charset", ["utf-16", "utf-16-be", "utf-32", "latin-1"])
def test_secrets_are_redacted_in_the_body_charset(charset: str) -> None:
    content_type = f"text/plain; charset={charset}"
    body = f"key={TOKEN}!".encode(charset)
    result, _ = to_result(
        op(),
        status=200,
        content_type=content_type,
        body=body,
        url_for_blob=URL,
        output_validator=None,
        secrets=secret_forms([TOKEN], content_type),
    )
    assert text_of(result) == f"key={REDACTED}!"
