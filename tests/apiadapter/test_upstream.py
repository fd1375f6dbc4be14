"""ApiUpstream and ApiPool against a real REST service (tests/support/rest_api.py, a subprocess)."""

from __future__ import annotations

import base64
import itertools
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from gateway.apiadapter.binding import ApiSource, Body, Operation, Output, Param
from gateway.apiadapter.response import META_KEY, REDACTED
from gateway.apiadapter.upstream import INLINE_VALIDATED_BYTES, ApiPool, ApiUpstream
from gateway.errors import UnknownServer, UpstreamAddressRefused, UpstreamTimeout, UpstreamUnavailable
from gateway.mcp.credential import UpstreamCredential
from tests.support.ports import free_port
from tests.support.rest_api import DOCUMENT, PNG, TEXT, RunningRestApi, large_items, start_subprocess

pytestmark = pytest.mark.anyio

PETSTORE_KEY = "special-key-7"
API_KEY = "key-1-SECRETVALUE"
NEW_TOKEN = "new-token-SECRETVALUE"


@pytest.fixture(scope="module")
def api(log_dir: Path) -> Iterator[RunningRestApi]:
    with start_subprocess(log_dir, petstore_api_key=PETSTORE_KEY) as running:
        yield running


@pytest.fixture(autouse=True)
def fresh(api: RunningRestApi) -> None:
    api.reset()
    api.set_auth(api_key=[API_KEY], bearer=[NEW_TOKEN])


def P(argument: str, location: str, style: str | None = None, explode: bool | None = None, **kw: Any) -> Param:
    default_style = {"path": "simple", "query": "form", "header": "simple", "cookie": "form"}[location]
    style = style or default_style
    explode = (style == "form") if explode is None else explode
    return Param(
        argument,
        kw.pop("name", argument),
        location,
        style,
        explode,
        kw.pop("required", location == "path"),
        **kw,
    )


def op(
    tool: str, method: str, path: str, *params: Param, body: Body | None = None, output: Output | None = None
) -> Operation:
    return Operation(tool, tool, method, path, params, body, output or Output())


ECHO_PATHS = [
    op("simple", "GET", "/echo/path/simple/{color}", P("color", "path")),
    op("label", "GET", "/echo/path/label/{color}", P("color", "path", "label", True)),
    op("matrix", "GET", "/echo/path/matrix/{color}", P("color", "path", "matrix", True)),
    op("plain", "GET", "/echo/path/plain/{name}", P("name", "path")),
]
ECHO_QUERY = op(
    "query",
    "GET",
    "/echo/query",
    P("q", "query"),
    P("tags", "query"),
    P("ids", "query", explode=False),
    P("words", "query", "spaceDelimited", False),
    P("pipes", "query", "pipeDelimited", False),
    P("filter", "query", "deepObject", True),
    P("expr", "query", allow_reserved=True),
    P("flag", "query"),
    P("meta", "query", content_type="application/json"),
)
ECHO_HEADERS = op(
    "headers",
    "GET",
    "/echo/headers",
    P("trace", "header", name="X-Trace"),
    P("list", "header", name="X-List"),
    P("session", "cookie"),
    P("prefs", "cookie", explode=False),
)
BODIES = [
    op("json", "POST", "/echo/json", body=Body("application/json", True, None, ("name", "size", "tags"))),
    op("array", "POST", "/echo/json-array", body=Body("application/json", True, "body")),
    op("form", "POST", "/echo/form", body=Body("application/x-www-form-urlencoded", True, "body")),
    op("text", "POST", "/echo/text", body=Body("text/plain", True, "body")),
    op("put", "PUT", "/echo/items/{itemId}", P("itemId", "path"), body=Body("application/json", True, None, ("name",))),
    op("delete", "DELETE", "/echo/items/{itemId}", P("itemId", "path")),
]
MISC = [
    op("status", "GET", "/status/{code}", P("code", "path"), P("format", "query")),
    op("redirect", "GET", "/redirect", P("to", "query", allow_reserved=True), P("status", "query"), P("hops", "query")),
    op(
        "redirect_post",
        "POST",
        "/redirect",
        P("to", "query", allow_reserved=True),
        P("status", "query"),
        body=Body("application/json", False, "body"),
    ),
    op("slow", "GET", "/slow", P("ms", "query", required=True), P("drip", "query")),
    op("large", "GET", "/large", P("n", "query", required=True), P("stream", "query"), P("gzip", "query")),
    op("text_get", "GET", "/text"),
    op("image", "GET", "/image"),
    op("binary", "GET", "/binary"),
    op("empty", "GET", "/empty"),
    op("invalid", "GET", "/invalid-output", output=Output("200", False, True)),
    op("whoami", "GET", "/auth/whoami"),
    op("echo_key", "GET", "/echo/key", P("api_key", "query"), P("key_header", "header", name="X-Api-Key")),
    op("rejected", "GET", "/echo/rejected", P("q", "query")),
    op("echo_auth", "GET", "/echo/auth"),
    op("large_json", "GET", "/large-json", P("n", "query", required=True), output=Output("200", True, True)),
    op("custom", "GET", "/custom", P("status", "query"), P("type", "query"), P("text", "query"), P("deep", "query")),
    op("custom_node", "GET", "/custom", P("deep", "query"), output=Output("200", False, True)),
]
INVALID_SCHEMA = {
    "type": "object",
    "required": ["id", "name"],
    "properties": {"id": {"type": "integer"}, "name": {"type": "string"}},
}
ITEMS_SCHEMA = {
    "type": "object",
    "properties": {
        "result": DOCUMENT["paths"]["/large-json"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    },
}
NODE_SCHEMA = {"type": "object", "properties": {"c": {"$ref": "#"}}}  # recursive, as OpenAPI trees are


def source(api: RunningRestApi, *, internal: bool = True, base: str | None = None, **kw: Any) -> ApiSource:
    ops = [*ECHO_PATHS, ECHO_QUERY, ECHO_HEADERS, *BODIES, *MISC]
    return ApiSource(
        "rest",
        base or api.url,
        internal,
        {o.tool: o for o in ops},
        output_schemas={"invalid": INVALID_SCHEMA, "large_json": ITEMS_SCHEMA, "custom_node": NODE_SCHEMA},
        **kw,
    )


async def call(
    src: ApiSource,
    tool: str,
    arguments: dict[str, Any] | None = None,
    credential: UpstreamCredential | None = None,
    **options: Any,
) -> dict[str, Any]:
    upstream = ApiUpstream(src, **options)
    try:
        reply = await upstream.call("tools/call", {"name": tool, "arguments": arguments or {}}, credential=credential)
    finally:
        await upstream.aclose()
    result: dict[str, Any] = reply["result"]
    return result


def echo(result: dict[str, Any]) -> dict[str, Any]:
    assert not result.get("isError"), result
    data: dict[str, Any] = result["structuredContent"]
    return data


def category(result: dict[str, Any]) -> str | None:
    meta: dict[str, Any] = result["_meta"][META_KEY]
    found: str | None = meta["category"]
    return found


def text(result: dict[str, Any]) -> str:
    return str(result["content"][0]["text"])


# ---------------------------------------------------------------- parameter locations


async def test_path_parameters_arrive_as_sent(api: RunningRestApi) -> None:
    src = source(api)
    assert echo(await call(src, "simple", {"color": ["a b", "c/d"]}))["path"] == "/echo/path/simple/a%20b,c%2Fd"
    assert echo(await call(src, "label", {"color": ["x", "y"]}))["path"] == "/echo/path/label/.x.y"
    matrix = echo(await call(src, "matrix", {"color": {"R": 100, "G": 200, "B": 150}}))
    assert matrix["path"] == "/echo/path/matrix/;R=100;G=200;B=150"
    assert echo(await call(src, "plain", {"name": "../etc?x#y"}))["path"] == "/echo/path/plain/..%2Fetc%3Fx%23y"


async def test_query_parameters_arrive_as_sent(api: RunningRestApi) -> None:
    arguments = {
        "q": "hello world",
        "tags": ["a", "b"],
        "ids": [1, 2],
        "words": ["x", "y"],
        "pipes": ["x", "y"],
        "filter": {"R": 1},
        "expr": "a/b:c&d",
        "flag": True,
        "meta": {"k": 1},
    }
    got = echo(await call(source(api), "query", arguments))
    assert got["query"] == (
        "q=hello%20world&tags=a&tags=b&ids=1,2&words=x%20y&pipes=x%7Cy&filter%5BR%5D=1"
        "&expr=a/b:c%26d&flag=true&meta=%7B%22k%22%3A1%7D"
    )
    assert got["method"] == "GET" and got["path"] == "/echo/query"


async def test_header_and_cookie_parameters_arrive(api: RunningRestApi) -> None:
    got = echo(
        await call(source(api), "headers", {"trace": "t-1", "list": ["a", "b"], "session": "s 1", "prefs": ["p", "q"]})
    )
    assert got["headers"]["x-trace"] == "t-1"
    assert got["headers"]["x-list"] == "a,b"
    assert got["headers"]["user-agent"] == "mcp-opa-gateway"
    assert got["headers"]["accept"] == "application/json, */*;q=0.5"
    assert got["headers"]["cookie"] == "session=s%201; prefs=p,q"


async def test_bodies_arrive(api: RunningRestApi) -> None:
    src = source(api)
    got = echo(await call(src, "json", {"name": "n", "size": 2, "tags": ["t"]}))
    assert (got["method"], got["json"], got["content_type"]) == (
        "POST",
        {"name": "n", "size": 2, "tags": ["t"]},
        "application/json",
    )
    assert echo(await call(src, "array", {"body": [1, 2, 3]}))["json"] == [1, 2, 3]
    form = echo(await call(src, "form", {"body": {"name": "a b&c", "count": 3, "tags": ["x", "y"]}}))
    assert form["form"] == [["name", "a b&c"], ["count", "3"], ["tags", "x"], ["tags", "y"]]
    plain = echo(await call(src, "text", {"body": "hello\nwörld"}))
    assert (plain["body"], plain["content_type"]) == ("hello\nwörld", "text/plain; charset=utf-8")
    put = echo(await call(src, "put", {"itemId": 7, "name": "new"}))
    assert (put["method"], put["path"], put["json"]) == ("PUT", "/echo/items/7", {"name": "new"})
    deleted = echo(await call(src, "delete", {"itemId": 7}))
    assert (deleted["method"], deleted["path"], deleted["body"]) == ("DELETE", "/echo/items/7", "")


async def test_base_path_prefix_is_kept(api: RunningRestApi) -> None:
    pet = op("getPetById", "GET", "/pet/{petId}", P("petId", "path"))
    src = ApiSource("pets", f"{api.url}/petstore", True, {"getPetById": pet})
    assert (await call(src, "getPetById", {"petId": 1}))["structuredContent"]["name"] == "doggie"


# ---------------------------------------------------------------- credentials


def last_request(api: RunningRestApi) -> dict[str, Any]:
    """What the service received last (its record, not the adapter's redacted result)."""
    request: dict[str, Any] = api.received()["requests"][-1]
    return request


async def test_credential_is_injected_and_not_overridable(api: RunningRestApi) -> None:
    credential = UpstreamCredential("c@1", headers={"X-Api-Key": "cred-header"}, query={"api_key": "cred-query"})
    got = echo(await call(source(api), "echo_key", {"key_header": "AGENT-H"}, credential))
    sent = last_request(api)
    assert (sent["query"], sent["headers"]["x-api-key"]) == ("api_key=cred-query", "cred-header")
    assert (got["query"], got["headers"]["x-api-key"]) == (f"api_key={REDACTED}", REDACTED)
    assert "AGENT" not in str(sent)
    api.reset()
    for arguments in ({"api_key": "AGENT-Q"}, {"key_header": " AGENT-H"}):
        refused = await call(source(api), "echo_key", arguments, credential)
        assert category(refused) == "invalid_arguments" and "AGENT" not in text(refused)
    assert api.count() == 0


async def test_echoed_credentials_never_reach_the_result(api: RunningRestApi) -> None:
    header_key, query_key = "hdr-SECRET/+=", "qry-SECRET&=é"  # header values are ASCII
    credential = UpstreamCredential("c@1", headers={"x-api-key": header_key}, query={"api_key": query_key})
    results = [
        await call(source(api), "headers", {"trace": "t-1"}, credential),
        await call(source(api), "query", {"q": "x"}, credential),
        await call(source(api), "rejected", {"q": "x"}, credential),  # a 400 quoting the request
    ]
    sent = last_request(api)
    assert sent["headers"]["x-api-key"] == header_key  # it was sent
    for result in results:
        dumped = json.dumps(result)
        for secret in (header_key, query_key, "SECRET"):
            assert secret not in dumped, result
    headers, query, rejected = results
    assert echo(headers)["headers"]["x-api-key"] == REDACTED and echo(headers)["headers"]["x-trace"] == "t-1"
    assert echo(query)["query"] == f"q=x&api_key={REDACTED}"
    assert category(rejected) == "api_bad_request" and f"api_key={REDACTED}" in text(rejected)
    who = await call(source(api), "whoami", {}, UpstreamCredential("c@1", headers={"x-api-key": API_KEY}))
    assert who["structuredContent"]["via"] == "x-api-key"  # the key arrived; the result shows a digest only


async def test_renewed_material_is_redacted_too(api: RunningRestApi) -> None:
    renew = Renewals(NEW_TOKEN)
    credential = UpstreamCredential("c@1", headers={"authorization": "Bearer old-token"}, renew=renew)
    result = await call(source(api), "echo_auth", {}, credential)  # 401, renewed, echoed
    assert renew.calls == 1 and api.count() == 2
    assert last_request(api)["headers"]["authorization"] == f"Bearer {NEW_TOKEN}"
    assert echo(result)["headers"]["authorization"] == REDACTED
    assert NEW_TOKEN not in json.dumps(result)


async def test_credential_header_and_query_are_accepted(api: RunningRestApi) -> None:
    src = source(api)
    by_header = await call(src, "whoami", {}, UpstreamCredential("c@1", headers={"x-api-key": API_KEY}))
    assert by_header["structuredContent"]["via"] == "x-api-key"
    by_query = await call(src, "whoami", {}, UpstreamCredential("c@1", query={"api_key": API_KEY}))
    assert by_query["structuredContent"]["via"] == "query"


class Renewals:
    def __init__(self, token: str) -> None:
        self.token = token
        self.calls = 0

    async def __call__(self, refused: UpstreamCredential) -> UpstreamCredential | None:
        self.calls += 1
        return UpstreamCredential(refused.key, headers={"authorization": f"Bearer {self.token}"}, renew=self)


async def test_401_renews_once_and_succeeds(api: RunningRestApi) -> None:
    renew = Renewals(NEW_TOKEN)
    credential = UpstreamCredential("c@1", headers={"authorization": "Bearer old-token"}, renew=renew)
    result = await call(source(api), "whoami", {}, credential)
    assert result["structuredContent"]["via"] == "bearer"
    assert renew.calls == 1 and api.count() == 2


async def test_401_after_renewal_is_api_unauthorized(api: RunningRestApi) -> None:
    renew = Renewals("still-wrong")
    credential = UpstreamCredential("c@1", headers={"authorization": "Bearer old-token"}, renew=renew)
    result = await call(source(api), "whoami", {}, credential)
    assert result["isError"] and category(result) == "api_unauthorized"
    assert text(result).startswith("HTTP 401 Unauthorized")
    assert renew.calls == 1 and api.count() == 2


async def test_401_without_renewal_is_api_unauthorized(api: RunningRestApi) -> None:
    result = await call(source(api), "whoami", {}, UpstreamCredential("c@1", headers={"authorization": "Bearer x"}))
    assert category(result) == "api_unauthorized" and api.count() == 1
    assert category(await call(source(api), "whoami")) == "api_unauthorized"


# ---------------------------------------------------------------- limits


async def test_timeout_within_the_deadline(api: RunningRestApi) -> None:
    options: dict[str, Any]
    for src, options in ((source(api, timeout=0.5), {}), (source(api), {"timeout": 0.5})):
        started = time.monotonic()
        with pytest.raises(UpstreamTimeout):
            await call(src, "slow", {"ms": 5000}, None, **options)
        assert time.monotonic() - started < 0.5 + 1.0
    assert not (await call(source(api, timeout=5), "slow", {"ms": 10})).get("isError")


async def test_the_deadline_covers_the_whole_call(api: RunningRestApi) -> None:
    # Every byte arrives well within the read timeout; the whole answer does not within the deadline.
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout):
        await call(source(api, timeout=0.6), "slow", {"ms": 5000, "drip": True})
    assert time.monotonic() - started < 0.6 + 1.0


@pytest.mark.parametrize("stream", [False, True])
async def test_size_cap(api: RunningRestApi, stream: bool) -> None:
    src = source(api, max_response_bytes=1000)
    result = await call(src, "large", {"n": 1000, "stream": stream})
    assert text(result) == "a" * 1000
    over = await call(src, "large", {"n": 5_000_000 if stream else 1001, "stream": stream})
    assert over["isError"] and category(over) == "upstream_response_too_large"
    assert over["_meta"][META_KEY]["status"] == 200


async def test_size_cap_holds_for_compressed_bodies(api: RunningRestApi) -> None:
    src = source(api, max_response_bytes=1000)
    assert text(await call(src, "large", {"n": 900, "gzip": True})) == "a" * 900
    bomb = await call(src, "large", {"n": 500_000, "gzip": True})  # < 1000 bytes on the wire
    assert category(bomb) == "upstream_response_too_large"
    bomb = await call(src, "large", {"n": 10_000_000, "gzip": True})  # ~10 KB on the wire
    assert category(bomb) == "upstream_response_too_large"


# ---------------------------------------------------------------- redirects


async def test_redirects_are_off_by_default(api: RunningRestApi) -> None:
    result = await call(source(api), "redirect", {"to": "/echo/redirected"})
    assert result["isError"] and category(result) == "upstream_redirect"
    assert result["_meta"][META_KEY]["status"] == 302
    assert api.count() == 1


async def test_same_origin_redirects_are_followed_when_allowed(api: RunningRestApi) -> None:
    src = source(api, follow_redirects=True)
    got = echo(await call(src, "redirect", {"to": "/echo/redirected?x=1"}))
    assert (got["method"], got["path"], got["query"]) == ("GET", "/echo/redirected", "x=1")
    assert api.count() == 2
    credential = UpstreamCredential("c@1", headers={"x-api-key": "cred-h"}, query={"api_key": "cred-q"})
    got = echo(await call(src, "redirect", {"to": "/echo/redirected?x=1&api_key=server"}, credential))
    sent = last_request(api)
    assert (sent["query"], sent["headers"]["x-api-key"]) == ("x=1&api_key=cred-q", "cred-h")
    assert (got["query"], got["headers"]["x-api-key"]) == (f"x=1&api_key={REDACTED}", REDACTED)
    for status, method, body in (
        (303, "GET", None),
        (302, "GET", None),
        (301, "GET", None),
        (307, "POST", {"k": 1}),
        (308, "POST", {"k": 1}),
    ):
        got = echo(await call(src, "redirect_post", {"to": "/echo/after", "status": status, "body": {"k": 1}}))
        assert (got["method"], got["json"]) == (method, body), status
        assert got["content_type"] == ("application/json" if body else None)


async def test_at_most_five_redirects(api: RunningRestApi) -> None:
    src = source(api, follow_redirects=True)
    assert echo(await call(src, "redirect", {"hops": 4}))["path"] == "/echo/redirected"  # 5 redirects
    api.reset()
    result = await call(src, "redirect", {"hops": 5})  # 6 redirects
    assert category(result) == "upstream_redirect" and api.count() == 6


async def test_cross_origin_redirects_are_never_followed(api: RunningRestApi) -> None:
    port = api.url.rsplit(":", 1)[1]
    for target in (f"http://localhost:{port}/echo/cross", f"https://127.0.0.1:{port}/echo/cross"):
        api.reset()
        result = await call(source(api, follow_redirects=True), "redirect", {"to": target})
        assert category(result) == "upstream_redirect"
        assert api.count() == 1


# ---------------------------------------------------------------- errors and results


@pytest.mark.parametrize(
    ("code", "fmt", "expected"),
    [
        (400, "json", "api_bad_request"),
        (422, "text", "api_bad_request"),
        (404, "json", "api_not_found"),
        (409, "json", "api_conflict"),
        (429, "text", "api_rate_limited"),
        (418, "json", "api_client_error"),
        (500, "json", "api_server_error"),
        (503, "text", "api_server_error"),
    ],
)
async def test_http_errors_become_tool_errors(api: RunningRestApi, code: int, fmt: str, expected: str) -> None:
    result = await call(source(api), "status", {"code": code, "format": fmt})
    assert result["isError"] and category(result) == expected
    assert text(result).startswith(f"HTTP {code} ")
    assert ("plain text error body" if fmt == "text" else '"code":') in text(result)


async def test_non_json_results(api: RunningRestApi) -> None:
    src = source(api)
    assert text(await call(src, "text_get")) == TEXT
    image = (await call(src, "image"))["content"][0]
    assert image == {"type": "image", "data": base64.b64encode(PNG).decode(), "mimeType": "image/png"}
    blob = (await call(src, "binary"))["content"][0]
    assert blob["resource"]["uri"] == f"{api.url}/binary"
    assert base64.b64decode(blob["resource"]["blob"]) == bytes(range(256))
    assert text(await call(src, "empty")) == "HTTP 204"


async def test_blob_uri_never_carries_the_query(api: RunningRestApi) -> None:
    credential = UpstreamCredential("c@1", query={"api_key": "SECRET-Q"})
    blob = (await call(source(api), "binary", {}, credential))["content"][0]
    assert blob["resource"]["uri"] == f"{api.url}/binary"


async def test_output_schema_violation(api: RunningRestApi) -> None:
    result = await call(source(api), "invalid")
    assert category(result) == "upstream_response_invalid"
    assert "$." in text(result) and "not-a-number" not in text(result)


async def test_jsonrpc_errors(api: RunningRestApi) -> None:
    upstream = ApiUpstream(source(api))
    try:
        unknown = await upstream.request("tools/call", {"name": "nope", "arguments": {}})
        assert unknown["error"]["code"] == -32602
        listing = await upstream.request("tools/list", {})
        assert listing["error"]["code"] == -32601
        bad = await upstream.request("tools/call", {"name": "simple", "arguments": [1]})
        assert bad["error"]["code"] == -32602
    finally:
        await upstream.aclose()
    assert api.count() == 0


async def test_arguments_that_cannot_be_sent_are_a_tool_error_and_nothing_is_sent(api: RunningRestApi) -> None:
    result = await call(source(api), "plain", {"name": ".."})
    assert result["isError"] and category(result) == "invalid_arguments"
    assert "'name'" in text(result)
    assert api.count() == 0


async def test_transport_errors_are_upstream_unavailable(api: RunningRestApi) -> None:
    src = source(api, base=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(UpstreamUnavailable):
        await call(src, "text_get")


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_source_not_internal_never_reaches_loopback(api: RunningRestApi, host: str) -> None:
    port = api.url.rsplit(":", 1)[1]
    src = source(api, internal=False, base=f"http://{host}:{port}")
    with pytest.raises(UpstreamAddressRefused) as err:
        await call(src, "echo_key", {"key_header": "x"}, UpstreamCredential("c@1", query={"api_key": "SECRET"}))
    assert "loopback" in str(err.value) and "SECRET" not in str(err.value) and "/echo" not in str(err.value)
    assert api.count() == 0


async def test_logs_name_the_template_never_values(api: RunningRestApi, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="gateway.apiadapter")
    credential = UpstreamCredential("c@1", headers={"x-api-key": "SECRET-H"}, query={"api_key": "SECRET-Q"})
    await call(source(api), "plain", {"name": "ARGVALUE"}, credential)
    await call(source(api), "status", {"code": 500, "format": "ARGFORMAT"}, credential)
    refused = await call(source(api), "headers", {"trace": "ARGVALUE\r\nX: 1"}, credential)
    assert category(refused) == "invalid_arguments"
    with pytest.raises(UpstreamTimeout):
        await call(source(api, timeout=0.2), "slow", {"ms": 2000}, credential)
    logged = caplog.text
    assert "/echo/path/plain/{name}" in logged and "/slow" in logged
    for secret in ("SECRET-H", "SECRET-Q", "ARGVALUE", "ARGFORMAT", api.url):
        assert secret not in logged


# ---------------------------------------------------------------- responses the adapter cannot map


@pytest.mark.parametrize("charset", ["base64", "hex", "rot13", "zlib", "uu", "idna", "punycode"])
async def test_a_charset_that_is_no_text_encoding_is_read_as_utf8(api: RunningRestApi, charset: str) -> None:
    content_type = f"text/plain; charset={charset}"
    ok = await call(source(api), "custom", {"type": content_type, "text": "hello"})
    assert text(ok) == "hello" and not ok.get("isError")
    refused = await call(source(api), "custom", {"status": 404, "type": content_type, "text": "nope"})
    assert category(refused) == "api_not_found" and text(refused) == "HTTP 404 Not Found: nope"


@pytest.mark.parametrize(
    ("tool", "deep"),
    [
        ("custom_node", 900),  # validation against a recursive outputSchema: RecursionError
        ("custom", 300),  # no outputSchema: re-serialising 300 levels: orjson.JSONEncodeError
        ("custom", 5000),  # deeper than orjson parses: not valid JSON
    ],
)
async def test_json_nested_too_deeply_is_upstream_response_invalid(api: RunningRestApi, tool: str, deep: int) -> None:
    result = await call(source(api), tool, {"deep": deep})
    assert result["isError"] and category(result) == "upstream_response_invalid"
    assert result["_meta"][META_KEY]["status"] == 200
    assert not (await call(source(api), tool, {"deep": 20})).get("isError")


# ---------------------------------------------------------------- the event loop keeps running


async def test_a_large_answer_is_mapped_off_the_event_loop(api: RunningRestApi) -> None:
    # ~1 MiB of JSON validated against its outputSchema: about 2 s of CPU on the developer
    # machine. Mapped on the event loop, the heartbeat below would stall that long.
    n = 9000
    upstream = ApiUpstream(source(api))
    ticks: list[float] = []

    async def heartbeat() -> None:
        while True:
            ticks.append(time.monotonic())
            await anyio.sleep(0.01)

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(heartbeat)
            started = time.monotonic()
            reply = await upstream.call("tools/call", {"name": "large_json", "arguments": {"n": n}}, credential=None)
            ticks.append(ended := time.monotonic())  # a loop blocked until now shows as the last gap
            tg.cancel_scope.cancel()
    finally:
        await upstream.aclose()
    result = reply["result"]
    assert not result.get("isError"), result["content"]
    assert result["structuredContent"]["result"] == large_items(n)
    assert ended - started > 1.0, ended - started  # the mapping was long enough to matter
    gaps = [b - a for a, b in itertools.pairwise(ticks)]
    assert max(gaps) < 0.5, (max(gaps), ended - started)
    assert len(gaps) > 50  # the heartbeat kept ticking all along
    assert len(json.dumps(large_items(n))) > INLINE_VALIDATED_BYTES


# ---------------------------------------------------------------- petstore


async def test_petstore_subset(api: RunningRestApi) -> None:
    ops = [
        op("getPetById", "GET", "/pet/{petId}", P("petId", "path"), output=Output("200", False, False)),
        op("findPetsByStatus", "GET", "/pet/findByStatus", P("status", "query"), output=Output("200", True, False)),
        op(
            "addPet",
            "POST",
            "/pet",
            body=Body("application/json", True, None, ("id", "name", "category", "photoUrls", "tags", "status")),
        ),
        op("deletePet", "DELETE", "/pet/{petId}", P("api_key", "header"), P("petId", "path")),
    ]
    src = ApiSource("petstore", f"{api.url}/petstore", True, {o.tool: o for o in ops})
    added = await call(src, "addPet", {"name": "rex", "photoUrls": [], "status": "pending"})
    pet_id = added["structuredContent"]["id"]
    assert (await call(src, "getPetById", {"petId": pet_id}))["structuredContent"]["name"] == "rex"
    pending = (await call(src, "findPetsByStatus", {"status": "pending"}))["structuredContent"]["result"]
    assert {p["name"] for p in pending} == {"kitty", "rex"}
    assert category(await call(src, "deletePet", {"petId": pet_id})) == "api_unauthorized"
    assert text(await call(src, "deletePet", {"petId": pet_id, "api_key": PETSTORE_KEY})) == "Pet deleted"
    assert category(await call(src, "getPetById", {"petId": pet_id})) == "api_not_found"
    assert category(await call(src, "addPet", {"name": "no-photos"})) == "api_bad_request"


# ---------------------------------------------------------------- the pool


async def test_pool_retain_get_and_close(api: RunningRestApi) -> None:
    pool = ApiPool(timeout=5)
    a, b = source(api), source(api, timeout=3)
    await pool.retain({"a": a, "b": b})
    first_a = pool.get("a").upstream  # type: ignore[attr-defined]
    first_b = pool.get("b").upstream  # type: ignore[attr-defined]
    reply = await pool.get("a").request("tools/call", {"name": "text_get", "arguments": {}})
    assert reply["result"]["content"][0]["text"] == TEXT

    await pool.retain({"a": source(api)})  # a unchanged, b removed
    assert pool.get("a").upstream is first_a  # type: ignore[attr-defined]
    assert first_b.closed and not first_a.closed
    with pytest.raises(UnknownServer):
        pool.get("b")

    await pool.retain({"a": source(api, follow_redirects=True)})  # a changed
    assert pool.get("a").upstream is not first_a and first_a.closed  # type: ignore[attr-defined]

    await pool.aclose()
    with pytest.raises(UnknownServer):
        pool.get("a")


async def test_pool_closes_a_removed_client_after_its_calls_end(api: RunningRestApi) -> None:
    pool = ApiPool(timeout=5)
    await pool.retain({"a": source(api)})
    bound = pool.get("a", UpstreamCredential("c@1", headers={"x-api-key": API_KEY}))
    upstream = bound.upstream  # type: ignore[attr-defined]
    results: list[dict[str, Any]] = []

    async def slow_call() -> None:
        results.append(await bound.request("tools/call", {"name": "slow", "arguments": {"ms": 300}}))

    async with anyio.create_task_group() as tg:
        tg.start_soon(slow_call)
        await anyio.sleep(0.1)
        await pool.retain({})
        assert not upstream.closed
    assert not results[0]["result"].get("isError") and upstream.closed
    with pytest.raises(UpstreamUnavailable):
        await bound.request("tools/call", {"name": "text_get", "arguments": {}})
    await bound.aclose()  # the bound object owns nothing


async def test_bound_upstream_uses_its_credential_and_listen_waits(api: RunningRestApi) -> None:
    pool = ApiPool(timeout=5)
    await pool.retain({"a": source(api)})
    try:
        bound = pool.get("a", UpstreamCredential("c@1", headers={"x-api-key": API_KEY}))
        reply = await bound.request("tools/call", {"name": "whoami", "arguments": {}})
        assert reply["result"]["structuredContent"]["via"] == "x-api-key"
        ready: list[bool] = []
        with anyio.move_on_after(0.1) as scope:
            await bound.listen({}, None, lambda: ready.append(True))  # type: ignore[arg-type]
        assert scope.cancelled_caught and ready == [True]
    finally:
        await pool.aclose()
