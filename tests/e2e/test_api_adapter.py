"""End to end: REST APIs described by OpenAPI, governed as MCP tools (issue 12).

A real stack (``gateway serve`` with a KEK, OPA, PostgreSQL, the sample policy) and a real
REST service (``tests/support/rest_api.py``, Starlette under uvicorn) registered three times:

* ``petstore``: the shipped Swagger Petstore 3.0 document (``tests/apiadapter/data``), with
  ``uploadFile`` left out (multipart), served by the service's Petstore subset; a ``headers``
  credential carries its ``api_key``;
* ``shop``: the service's own OpenAPI 3.1 document (every parameter location and style, errors,
  an authenticated endpoint), with a ``headers`` credential carrying ``x-api-key``;
* ``loopy``: the same document at ``http://localhost:<port>``, approved *not* internal: every
  call must be refused before anything is sent (the name resolves to loopback).

Agents use the real ``mcp`` SDK client in both eras, on ``/mcp`` and on ``/mcp/<source>``.
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp.shared.exceptions import MCPError

from gateway.devtools.stack import LocalStack
from tests.e2e.helpers import audit_item, client
from tests.support import rest_api
from tests.support.logs import files_containing
from tests.support.stacks import sample_stack

pytestmark = [pytest.mark.integration, pytest.mark.db, pytest.mark.anyio, pytest.mark.timeout(300)]

PETSTORE = json.loads((Path(__file__).resolve().parents[1] / "apiadapter" / "data" / "petstore-3.0.json").read_text())
SHOP_KEY = "canary-shop-key-4be19d07a2c3"
PET_KEY = "canary-pet-key-9a70c3e15d28"
META = "mcp-opa-gateway/http"


class Fleet:
    def __init__(self, stack: LocalStack, rest: rest_api.RunningRestApi) -> None:
        self.stack, self.rest = stack, rest

    def token(self, sub: str, role: str) -> str:
        return self.stack.idp.mint(sub, [role], self.stack.audience)

    def register(self, name: str, base_url: str, document: Any, *, internal: bool, **extra: Any) -> dict[str, Any]:
        self.stack.admin("POST", "/v1/api-sources", {"name": name, "base_url": base_url, "document": document, **extra})
        body: dict[str, Any] = {"comment": "reviewed in the test"}
        if internal:
            body["internal"] = True
        return self.stack.admin("POST", f"/v1/api-sources/{name}/approve", body)  # type: ignore[no-any-return]

    def bind_headers(self, source: str, headers: dict[str, str]) -> None:
        cred = self.stack.admin(
            "POST", "/v1/credentials", {"name": f"{source}-key", "kind": "headers", "secret": {"headers": headers}}
        )
        self.stack.admin(
            "POST",
            "/v1/credential-bindings",
            {"server": source, "subject": {"kind": "everyone"}, "credential_id": cred["id"]},
        )


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, pg_admin_url: str, opa_bin: Path) -> Iterator[Fleet]:
    run_dir = tmp_path_factory.mktemp("api-adapter")
    kek = base64.b64encode(os.urandom(32)).decode()
    with (
        rest_api.start_subprocess(run_dir, api_keys=[SHOP_KEY], petstore_api_key=PET_KEY) as rest,
        sample_stack(run_dir, pg_admin_url, opa_bin, env={"GATEWAY_CREDENTIALS_KEK": kek}) as stack,
    ):
        f = Fleet(stack, rest)
        selection = {"exclude": {"operation_ids": ["uploadFile"]}}
        stack.admin(
            "POST",
            "/v1/api-sources",
            {"name": "petstore", "base_url": f"{rest.url}/petstore", "document": PETSTORE, "selection": selection},
        )
        f.bind_headers("petstore", {"api_key": PET_KEY})
        stack.admin("POST", "/v1/api-sources/petstore/approve", {"comment": "the sample", "internal": True})
        stack.admin("POST", "/v1/api-sources", {"name": "shop", "base_url": rest.url, "document": rest_api.DOCUMENT})
        f.bind_headers("shop", {"x-api-key": SHOP_KEY})
        stack.admin("POST", "/v1/api-sources/shop/approve", {"comment": "ours", "internal": True})
        port = rest.url.rsplit(":", 1)[1]
        f.register("loopy", f"http://localhost:{port}", rest_api.DOCUMENT, internal=False)
        stack.wait_projection_active()
        yield f


def _latest_audit(fleet: Fleet, **params: str) -> dict[str, Any]:
    """The newest audited decision matching ``params``, polled until the data plane shipped it (bounded)."""
    deadline = time.monotonic() + 15
    while True:
        page = httpx.get(
            f"{fleet.stack.control_url}/v1/audit/decisions",
            params={**params, "limit": "1"},
            headers=fleet.stack.admin_headers,
        ).json()
        if page["items"]:
            return page["items"][0]  # type: ignore[no-any-return]
        if time.monotonic() > deadline:
            raise AssertionError(f"no audited decision for {params} after 15 s")
        time.sleep(0.1)


def _structured(result: Any) -> Any:
    assert result.structured_content is not None, result
    return result.structured_content


async def test_a_viewer_sees_only_read_only_operations_and_gets_structured_results(fleet: Fleet) -> None:
    async with client(fleet.stack, fleet.token("alice", "viewer")) as c:
        assert c.protocol_version == "2026-07-28"
        names = {t.name for t in (await c.list_tools()).tools}
        assert {"petstore__getPetById", "petstore__findPetsByStatus", "shop__echoQuery"} <= names
        assert not {"petstore__addPet", "petstore__deletePet", "shop__echoJson"} & names  # POST, DELETE
        tool = next(t for t in (await c.list_tools()).tools if t.name == "petstore__getPetById")
        assert tool.input_schema["required"] == ["petId"] and tool.annotations.read_only_hint is True
        assert tool.output_schema is not None and tool.output_schema["type"] == "object"

        result = await c.call_tool("petstore__getPetById", {"petId": 1})
    assert not result.is_error, result
    pet = _structured(result)
    assert pet["id"] == 1 and isinstance(pet["name"], str)
    assert json.loads(result.content[0].text) == pet  # the same JSON as text, for clients without structured output
    assert result.meta[META] == {"status": 200, "category": None}


async def test_a_handshake_client_on_the_per_source_endpoint_is_governed_by_method(fleet: Fleet) -> None:
    pet = {"name": "Rex", "photoUrls": [], "status": "available"}  # Pet.id is readOnly: the API assigns it
    async with client(fleet.stack, fleet.token("bob", "operator"), path="/mcp/petstore", mode="legacy") as c:
        assert c.protocol_version == "2025-11-25"
        names = {t.name for t in (await c.list_tools()).tools}
        assert "addPet" in names and "deletePet" not in names  # destructive: admins only
        added = await c.call_tool("addPet", pet)
        assert not added.is_error and _structured(added)["name"] == "Rex", added
        pet_id = _structured(added)["id"]
        with pytest.raises(MCPError) as denied:
            await c.call_tool("deletePet", {"petId": pet_id})
        assert denied.value.error.data["reasons"] == ["destructive_tool_requires_admin"]
    async with client(fleet.stack, fleet.token("carol", "admin"), path="/mcp/petstore") as c:
        deleted = await c.call_tool("deletePet", {"petId": pet_id})
        assert not deleted.is_error, deleted
        gone = await c.call_tool("getPetById", {"petId": pet_id})
    assert gone.is_error and gone.meta[META] == {"status": 404, "category": "api_not_found"}
    assert "HTTP 404" in gone.content[0].text


async def test_every_parameter_location_arrives_as_sent(fleet: Fleet) -> None:
    async with client(fleet.stack, fleet.token("carol", "admin")) as c:
        query = await c.call_tool(
            "shop__echoQuery",
            {"q": "a b&c", "tags": ["x", "y"], "ids": [1, 2], "words": ["p", "q"], "filter": {"R": 1, "G": 2}},
        )
        headers = await c.call_tool("shop__echoHeaders", {"X-Trace": "t-1", "session": "s1"})
        body = await c.call_tool("shop__echoJson", {"name": "widget", "size": 3})
        path = await c.call_tool("shop__echoPathPlain", {"name": "a/b?c#d"})
    echoed = _structured(query)
    assert echoed["query"] == "q=a%20b%26c&tags=x&tags=y&ids=1,2&words=p%20q&filter%5BR%5D=1&filter%5BG%5D=2"
    assert _structured(headers)["headers"]["x-trace"] == "t-1" and _structured(headers)["cookies"]["session"] == "s1"
    sent = _structured(body)
    assert sent["method"] == "POST" and sent["json"] == {"name": "widget", "size": 3}
    assert _structured(path)["path"] == "/echo/path/plain/a%2Fb%3Fc%23d"  # one segment, whatever it holds


async def test_arguments_the_schema_refuses_never_reach_the_api(fleet: Fleet) -> None:
    fleet.rest.reset()
    async with client(fleet.stack, fleet.token("carol", "admin")) as c:
        wrong = await c.call_tool("petstore__getPetById", {"petId": "one"})
        dots = await c.call_tool("shop__echoPathPlain", {"name": ".."})
    assert wrong.is_error and "$.petId" in wrong.content[0].text
    assert dots.is_error and dots.meta[META]["category"] == "invalid_arguments"
    assert fleet.rest.count() == 0


async def test_the_brokered_credential_is_sent_and_never_seen(fleet: Fleet) -> None:
    fleet.rest.reset()
    async with client(fleet.stack, fleet.token("alice", "viewer")) as c:
        who = await c.call_tool("shop__whoami", {})
        echoed = await c.call_tool("shop__echoHeaders", {})  # an API that shows its request
        rejected = await c.call_tool("shop__echoRejected", {"q": "x"})  # a 400 that quotes it
    assert _structured(who) == {"via": "x-api-key", "digest": rest_api.digest(SHOP_KEY)}
    sent = [r["headers"].get("x-api-key") for r in fleet.rest.received()["requests"]]
    assert sent == [SHOP_KEY] * 3  # every call carried the key...
    assert _structured(echoed)["headers"]["x-api-key"] == "[redacted]"  # ...and no result shows it
    assert rejected.is_error and rejected.meta[META] == {"status": 400, "category": "api_bad_request"}
    assert '"x-api-key":"[redacted]"' in rejected.content[0].text
    for result in (who, echoed, rejected):
        assert SHOP_KEY not in json.dumps(result.model_dump(mode="json"))
    for secret in (SHOP_KEY, PET_KEY):
        assert files_containing(fleet.stack.run_dir, secret) == []
        page = httpx.get(f"{fleet.stack.control_url}/v1/audit/decisions", headers=fleet.stack.admin_headers)
        assert secret not in page.text


async def test_a_source_not_approved_internal_never_reaches_a_loopback_address(fleet: Fleet) -> None:
    fleet.rest.reset()
    async with client(fleet.stack, fleet.token("carol", "admin")) as c:
        with pytest.raises(MCPError) as refused:
            await c.call_tool("loopy__echoQuery", {"q": "x"})
    data = refused.value.error.data
    assert data["category"] == "upstream_address_refused"
    assert fleet.rest.count() == 0
    item = audit_item(fleet.stack, data["decision_id"])
    assert item["status"] == "error" and item["error_category"] == "upstream_address_refused"


async def test_answers_the_adapter_cannot_map_are_tool_errors_not_internal_errors(fleet: Fleet) -> None:
    async with client(fleet.stack, fleet.token("alice", "viewer")) as c:
        text = await c.call_tool("shop__custom", {"type": "text/plain; charset=base64", "text": "hello"})
        deep = await c.call_tool("shop__custom", {"deep": 900})
    assert not text.is_error and text.content[0].text == "hello"
    assert deep.is_error and deep.meta[META] == {"status": 200, "category": "upstream_response_invalid"}
    item = _latest_audit(fleet, server="shop", tool="custom", status="tool_error")
    assert item["error_category"] == "upstream_response_invalid"


async def test_http_errors_are_tool_errors_with_a_safe_category_in_the_audit(fleet: Fleet) -> None:
    async with client(fleet.stack, fleet.token("carol", "admin")) as c:
        failed = await c.call_tool("shop__getStatus", {"code": 503})
    assert failed.is_error and failed.meta[META] == {"status": 503, "category": "api_server_error"}
    item = _latest_audit(fleet, server="shop", tool="getStatus")
    assert item["status"] == "tool_error" and item["error_category"] == "api_server_error"


async def test_opa_decides_with_the_openapi_transport(fleet: Fleet) -> None:
    async with client(fleet.stack, fleet.token("alice", "viewer")) as c:
        await c.call_tool("petstore__findPetsByStatus", {"status": ["available"]})
    found = _latest_audit(fleet, server="petstore", tool="findPetsByStatus")
    item = audit_item(fleet.stack, found["decision_id"], opa_logged=True)
    logged = item["opa_decision_log"]["input"]
    assert logged["server"] == {"name": "petstore", "transport": "openapi"}
    assert "arguments" not in logged  # masked by system.log.mask, as for every upstream
