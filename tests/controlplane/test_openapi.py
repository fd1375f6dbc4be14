"""The OpenAPI 3.1 description: valid, complete (every route, nothing extra), and served without a token."""

from __future__ import annotations

import inspect
import re

import pytest
from openapi_spec_validator import validate
from openapi_spec_validator.validation.exceptions import OpenAPIValidationError

from gateway.config import Config
from gateway.controlplane.middleware.auth import PUBLIC_PATHS, is_internal_path, is_opa_path
from gateway.controlplane.openapi import openapi_document
from gateway.controlplane.routes import routes
from tests.controlplane.helpers import asgi_controlplane

_CONVERTER = re.compile(r"\{(\w+):\w+\}")


def test_the_document_is_a_valid_openapi_3_1_description() -> None:
    document = openapi_document()
    assert document["openapi"] == "3.1.0"
    validate(document)


def test_the_validator_used_here_rejects_a_broken_document() -> None:
    document = openapi_document()
    del document["paths"]["/v1/servers/{name}"]["get"]["parameters"]  # {name} left undeclared
    with pytest.raises(OpenAPIValidationError):
        validate(document)


def test_every_route_is_described_and_nothing_else() -> None:
    in_routes = {
        (_CONVERTER.sub(r"{\1}", route.path), method.lower())
        for route in routes
        for method in route.methods or ()
        if method != "HEAD"
    }
    described = {(path, method) for path, item in openapi_document()["paths"].items() for method in item}
    assert described == in_routes


def test_internal_operations_are_marked_internal_and_admin_ones_are_not() -> None:
    for path, item in openapi_document()["paths"].items():
        for method, op in item.items():
            internal = is_internal_path(path.replace("{name}", "gateway"))
            assert op.get("x-internal", False) is internal, (method, path)
            assert ("internal" in op["tags"]) is internal, (method, path)
            if "oauth" in op["tags"]:  # the user's browser: no token, never a 401
                assert op["security"] == [] and "401" not in op["responses"], (method, path)
            elif path not in PUBLIC_PATHS:
                scheme = "opaToken" if is_opa_path(path) else "internalToken" if internal else "adminToken"
                assert op["security"] == [{scheme: []}], (method, path)
                assert "401" in op["responses"]


def test_every_error_response_is_the_error_body() -> None:
    document = openapi_document()
    responses = document["components"]["responses"]
    for path, item in document["paths"].items():
        for method, op in item.items():
            if "oauth" in op["tags"]:  # pages for a browser: their errors are HTML
                assert all("text/html" in r["content"] for s, r in op["responses"].items() if int(s) >= 400)
                continue
            if path in ("/healthz", "/readyz"):  # probes answer {"status", "reasons"}, like the data plane's
                continue
            for status, response in op["responses"].items():
                if int(status) >= 400:
                    ref = response["$ref"].rsplit("/", 1)[1]
                    schema = responses[ref]["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/Error"}, (method, path, status)


@pytest.mark.anyio
@pytest.mark.db
async def test_the_document_is_served_without_a_token_and_only_for_get(cp_config: Config) -> None:
    anonymous = {"Authorization": ""}
    async with asgi_controlplane(cp_config) as (admin, _, _):
        r = await admin.get("/v1/openapi.json", headers=anonymous)
        post = await admin.post("/v1/openapi.json", headers=anonymous)
        other = await admin.get("/v1/openapi.jsonx", headers=anonymous)
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert r.json() == openapi_document()
    assert post.status_code == 401
    assert other.status_code == 401


_QUERY_READ = re.compile(r"""\b(?:params|q|query_params)\.get\(\s*["'](\w+)["']""")


def test_every_query_parameter_a_handler_reads_is_described() -> None:
    # Per module: the query parameters its handlers read (from the source) are exactly those
    # the document gives the operations served by that module.
    read: dict[str, set[str]] = {}
    described: dict[str, set[str]] = {}
    paths = openapi_document()["paths"]
    for route in routes:
        module = inspect.getmodule(route.endpoint)
        assert module is not None
        read.setdefault(module.__name__, set()).update(_QUERY_READ.findall(inspect.getsource(module)))
        for method in route.methods or ():
            operation = paths[_CONVERTER.sub(r"{\1}", route.path)].get(method.lower(), {})
            names = {p["name"] for p in operation.get("parameters", []) if p["in"] == "query"}
            described.setdefault(module.__name__, set()).update(names)
    assert read == described
