"""A policy version cannot reach the network, the environment or the logs: uploads are held to
the restricted capabilities, and the rollout view says which builtins are in force."""

from __future__ import annotations

import pytest

from gateway.config import Config
from tests.controlplane.helpers import asgi_controlplane

pytestmark = [pytest.mark.anyio, pytest.mark.db]

_TEMPLATE = """package gateway

default decision := {{"allow": false, "reasons": ["x"], "obligations": {{}}}}

decision := {{"allow": true, "reasons": [sprintf("%v", [x])], "obligations": {{}}}} if {{
\t{call}
}}
"""
"""The forbidden call sits on line 6."""

CASES = [
    pytest.param("x := opa.runtime().env.DATABASE_URL", "opa.runtime", id="opa.runtime"),
    pytest.param(
        'x := http.send({"method": "POST", "url": "http://127.0.0.1:9/", "body": input})', "http.send", id="http.send"
    ),
    pytest.param('x := net.lookup_ip_addr("exfil.example.com")', "net.lookup_ip_addr", id="net.lookup_ip_addr"),
    pytest.param('x := net.cidr_contains("10.0.0.0/8", "10.0.0.1")', "net.cidr_contains", id="net.cidr_contains"),
    pytest.param(
        'x := json.match_schema({}, {"$ref": "http://127.0.0.1:9/s.json"})', "json.match_schema", id="json.match_schema"
    ),
    pytest.param(
        'x := json.verify_schema({"$ref": "http://127.0.0.1:9/"})', "json.verify_schema", id="json.verify_schema"
    ),
    pytest.param('x := rego.parse_module("p.rego", "package p")', "rego.parse_module", id="rego.parse_module"),
    pytest.param('x := 1; trace("claims")', "trace", id="trace"),
    pytest.param("x := 1; print(input.arguments)", "internal.print", id="print"),
]


@pytest.mark.parametrize(("call", "builtin"), CASES)
async def test_an_upload_calling_a_forbidden_builtin_is_rejected_naming_it_and_the_line(
    cp_config: Config, call: str, builtin: str
) -> None:
    async with asgi_controlplane(cp_config) as (admin, _, _):
        r = await admin.post("/v1/policies", json={"modules": {"gateway.rego": _TEMPLATE.format(call=call)}})
        assert r.status_code == 400, r.text
        body = r.json()
        assert body["error"] == "policy_rejected"
        first = body["errors"][0]
        assert first["code"] == "gateway_forbidden_builtin" and first["builtin"] == builtin
        assert first["file"] == "gateway.rego" and first["line"] == 6
        assert builtin in body["message"] and "gateway.rego:6" in body["message"]
        assert (await admin.get("/v1/policies")).json()["items"] == []


async def test_an_upload_using_only_allowed_builtins_is_accepted(cp_config: Config) -> None:
    call = 'x := concat(",", [time.format(time.now_ns()), json.marshal(input.tool), uuid.rfc4122("a")])'
    async with asgi_controlplane(cp_config) as (admin, _, _):
        r = await admin.post("/v1/policies", json={"modules": {"gateway.rego": _TEMPLATE.format(call=call)}})
    assert r.status_code == 201, r.text


async def test_the_rollout_view_lists_the_capabilities_in_force(cp_config: Config) -> None:
    async with asgi_controlplane(cp_config) as (admin, _, _):
        view = (await admin.get("/v1/projection")).json()
    caps = view["policy_capabilities"]
    assert "http.send" not in caps["allowed_builtins"] and "opa.runtime" not in caps["allowed_builtins"]
    assert "startswith" in caps["allowed_builtins"]
    assert set(caps["excluded_builtins"]) >= {"http.send", "opa.runtime", "net.*", "trace", "internal.print"}
