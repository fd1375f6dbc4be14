"""The API source registry (``/v1/api-sources``), in-process against real PostgreSQL and opa.

Proven here: a source is registered from a JSON object or from YAML text and stays pending;
anything unusable is a 400 naming its location (never a fetch); names are one namespace with
MCP servers; ``/v1/servers`` does not list sources; approval needs ``internal`` for an
IP-literal base URL that is not public, pins the compiled tools and operations, and compiles
a projection whose routing table carries the operations and whose OPA bundle carries only
the registry view (transport ``openapi``, each tool's annotations and HTTP method and path).
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.config import Config
from tests.controlplane.helpers import OPA_TOKEN, asgi_controlplane, make_config
from tests.credentials.helpers import new_kek

pytestmark = [pytest.mark.anyio, pytest.mark.db]

DATA = Path(__file__).resolve().parents[1] / "apiadapter" / "data"
PETSTORE: dict[str, Any] = json.loads((DATA / "petstore-3.0.json").read_text())
OPA = {"Authorization": f"Bearer {OPA_TOKEN}"}
SELECTION = {"exclude": {"operation_ids": ["uploadFile"]}}


def _source(name: str = "petstore", base_url: str = "https://petstore.example/v2", **extra: Any) -> dict[str, Any]:
    return {"name": name, "base_url": base_url, "document": PETSTORE, "selection": SELECTION, **extra}


def _bundle_files(blob: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
        return {m.name.lstrip("/"): tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]


async def test_register_show_and_approve_a_source(cp_config: Config) -> None:
    async with asgi_controlplane(cp_config) as (admin, internal, _):
        created = await admin.post("/v1/api-sources", json=_source(description="the sample"))
        assert created.status_code == 201, created.text
        record = created.json()
        assert record["status"] == "pending_approval" and record["openapi_version"] == "3.0"
        assert record["base_url"] == "https://petstore.example/v2" and record["internal"] is False
        names = [t["name"] for t in record["tools"]]
        assert "getPetById" in names and "uploadFile" not in names and len(names) == 19
        ops = {op["tool"]: op for op in record["operations"]}
        assert (ops["getPetById"]["method"], ops["getPetById"]["path"]) == ("GET", "/pet/{petId}")
        assert (ops["deletePet"]["method"], ops["deletePet"]["path"]) == ("DELETE", "/pet/{petId}")

        # Sources share the upstream namespace but are not MCP servers.
        assert (await admin.get("/v1/servers")).json()["items"] == []
        hidden = await admin.get("/v1/servers/petstore")
        assert hidden.status_code == 404 and "/v1/api-sources/petstore" in hidden.json()["message"]
        refused = await admin.post("/v1/servers/petstore/approve", json={"comment": "no"})
        assert refused.status_code == 404
        clash = await admin.post(
            "/v1/servers", json={"name": "petstore", "transport": "streamable_http", "url": "http://x/mcp"}
        )
        assert clash.status_code == 409, clash.text
        assert (await admin.post("/v1/api-sources", json=_source())).status_code == 409

        listed = (await admin.get("/v1/api-sources")).json()["items"]
        assert [s["name"] for s in listed] == ["petstore"]
        assert (await admin.get("/v1/api-sources/petstore")).json()["tools"] == record["tools"]

        approved = await admin.post("/v1/api-sources/petstore/approve", json={"comment": "reviewed"})
        assert approved.status_code == 200, approved.text
        shown = approved.json()
        assert shown["status"] == "approved" and shown["approved_by"] and shown["internal"] is False
        assert sorted(shown["diff"]["added"]) == sorted(names) and shown["diff"]["removed"] == []
        assert all(len(t["sha256"]) == 64 for t in shown["tools"])

        feed = (await internal.get("/v1/dataplane/projection", params={"dataplane_id": "dp1"})).json()
        (entry,) = feed["servers"]
        assert entry["transport"] == "openapi" and entry["url"] == "https://petstore.example/v2"
        assert entry["api"]["base_url"] == "https://petstore.example/v2" and entry["api"]["internal"] is False
        assert [op["tool"] for op in entry["api"]["operations"]] == names
        assert [t["name"] for t in entry["tools"]] == names

        files = _bundle_files((await internal.get("/v1/opa/bundles/gateway", headers=OPA)).content)
        data = json.loads(files["data.json"])
        registry = data["gateway_runtime"]["registry"]["servers"]["petstore"]
        assert registry["transport"] == "openapi"
        assert registry["tools"]["deletePet"]["http"] == {"method": "DELETE", "path": "/pet/{petId}"}
        assert registry["tools"]["deletePet"]["annotations"]["destructiveHint"] is True
        assert registry["tools"]["getPetById"]["annotations"]["readOnlyHint"] is True
        everything = b"".join(files.values())
        assert b"Swagger Petstore" not in everything and b"petstore.example" not in everything  # no document, no URL

        again = await admin.post("/v1/api-sources/petstore/approve", json={"comment": "again"})
        assert again.json()["diff"] == {"added": [], "removed": [], "changed": []}


async def test_a_yaml_document_registers_and_keeps_the_document_order(cp_config: Config) -> None:
    text = yaml.safe_dump(PETSTORE, sort_keys=False)
    async with asgi_controlplane(cp_config) as (admin, _, _):
        created = await admin.post("/v1/api-sources", json={**_source(), "document": text})
    assert created.status_code == 201, created.text
    assert [t["name"] for t in created.json()["tools"]][:3] == ["addPet", "updatePet", "findPetsByStatus"]


async def test_unsupported_constructs_are_400_naming_the_location(cp_config: Config) -> None:
    remote = json.loads(json.dumps(PETSTORE))
    remote["paths"]["/pet"]["post"]["requestBody"] = {"$ref": "http://127.0.0.1:9/bodies.json#/Pet"}
    cases: list[tuple[dict[str, Any], str]] = [
        ({**_source(), "selection": {}}, "paths./pet/{petId}/uploadImage.post.requestBody.content"),
        ({**_source(), "document": remote}, "paths./pet.post.requestBody"),
        ({**_source(), "document": {"swagger": "2.0", "info": {}, "paths": {}}}, "document"),
        ({**_source(), "document": "openapi: [unclosed"}, "document"),
        ({**_source(), "selection": {"include": {"tags": ["nothing-has-this-tag"]}}}, "selection"),
    ]
    async with asgi_controlplane(cp_config) as (admin, _, _):
        for body, location in cases:
            r = await admin.post("/v1/api-sources", json=body)
            assert r.status_code == 400, (location, r.text)
            assert r.json()["error"] == "invalid_api_document", r.text
            assert location in r.json()["message"], (location, r.json()["message"])
        assert (await admin.get("/v1/api-sources")).json()["items"] == []


@pytest.mark.parametrize(
    ("base_url", "message"),
    [
        ("ftp://petstore.example/v2", "base_url must be an absolute http(s) URL"),
        ("https://user:pw@petstore.example/v2", "base_url must not carry credentials"),
        ("https://petstore.example/v2?key=1", "base_url must not have a query or fragment"),
        ("https://petstore.example/v2#top", "base_url must not have a query or fragment"),
        ("http://169.254.169.254/latest", "base_url: 169.254.169.254 is"),
        ("http://0.0.0.0:8080/", "base_url: 0.0.0.0 is"),
        ("http://[ff02::1]/", "base_url: ff02::1 is"),
    ],
)
async def test_bad_base_urls_are_400(cp_config: Config, base_url: str, message: str) -> None:
    async with asgi_controlplane(cp_config) as (admin, _, _):
        r = await admin.post("/v1/api-sources", json=_source(base_url=base_url))
    assert r.status_code == 400 and r.json()["message"].startswith(message), r.text


@pytest.mark.parametrize("host", ["127.0.0.1:8080", "10.1.2.3", "[::1]:8443", "192.168.0.10", "100.64.0.1"])
async def test_an_ip_literal_that_is_not_public_needs_internal_at_approval(cp_config: Config, host: str) -> None:
    async with asgi_controlplane(cp_config) as (admin, internal, _):
        assert (await admin.post("/v1/api-sources", json=_source(base_url=f"http://{host}/v2"))).status_code == 201
        refused = await admin.post("/v1/api-sources/petstore/approve", json={"comment": "reviewed"})
        assert refused.status_code == 400 and refused.json()["message"].startswith("internal: "), refused.text
        assert (await admin.get("/v1/api-sources/petstore")).json()["status"] == "pending_approval"
        bad = await admin.post("/v1/api-sources/petstore/approve", json={"comment": "x", "internal": "yes"})
        assert bad.status_code == 400 and bad.json()["message"] == "internal must be a boolean"
        ok = await admin.post("/v1/api-sources/petstore/approve", json={"comment": "ours", "internal": True})
        assert ok.status_code == 200 and ok.json()["internal"] is True and ok.json()["internal_at"], ok.text
        feed = (await internal.get("/v1/dataplane/projection", params={"dataplane_id": "dp1"})).json()
        assert feed["servers"][0]["api"]["internal"] is True


async def test_a_name_is_approved_without_internal_and_checked_where_it_resolves(cp_config: Config) -> None:
    async with asgi_controlplane(cp_config) as (admin, _, _):
        await admin.post("/v1/api-sources", json=_source(base_url="http://localhost:8080/v2"))
        r = await admin.post("/v1/api-sources/petstore/approve", json={"comment": "reviewed"})
    assert r.status_code == 200 and r.json()["internal"] is False, r.text


async def test_a_credential_binds_to_an_api_source_like_to_a_server(database_url: str, opa_bin: Path) -> None:
    config = make_config(database_url, opa_bin, credentials={"kek": new_kek()})
    async with asgi_controlplane(config) as (admin, internal, _):
        await admin.post("/v1/api-sources", json=_source())
        cred = await admin.post(
            "/v1/credentials",
            json={"name": "petstore-key", "kind": "headers", "secret": {"headers": {"api_key": "k-123"}}},
        )
        assert cred.status_code == 201, cred.text
        bound = await admin.post(
            "/v1/credential-bindings",
            json={"server": "petstore", "subject": {"kind": "everyone"}, "credential_id": cred.json()["id"]},
        )
        assert bound.status_code == 201, bound.text
        await admin.post("/v1/api-sources/petstore/approve", json={"comment": "reviewed"})
        feed = (await internal.get("/v1/dataplane/projection", params={"dataplane_id": "dp1"})).json()
        (entry,) = feed["servers"]
        assert [b["credential"]["kind"] for b in entry["credentials"]] == ["headers"]
        assert "k-123" not in json.dumps(feed)
