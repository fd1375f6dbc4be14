"""build_request: OpenAPI 3.1.1 parameter serialisation, and the rules that keep an agent inside its source."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlsplit

import orjson
import pytest

from gateway.apiadapter.binding import ApiSource, Body, Operation, Param
from gateway.apiadapter.request import ACCEPT, USER_AGENT, ArgumentMappingError, OutgoingRequest, build_request
from gateway.mcp.credential import UpstreamCredential

BASE = "https://api.example.test/v1"
STRING = "blue"
ARRAY = ["blue", "black", "brown"]
OBJECT = {"R": 100, "G": 200, "B": 150}


def call(
    params: tuple[Param, ...] = (),
    arguments: dict[str, Any] | None = None,
    *,
    path: str = "/x",
    method: str = "GET",
    body: Body | None = None,
    base: str = BASE,
    credential: UpstreamCredential | None = None,
) -> OutgoingRequest:
    op = Operation("tool", "tool", method, path, params, body)
    source = ApiSource("src", base, False, {"tool": op})
    return build_request(source, op, arguments or {}, credential)


def path_param(style: str, explode: bool, name: str = "color") -> Param:
    return Param(name, name, "path", style, explode, True)


def query_param(style: str, explode: bool, name: str = "color", **kw: Any) -> Param:
    return Param(name, name, "query", style, explode, False, **kw)


def header(req: OutgoingRequest, name: str) -> list[str]:
    return [v for k, v in req.headers if k == name]


# OpenAPI 3.1.1 section 4.8.12.5 "Style Examples" (n/a rows left out: see test_undefined_combinations).
PATH_TABLE = [
    ("matrix", False, ";color=blue", ";color=blue,black,brown", ";color=R,100,G,200,B,150"),
    ("matrix", True, ";color=blue", ";color=blue;color=black;color=brown", ";R=100;G=200;B=150"),
    ("label", False, ".blue", ".blue,black,brown", ".R,100,G,200,B,150"),
    ("label", True, ".blue", ".blue.black.brown", ".R=100.G=200.B=150"),
    ("simple", False, "blue", "blue,black,brown", "R,100,G,200,B,150"),
    ("simple", True, "blue", "blue,black,brown", "R=100,G=200,B=150"),
]
QUERY_TABLE = [
    ("form", False, "color=", "color=blue", "color=blue,black,brown", "color=R,100,G,200,B,150"),
    ("form", True, "color=", "color=blue", "color=blue&color=black&color=brown", "R=100&G=200&B=150"),
    ("spaceDelimited", False, None, None, "color=blue%20black%20brown", "color=R%20100%20G%20200%20B%20150"),
    ("pipeDelimited", False, None, None, "color=blue%7Cblack%7Cbrown", "color=R%7C100%7CG%7C200%7CB%7C150"),
    ("deepObject", True, None, None, None, "color%5BR%5D=100&color%5BG%5D=200&color%5BB%5D=150"),
]


@pytest.mark.parametrize(("style", "explode", "string", "array", "obj"), PATH_TABLE)
def test_path_styles_follow_the_spec_table(style: str, explode: bool, string: str, array: str, obj: str) -> None:
    param = path_param(style, explode)
    for value, expected in ((STRING, string), (ARRAY, array), (OBJECT, obj)):
        req = call((param,), {"color": value}, path="/items/{color}")
        assert req.url == f"{BASE}/items/{expected}", (style, explode, value)


@pytest.mark.parametrize(("style", "explode", "empty", "string", "array", "obj"), QUERY_TABLE)
def test_query_styles_follow_the_spec_table(
    style: str, explode: bool, empty: str | None, string: str | None, array: str | None, obj: str
) -> None:
    param = query_param(style, explode)
    for value, expected in (("", empty), (STRING, string), (ARRAY, array), (OBJECT, obj)):
        if expected is None:
            continue
        assert call((param,), {"color": value}).url == f"{BASE}/x?{expected}", (style, explode, value)


def test_undefined_combinations() -> None:
    # n/a in the table: sent the nearest defined way (documented in gateway.apiadapter.request).
    assert call((query_param("spaceDelimited", False),), {"color": "blue"}).url.endswith("?color=blue")
    exploded = call((query_param("pipeDelimited", True),), {"color": ARRAY}).url
    assert exploded.endswith("?color=blue&color=black&color=brown")
    for value in (STRING, ARRAY):
        with pytest.raises(ArgumentMappingError, match="'color'"):
            call((query_param("deepObject", True),), {"color": value})
    with pytest.raises(ArgumentMappingError, match="nested"):
        call((query_param("form", True),), {"color": [["nested"]]})


def test_scalars_booleans_numbers_and_null() -> None:
    params = (query_param("form", True, "a"), query_param("form", True, "b"), query_param("form", True, "c"))
    req = call(params, {"a": True, "b": 1.5, "c": None})
    assert req.url == f"{BASE}/x?a=true&b=1.5"  # null is undefined: not sent
    assert call((query_param("form", True, "a"),), {"a": False}).url.endswith("?a=false")


def test_json_content_parameter_is_sent_as_its_json_text() -> None:
    param = Param("meta", "meta", "query", "form", True, False, content_type="application/json")
    req = call((param,), {"meta": {"k": [1, "two"]}})
    assert dict(parse_qsl(urlsplit(req.url).query)) == {"meta": '{"k":[1,"two"]}'}


def test_empty_arrays_and_objects_are_not_sent() -> None:
    assert call((query_param("form", False),), {"color": []}).url == f"{BASE}/x"
    assert call((query_param("form", True),), {"color": {}}).url == f"{BASE}/x"


def test_base_path_prefix_is_kept() -> None:
    param = Param("petId", "petId", "path", "simple", False, True)
    req = call((param,), {"petId": 7}, path="/pet/{petId}", base="http://api.example.test:8080/api/v3/")
    assert req.url == "http://api.example.test:8080/api/v3/pet/7"
    assert req.method == "GET" and req.content is None


@pytest.mark.parametrize(
    ("value", "segment"),
    [
        ("../x", "..%2Fx"),
        ("a/b", "a%2Fb"),
        ("?q", "%3Fq"),
        ("#f", "%23f"),
        ("%2e%2e", "%252e%252e"),
        ("a b;c=d", "a%20b%3Bc%3Dd"),
        ("https://evil.example/", "https%3A%2F%2Fevil.example%2F"),
    ],
)
def test_path_values_stay_one_segment(value: str, segment: str) -> None:
    req = call((path_param("simple", False, "id"),), {"id": value}, path="/files/{id}/raw")
    parts = urlsplit(req.url)
    assert (parts.scheme, parts.netloc, parts.query, parts.fragment) == ("https", "api.example.test", "", "")
    assert parts.path == f"/v1/files/{segment}/raw"


@pytest.mark.parametrize("value", ["..", ".", ""])
@pytest.mark.parametrize("style", ["simple", "label", "matrix"])
def test_dot_and_empty_path_values_are_refused(value: str, style: str) -> None:
    with pytest.raises(ArgumentMappingError) as err:
        call((path_param(style, False, "id"),), {"id": value}, path="/files/{id}")
    assert err.value.argument == "id" and "'id'" in str(err.value)


def test_a_label_value_that_would_make_a_dot_segment_is_refused() -> None:
    # label style prefixes a "."; a value "." (refused itself) or a dot-making array is refused too
    with pytest.raises(ArgumentMappingError, match="'id'"):
        call((path_param("label", True, "id"),), {"id": ["", ""]}, path="/files/{id}")
    assert call((path_param("label", True, "id"),), {"id": ["a", "b"]}, path="/files/{id}").url.endswith("/.a.b")


def test_missing_required_parameters_are_refused() -> None:
    with pytest.raises(ArgumentMappingError, match="'id' is required"):
        call((path_param("simple", False, "id"),), {}, path="/files/{id}")
    with pytest.raises(ArgumentMappingError, match="'q' is required"):
        call((Param("q", "q", "query", "form", True, True),), {})


def test_query_values_cannot_add_parameters_or_a_fragment() -> None:
    req = call((query_param("form", True, "q"),), {"q": "x&admin=1#frag+y=z"})
    parts = urlsplit(req.url)
    assert parts.fragment == ""
    assert parse_qsl(parts.query) == [("q", "x&admin=1#frag+y=z")]


def test_allow_reserved_keeps_reserved_characters_but_not_structure() -> None:
    param = query_param("form", True, "expr", allow_reserved=True)
    req = call((param,), {"expr": "a/b:c?d,e;f@g!h$i&j=k+l#m[n]%2Fo%zz p"})
    query = urlsplit(req.url).query
    assert query == "expr=a/b:c?d,e;f@g!h$i%26j%3Dk%2Bl%23m%5Bn%5D%2Fo%25zz%20p"
    assert urlsplit(req.url).fragment == ""


def test_headers_and_cookies() -> None:
    params = (
        Param("trace", "X-Trace", "header", "simple", False, False),
        Param("list", "X-List", "header", "simple", False, False),
        Param("obj", "X-Obj", "header", "simple", True, False),
        Param("session", "session", "cookie", "form", True, False),
        Param("prefs", "prefs", "cookie", "form", False, False),
        Param("many", "many", "cookie", "form", True, False),
    )
    req = call(
        params,
        {
            "trace": "abc 123",
            "list": ARRAY,
            "obj": OBJECT,
            "session": "s 1;x",
            "prefs": ["a", "b"],
            "many": ["c", "d"],
        },
    )
    assert header(req, "x-trace") == ["abc 123"]
    assert header(req, "x-list") == ["blue,black,brown"]
    assert header(req, "x-obj") == ["R=100,G=200,B=150"]
    assert header(req, "cookie") == ["session=s%201%3Bx; prefs=a,b; many=c; many=d"]
    assert header(req, "accept") == [ACCEPT]
    assert header(req, "user-agent") == [USER_AGENT]


@pytest.mark.parametrize("value", ["a\r\nX-Injected: 1", "a\nb", "a\rb", "a\x00b", "caf\u00e9"])
def test_header_values_with_control_characters_are_refused(value: str) -> None:
    param = Param("trace", "X-Trace", "header", "simple", False, False)
    with pytest.raises(ArgumentMappingError) as err:
        call((param,), {"trace": value})
    assert err.value.argument == "trace"
    assert value not in str(err.value) and "Injected" not in str(err.value)


@pytest.mark.parametrize("value", [" leading", "trailing ", "\tboth\t", "trailing\t", " "])
def test_header_values_with_surrounding_space_or_tab_are_refused(value: str) -> None:
    # RFC 9110 section 5.5: no leading or trailing whitespace in a field value; h11 refuses to send it.
    param = Param("trace", "X-Trace", "header", "simple", False, False)
    with pytest.raises(ArgumentMappingError, match="space or tab") as err:
        call((param,), {"trace": value})
    assert err.value.argument == "trace"
    assert header(call((param,), {"trace": "in side\tok"}), "x-trace") == ["in side\tok"]


def test_header_names_must_be_tokens_and_framing_headers_are_refused() -> None:
    with pytest.raises(ArgumentMappingError, match="token"):
        call((Param("h", "X Bad", "header", "simple", False, False),), {"h": "v"})
    for name in ("Host", "Content-Length", "Transfer-Encoding", "Connection"):
        with pytest.raises(ArgumentMappingError, match="'h'"):
            call((Param("h", name, "header", "simple", False, False),), {"h": "v"})


def test_accept_content_type_authorization_parameters_are_ignored() -> None:
    params = tuple(Param(n.lower(), n, "header", "simple", False, False) for n in ("Accept", "Authorization"))
    req = call(params, {"accept": "text/evil", "authorization": "Bearer agent-token"})
    assert header(req, "accept") == [ACCEPT]
    assert header(req, "authorization") == []


CREDENTIAL = UpstreamCredential("cred@1", headers={"x-api-key": "SECRET-H"}, query={"api_key": "SECRET-Q"})


def test_credential_wins_over_arguments() -> None:
    params = (
        Param("key_header", "X-Api-Key", "header", "simple", False, False),
        Param("extra", "extra", "query", "form", True, False),
    )
    req = call(params, {"key_header": "agent-h", "extra": {"ok": "1"}}, credential=CREDENTIAL)
    assert parse_qsl(urlsplit(req.url).query) == [("ok", "1"), ("api_key", "SECRET-Q")]
    assert header(req, "x-api-key") == ["SECRET-H"]
    assert all(v != "agent-h" for _, v in req.headers)


SHADOWS = ["api_key", "API_KEY", "Api_Key", "api_key[]", "api_key[0]", "api_key.x", "api.key", "api key", " api_key"]


@pytest.mark.parametrize("name", SHADOWS)
def test_query_names_that_would_shadow_the_credential_are_refused(name: str) -> None:
    # As the parameter's own name (a document may declare it) and as an agent-chosen key of an
    # exploded object: servers differ on case, brackets and which duplicate wins.
    with pytest.raises(ArgumentMappingError, match="query parameter of the brokered credential") as err:
        call((Param("p", name, "query", "form", True, False),), {"p": "EVIL"}, credential=CREDENTIAL)
    assert err.value.argument == "p" and "EVIL" not in str(err.value) and "SECRET" not in str(err.value)
    with pytest.raises(ArgumentMappingError, match="'filter'"):
        call((query_param("form", True, "filter"),), {"filter": {"ok": "1", name: "EVIL"}}, credential=CREDENTIAL)
    with pytest.raises(ArgumentMappingError, match="'p'"):
        call((Param("p", name.strip(), "query", "deepObject", True, False),), {"p": {"k": "v"}}, credential=CREDENTIAL)
    # without a credential nothing is protected
    assert "EVIL" in call((query_param("form", True, "filter"),), {"filter": {name: "EVIL"}}).url


@pytest.mark.parametrize("name", ["api_keys", "my_api_key", "apikey", "key", "api"])
def test_other_query_names_pass_next_to_the_credential(name: str) -> None:
    req = call((query_param("form", True, "filter"),), {"filter": {name: "v"}}, credential=CREDENTIAL)
    assert parse_qsl(urlsplit(req.url).query) == [(name, "v"), ("api_key", "SECRET-Q")]


def test_cookie_names_that_would_shadow_a_credential_cookie_are_refused() -> None:
    credential = UpstreamCredential("cred@1", headers={"Cookie": "session=SECRET; theme=dark"})
    for params, arguments in (
        ((Param("s", "SESSION", "cookie", "form", True, False),), {"s": "EVIL"}),
        ((Param("s", "session.x", "cookie", "form", True, False),), {"s": "EVIL"}),
        ((Param("s", "many", "cookie", "form", True, False),), {"s": {"ok": "1", "Theme": "EVIL"}}),
    ):
        with pytest.raises(ArgumentMappingError, match="cookie of the brokered credential") as err:
            call(params, arguments, credential=credential)
        assert err.value.argument == "s"
    # Other cookies are allowed (the credential's Cookie header replaces the arguments' one).
    req = call((Param("o", "other", "cookie", "form", True, False),), {"o": "fine"}, credential=credential)
    assert header(req, "cookie") == ["session=SECRET; theme=dark"]


@pytest.mark.parametrize("name", ["X-API-KEY", "x-api-key", "X-Api-Key", "x-API-key"])
def test_credential_header_replaces_any_case(name: str) -> None:
    param = Param("h", name, "header", "simple", False, False)
    for credential in (UpstreamCredential("cred@1", headers={"X-Api-Key": "SECRET"}), CREDENTIAL):
        req = call((param,), {"h": "agent"}, credential=credential)
        assert [v for k, v in req.headers if k.lower() == "x-api-key"] == [
            credential.headers[next(iter(credential.headers))]
        ]
        assert "agent" not in [v for _, v in req.headers]


def test_bodies() -> None:
    flat = Body("application/json", True, None, ("name", "size"))
    req = call((), {"name": "n", "size": 3, "other": 1}, method="POST", body=flat)
    assert orjson.loads(req.content or b"") == {"name": "n", "size": 3}
    assert header(req, "content-type") == ["application/json"]

    whole = Body("application/merge-patch+json", True, "body")
    req = call((), {"body": [1, 2]}, method="PATCH", body=whole)
    assert req.content == b"[1,2]" and header(req, "content-type") == ["application/merge-patch+json"]

    form = Body("application/x-www-form-urlencoded", True, "body")
    req = call((), {"body": {"name": "a b&c", "tags": ["x", "y"], "flag": True, "obj": {"k": 1}}}, body=form)
    assert parse_qsl((req.content or b"").decode()) == [
        ("name", "a b&c"),
        ("tags", "x"),
        ("tags", "y"),
        ("flag", "true"),
        ("obj", '{"k":1}'),
    ]

    text = Body("text/plain", True, "body")
    req = call((), {"body": "héllo"}, body=text)
    assert req.content == "héllo".encode() and header(req, "content-type") == ["text/plain; charset=utf-8"]


def test_absent_optional_body_sends_nothing_and_required_is_refused() -> None:
    assert call((), {}, method="POST", body=Body("application/json", False, "body")).content is None
    assert call((), {}, method="POST", body=Body("application/json", False, None, ("a",))).content is None
    assert not header(call((), {}, method="POST", body=Body("application/json", False, "body")), "content-type")
    with pytest.raises(ArgumentMappingError, match="'body' is required"):
        call((), {}, method="POST", body=Body("application/json", True, "body"))
    required_flat = call((), {}, method="POST", body=Body("application/json", True, None, ("a",)))
    assert required_flat.content == b"{}"


def test_wrong_body_shapes_are_refused() -> None:
    with pytest.raises(ArgumentMappingError, match="object"):
        call((), {"body": [1]}, body=Body("application/x-www-form-urlencoded", True, "body"))
    with pytest.raises(ArgumentMappingError, match="text"):
        call((), {"body": {"a": 1}}, body=Body("text/plain", True, "body"))


def test_the_finished_url_must_keep_the_base_origin() -> None:
    # A malformed binding (not from Operation.from_record): the defence-in-depth check holds.
    param = path_param("simple", False, "id")
    with pytest.raises(ArgumentMappingError, match="base URL"):
        call((param,), {"id": "x"}, path="@evil.example/{id}", base="http://api.example.test")
    with pytest.raises(ArgumentMappingError, match="base URL"):
        call((), {}, path=":8443/x", base="http://api.example.test")
