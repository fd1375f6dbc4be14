"""Tests for gateway.mcp.messages: JSON-RPC 2.0 parsing and classification."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway.errors import ArgumentsTooDeep, ArgumentsTooLarge, RequestRejected
from gateway.mcp.messages import (
    INVALID_REQUEST,
    MAX_PARAMS_DEPTH,
    MAX_PARAMS_VALUES,
    PARSE_ERROR,
    JsonRpcMessage,
    check_params_shape,
    error_response,
    parse_message,
    result_response,
)


def _body(obj: Any) -> bytes:
    return orjson.dumps(obj)


@pytest.mark.parametrize(
    ("message", "kind", "msg_id", "method", "params"),
    [
        pytest.param(
            {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, "request", 1, "tools/list", {}, id="request-int-id"
        ),
        pytest.param(
            {"jsonrpc": "2.0", "id": "a-1", "method": "tools/call", "params": {"name": "x"}},
            "request",
            "a-1",
            "tools/call",
            {"name": "x"},
            id="request-str-id-with-params",
        ),
        pytest.param({"jsonrpc": "2.0", "id": 0, "method": "ping"}, "request", 0, "ping", {}, id="request-zero-id"),
        pytest.param(
            {"jsonrpc": "2.0", "id": "", "method": "ping"}, "request", "", "ping", {}, id="request-empty-str-id"
        ),
        pytest.param(
            {"jsonrpc": "2.0", "id": -7, "method": "ping"}, "request", -7, "ping", {}, id="request-negative-id"
        ),
        pytest.param(
            {"jsonrpc": "2.0", "id": 2, "method": "ping", "params": None},
            "request",
            2,
            "ping",
            {},
            id="null-params-is-empty",
        ),
        pytest.param(
            {"jsonrpc": "2.0", "method": "notifications/initialized"},
            "notification",
            None,
            "notifications/initialized",
            {},
            id="notification",
        ),
        pytest.param(
            {"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progress": 1}},
            "notification",
            None,
            "notifications/progress",
            {"progress": 1},
            id="notification-with-params",
        ),
        pytest.param({"jsonrpc": "2.0", "id": 3, "result": {}}, "response", 3, None, {}, id="result-response"),
        pytest.param(
            {"jsonrpc": "2.0", "id": "x", "error": {"code": -1, "message": "m"}},
            "response",
            "x",
            None,
            {},
            id="error-response",
        ),
        pytest.param(
            {"jsonrpc": "2.0", "id": None, "error": {"code": PARSE_ERROR, "message": "m"}},
            "response",
            None,
            None,
            {},
            id="error-response-null-id",
        ),
        pytest.param({"jsonrpc": "2.0", "id": 4, "result": None}, "response", 4, None, {}, id="null-result-response"),
    ],
)
def test_parse_message_classifies_requests_notifications_and_responses(
    message: dict[str, Any], kind: str, msg_id: Any, method: str | None, params: dict[str, Any]
) -> None:
    parsed = parse_message(_body(message))

    assert isinstance(parsed, JsonRpcMessage)
    assert (parsed.kind, parsed.id, parsed.method, parsed.params) == (kind, msg_id, method, params)
    assert parsed.raw == message


def test_parse_message_keeps_fields_it_does_not_know() -> None:
    message = {"jsonrpc": "2.0", "id": 1, "method": "x", "params": {"_meta": {"k": [1]}}, "extension": {"a": 1}}

    parsed = parse_message(_body(message))

    assert parsed.raw["extension"] == {"a": 1}
    assert parsed.params == {"_meta": {"k": [1]}}


def test_parse_message_distinguishes_string_and_integer_ids() -> None:
    assert parse_message(_body({"jsonrpc": "2.0", "id": "1", "method": "x"})).id == "1"
    assert parse_message(_body({"jsonrpc": "2.0", "id": 1, "method": "x"})).id == 1


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"{", id="truncated"),
        pytest.param(b"{'jsonrpc': '2.0'}", id="single-quotes"),
        pytest.param(b"not json", id="text"),
        pytest.param(b'{"jsonrpc": "2.0", "id": 1, "method": "x",}', id="trailing-comma"),
        pytest.param(b'\xff\xfe{"jsonrpc": "2.0"}', id="invalid-utf8"),
        pytest.param(b'{"jsonrpc": "2.0"} {"jsonrpc": "2.0"}', id="two-documents"),
    ],
)
def test_parse_message_rejects_invalid_json_with_parse_error(body: bytes) -> None:
    with pytest.raises(RequestRejected) as exc_info:
        parse_message(body)

    assert exc_info.value.category == "bad_request"
    assert exc_info.value.args[1] == PARSE_ERROR


@pytest.mark.parametrize(
    "message",
    [
        pytest.param([{"jsonrpc": "2.0", "id": 1, "method": "x"}], id="batch"),
        pytest.param([], id="empty-batch"),
        pytest.param("text", id="string"),
        pytest.param(1, id="number"),
        pytest.param(None, id="null"),
        pytest.param({"id": 1, "method": "x"}, id="jsonrpc-missing"),
        pytest.param({"jsonrpc": "1.0", "id": 1, "method": "x"}, id="jsonrpc-1.0"),
        pytest.param({"jsonrpc": 2.0, "id": 1, "method": "x"}, id="jsonrpc-number"),
        pytest.param({"jsonrpc": None, "id": 1, "method": "x"}, id="jsonrpc-null"),
        pytest.param({"jsonrpc": "2.0", "id": 1, "method": "x", "params": [1, 2]}, id="params-array"),
        pytest.param({"jsonrpc": "2.0", "id": 1, "method": "x", "params": "p"}, id="params-string"),
        pytest.param({"jsonrpc": "2.0", "id": 1, "method": "x", "params": 0}, id="params-number"),
        pytest.param({"jsonrpc": "2.0", "method": "x", "params": False}, id="notification-params-bool"),
        pytest.param({"jsonrpc": "2.0", "id": True, "method": "x"}, id="id-true"),
        pytest.param({"jsonrpc": "2.0", "id": False, "method": "x"}, id="id-false"),
        pytest.param({"jsonrpc": "2.0", "id": 1.5, "method": "x"}, id="id-float"),
        pytest.param({"jsonrpc": "2.0", "id": 1.0, "method": "x"}, id="id-integral-float"),
        pytest.param({"jsonrpc": "2.0", "id": None, "method": "x"}, id="request-id-null"),
        pytest.param({"jsonrpc": "2.0", "id": [1], "method": "x"}, id="id-array"),
        pytest.param({"jsonrpc": "2.0", "id": {"a": 1}, "method": "x"}, id="id-object"),
        pytest.param({"jsonrpc": "2.0", "id": True, "result": {}}, id="response-id-bool"),
        pytest.param({"jsonrpc": "2.0", "id": 1.5, "result": {}}, id="response-id-float"),
        pytest.param({"jsonrpc": "2.0", "id": 1, "method": ""}, id="method-empty"),
        pytest.param({"jsonrpc": "2.0", "id": 1, "method": 5}, id="method-number"),
        pytest.param({"jsonrpc": "2.0", "method": ["x"]}, id="method-array"),
        pytest.param({"jsonrpc": "2.0", "result": {}}, id="response-without-id"),
        pytest.param({"jsonrpc": "2.0", "error": {"code": 1, "message": "m"}}, id="error-without-id"),
        pytest.param({"jsonrpc": "2.0", "id": 1}, id="id-only"),
        pytest.param({"jsonrpc": "2.0"}, id="jsonrpc-only"),
    ],
)
def test_parse_message_rejects_non_json_rpc_messages_with_invalid_request(message: Any) -> None:
    with pytest.raises(RequestRejected) as exc_info:
        parse_message(_body(message))

    assert exc_info.value.category == "bad_request"
    assert exc_info.value.args[1] == INVALID_REQUEST


def test_result_response_has_jsonrpc_id_and_result() -> None:
    assert result_response(7, {"tools": []}) == {"jsonrpc": "2.0", "id": 7, "result": {"tools": []}}


def test_error_response_omits_data_when_none() -> None:
    assert error_response("a", -32600, "bad") == {
        "jsonrpc": "2.0",
        "id": "a",
        "error": {"code": -32600, "message": "bad"},
    }


@pytest.mark.parametrize(
    "data",
    [
        pytest.param({"category": "policy_denied"}, id="object"),
        pytest.param(0, id="falsy-zero"),
        pytest.param("", id="falsy-empty-string"),
    ],
)
def test_error_response_includes_data_unless_none(data: Any) -> None:
    assert error_response(None, -32003, "denied", data)["error"] == {"code": -32003, "message": "denied", "data": data}


def test_responses_built_by_the_helpers_parse_back_as_responses() -> None:
    for built in (result_response(1, {}), error_response(2, -1, "m", {"x": 1})):
        parsed = parse_message(_body(built))
        assert parsed.kind == "response" and parsed.id == built["id"]


def _nested(levels: int) -> bytes:
    """JSON of an object ``levels`` deep (``{}`` is one level); built as text, since
    orjson cannot encode more than 254 levels."""
    return b'{"a":' * (levels - 1) + b"{}" + b"}" * (levels - 1)


def _call(arguments: Any) -> bytes:
    raw = arguments if isinstance(arguments, bytes) else orjson.dumps(arguments)
    return b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","arguments":' + raw + b"}}"


def test_arguments_at_the_depth_limit_are_accepted() -> None:
    # params is level 1, so arguments may be MAX_PARAMS_DEPTH - 1 levels deep.
    assert parse_message(_call(_nested(MAX_PARAMS_DEPTH - 1))).rejection is None


@pytest.mark.parametrize("levels", [MAX_PARAMS_DEPTH, 300, 1000])
def test_arguments_beyond_the_depth_limit_are_marked_too_deep(levels: int) -> None:
    msg = parse_message(_call(_nested(levels)))

    assert msg.kind == "request" and msg.id == 1 and msg.method == "tools/call"
    assert isinstance(msg.rejection, ArgumentsTooDeep) and msg.rejection.category == "arguments_too_deep"


def test_depth_counts_arrays_as_well_as_objects() -> None:
    deep_list = b"[" * MAX_PARAMS_DEPTH + b"]" * MAX_PARAMS_DEPTH
    assert isinstance(parse_message(_call(deep_list)).rejection, ArgumentsTooDeep)
    assert parse_message(_call(deep_list[1:-1])).rejection is None


def test_any_method_s_params_are_checked_not_only_tools_call() -> None:
    body = b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"_meta":' + _nested(MAX_PARAMS_DEPTH) + b"}}"
    assert isinstance(parse_message(body).rejection, ArgumentsTooDeep)


def test_params_with_exactly_the_maximum_number_of_values_are_accepted() -> None:
    # params (1) + name (1) + arguments (1) + the list's items.
    items = MAX_PARAMS_VALUES - 3
    assert parse_message(_call({"x": [0] * (items - 1)})).rejection is None


def test_params_with_more_values_than_the_maximum_are_marked_too_large() -> None:
    msg = parse_message(_call({"x": [0] * MAX_PARAMS_VALUES}))
    assert isinstance(msg.rejection, ArgumentsTooLarge) and msg.rejection.category == "arguments_too_large"


def test_check_params_shape_counts_values_in_wide_flat_params() -> None:
    with pytest.raises(ArgumentsTooLarge):
        check_params_shape({f"k{i}": i for i in range(MAX_PARAMS_VALUES)})
    check_params_shape({f"k{i}": i for i in range(MAX_PARAMS_VALUES - 1)})
