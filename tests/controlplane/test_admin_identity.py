"""Admin identity (JWT admins, roles), the control plane's own OPA authorization, four-eyes
approvals and the control-plane audit trail, against a real OPA and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.config import Config
from gateway.controlplane.authz import ACTIONS, action_for
from gateway.controlplane.middleware.auth import PUBLIC_PATHS
from gateway.controlplane.routes import routes
from gateway.devtools.idp import DevIdentityProvider
from gateway.devtools.stack import sample_policy_modules
from tests.controlplane.helpers import asgi_controlplane, make_config

pytestmark = [pytest.mark.anyio, pytest.mark.db, pytest.mark.integration]

AUDIENCE = "gateway-admin"
ISSUER = "https://admin-idp.test"
SECOND = "https://second-idp.test"


@pytest.fixture
def idps(tmp_path: Path) -> tuple[DevIdentityProvider, DevIdentityProvider]:
    return DevIdentityProvider.create(tmp_path / "a", ISSUER), DevIdentityProvider.create(tmp_path / "b", SECOND)


@pytest.fixture
def config(database_url: str, opa_bin: Path, idps: tuple[DevIdentityProvider, DevIdentityProvider]) -> Config:
    first, second = idps
    admin = {
        "jwt_issuer": ISSUER,
        "jwt_audience": AUDIENCE,
        "jwks_url": first.jwks_url,
        "second_issuer": SECOND,
        "second_audience": AUDIENCE,
        "second_jwks_url": second.jwks_url,
    }
    return make_config(database_url, opa_bin, admin=admin)


class Admins:
    """Clients of the in-process control plane, one per admin identity."""

    def __init__(self, bootstrap: httpx.AsyncClient, idps: tuple[DevIdentityProvider, DevIdentityProvider]) -> None:
        self.bootstrap, self.idps = bootstrap, idps

    def as_(self, sub: str, roles: list[str], *, second: bool = False, **kw: Any) -> dict[str, str]:
        idp = self.idps[1] if second else self.idps[0]
        return {"authorization": f"Bearer {idp.mint(sub, roles, AUDIENCE, **kw)}"}

    async def request(self, method: str, path: str, who: dict[str, str], body: Any = None) -> httpx.Response:
        return await self.bootstrap.request(method, path, json=body, headers=who)


@pytest.fixture
async def admins(config: Config, idps: tuple[DevIdentityProvider, DevIdentityProvider]) -> AsyncIterator[Admins]:
    async with asgi_controlplane(config) as (admin, _, _):
        yield Admins(admin, idps)


def _policy() -> dict[str, Any]:
    return {"modules": sample_policy_modules()}


async def test_every_admin_route_has_an_action() -> None:
    served = {
        (method, route.path)
        for route in routes
        for method in (getattr(route, "methods", None) or ())
        if method != "HEAD"
        and not route.path.startswith(("/v1/opa/", "/v1/dataplane/", "/v1/oauth/"))
        and route.path not in (*PUBLIC_PATHS, "/v1/audit/events")
    }
    missing = sorted(f"{m} {p}" for m, p in served if (m, p) not in ACTIONS)
    assert missing == []
    assert action_for("GET", "/v1/servers/x") == "servers.read"
    assert action_for("PATCH", "/v1/servers/x") == "unknown"  # a path a route serves, another method
    assert action_for("GET", "/v1/nothing") is None


async def test_an_admin_jwt_is_accepted_with_its_roles_and_a_foreign_or_expired_one_is_not(admins: Admins) -> None:
    me = await admins.request("GET", "/v1/admin/whoami", admins.as_("ann", ["auditor", "not-a-role"]))
    assert me.status_code == 200, me.text
    body = me.json()
    assert (body["subject"], body["issuer"], body["roles"], body["bootstrap"]) == ("ann", ISSUER, ["auditor"], False)
    assert body["decision_id"]  # OPA's decision id of this very request
    second = await admins.request("GET", "/v1/admin/whoami", admins.as_("sam", ["operator"], second=True))
    assert second.status_code == 200 and second.json()["issuer"] == SECOND
    expired = admins.as_("ann", ["auditor"], ttl_seconds=-120)
    assert (await admins.request("GET", "/v1/admin/whoami", expired)).status_code == 401
    forged = {"authorization": "Bearer " + admins.as_("ann", ["admin"])["authorization"][7:-4] + "AAAA"}
    assert (await admins.request("GET", "/v1/admin/whoami", forged)).status_code == 401
    boot = (await admins.bootstrap.get("/v1/admin/whoami")).json()
    assert boot["bootstrap"] is True and "approver" in boot["roles"]


async def test_roles_grant_exactly_their_actions(admins: Admins) -> None:
    auditor, author, operator = (
        admins.as_(n, [r]) for n, r in (("aud", "auditor"), ("pat", "policy_author"), ("op", "operator"))
    )
    assert (await admins.request("GET", "/v1/audit/decisions", auditor)).status_code == 200
    refused = await admins.request("POST", "/v1/policies", auditor, _policy())
    assert refused.status_code == 403
    assert refused.json()["error"] == "admin_forbidden"
    assert "grants policies.upload" in refused.json()["message"]
    assert (await admins.request("POST", "/v1/policies", author, _policy())).status_code == 201
    assert (await admins.request("GET", "/v1/audit/decisions", author)).status_code == 403
    assert (await admins.request("GET", "/v1/projection", operator)).status_code == 200
    assert (
        await admins.request(
            "POST",
            "/v1/servers",
            operator,
            {"name": "x", "transport": "streamable_http", "url": "http://127.0.0.1:9/mcp"},
        )
    ).status_code == 403
    nobody = admins.as_("nob", [])
    assert (await admins.request("GET", "/v1/control-plane/scope", nobody)).status_code == 403


async def test_four_eyes_an_approver_cannot_approve_their_own_version(admins: Admins) -> None:
    pat = admins.as_("pat", ["policy_author", "approver"])
    uploaded = await admins.request("POST", "/v1/policies", pat, _policy())
    assert uploaded.status_code == 201 and uploaded.json()["created_by"] == f"pat@{ISSUER}"
    version = uploaded.json()["version"]
    own = await admins.request("POST", f"/v1/policies/{version}/approve", pat, {"comment": "lgtm"})
    assert own.status_code == 403
    assert own.json()["message"] == (
        f"four_eyes: policy_version {version} was authored by pat@{ISSUER}, who cannot approve it"
    )
    # The same sub at the second issuer is someone else: not the author.
    other = await admins.request(
        "POST", f"/v1/policies/{version}/approve", admins.as_("pat", ["approver"], second=True), {}
    )
    assert other.status_code == 400  # past four-eyes, stopped only by the missing comment
    vic = admins.as_("vic", ["approver"])
    no_comment = await admins.request("POST", f"/v1/policies/{version}/approve", vic, {})
    assert no_comment.status_code == 400 and no_comment.json()["message"].startswith("comment:")
    approved = await admins.request("POST", f"/v1/policies/{version}/approve", vic, {"comment": "reviewed in PR 7"})
    assert approved.status_code == 200, approved.text
    assert (approved.json()["approved_by"], approved.json()["approval_comment"]) == (
        f"vic@{ISSUER}",
        "reviewed in PR 7",
    )
    assert approved.json()["status"] == "active"


async def test_role_grants_add_roles_and_are_audited_changes(admins: Admins) -> None:
    dan = admins.as_("dan", [])
    assert (await admins.request("GET", "/v1/audit/decisions", dan)).status_code == 403
    root = admins.as_("root", ["admin"])
    grant = await admins.request(
        "POST", "/v1/admin/roles", root, {"subject": "dan", "role": "auditor", "comment": "SOC 2 review"}
    )
    assert grant.status_code == 201, grant.text
    assert (grant.json()["issuer"], grant.json()["granted_by"]) == (ISSUER, f"root@{ISSUER}")
    own = await admins.request("POST", "/v1/admin/roles", root, {"subject": "root", "role": "approver", "comment": "x"})
    assert own.status_code == 403 and "oneself" in own.json()["message"]
    again = await admins.request("POST", "/v1/admin/roles", root, {"subject": "dan", "role": "auditor", "comment": "x"})
    assert again.status_code == 409
    assert (await admins.request("GET", "/v1/audit/decisions", dan)).status_code == 200
    # The same subject at the second issuer is someone else.
    assert (await admins.request("GET", "/v1/audit/decisions", admins.as_("dan", [], second=True))).status_code == 403
    not_admin = await admins.request(
        "POST", "/v1/admin/roles", admins.as_("eve", ["approver"]), {"subject": "eve", "role": "admin", "comment": "x"}
    )
    assert not_admin.status_code == 403
    revoked = await admins.request("DELETE", f"/v1/admin/roles/{grant.json()['id']}", root)
    assert revoked.status_code == 200
    assert (await admins.request("GET", "/v1/audit/decisions", dan)).status_code == 403

    trail = await admins.request(
        "GET", "/v1/audit/control-plane?changes=true&action=roles.write", admins.as_("aud", ["auditor"])
    )
    assert trail.status_code == 200
    rows = trail.json()["items"]
    assert [(r["method"], r["status"], r["actor"], r["resource_kind"]) for r in rows[:2]] == [
        ("DELETE", 200, f"root@{ISSUER}", "role_grant"),
        ("POST", 201, f"root@{ISSUER}", "role_grant"),
    ]
    assert rows[1]["comment"] == "SOC 2 review" and rows[1]["after_sha256"] and rows[1]["before_sha256"] is None
    assert rows[0]["before_sha256"] == rows[1]["after_sha256"]  # the revoked grant is the one made
    assert all(r["decision_id"] and r["allowed"] for r in rows)


async def test_every_admin_request_is_in_the_trail_with_its_decision_id_refusals_included(admins: Admins) -> None:
    aud = admins.as_("aud2", ["auditor"])
    refused = await admins.request("POST", "/v1/policies", aud, _policy())
    assert refused.status_code == 403
    read = await admins.request("GET", "/v1/servers", aud)
    assert read.status_code == 200
    who = httpx.QueryParams({"actor": f"aud2@{ISSUER}"})
    rows = (await admins.request("GET", f"/v1/audit/control-plane?{who}", aud)).json()["items"]
    assert [(r["action"], r["allowed"], r["status"]) for r in rows] == [
        ("servers.read", True, 200),
        ("policies.upload", False, 403),
    ]
    assert all(r["decision_id"] for r in rows)
    assert rows[1]["reasons"] == ['none of the roles ["auditor"] grants policies.upload']
    again = (await admins.request("GET", f"/v1/audit/control-plane?{who}", aud)).json()["items"]
    assert again[0]["action"] == "audit.read" and again[1:] == rows  # the first query, recorded after it answered


async def test_with_the_bootstrap_token_switched_off_only_jwts_open_the_admin_api(
    database_url: str, opa_bin: Path, idps: tuple[DevIdentityProvider, DevIdentityProvider]
) -> None:
    admin = {"token_enabled": False, "jwt_issuer": ISSUER, "jwt_audience": AUDIENCE, "jwks_url": idps[0].jwks_url}
    config = make_config(database_url, opa_bin, admin=admin)
    async with asgi_controlplane(config) as (bootstrap, _, _):
        assert (await bootstrap.get("/v1/control-plane/scope")).status_code == 401
        jwt = Admins(bootstrap, idps).as_("op", ["operator"])
        assert (await bootstrap.get("/v1/control-plane/scope", headers=jwt)).status_code == 200


async def test_four_eyes_holds_for_servers_too(admins: Admins) -> None:
    both = admins.as_("reg", ["registry_editor", "approver"])
    body = {"name": "foureyes", "transport": "streamable_http", "url": "http://127.0.0.1:9/mcp"}
    made = await admins.request("POST", "/v1/servers", both, body)
    assert made.status_code == 201 and made.json()["registered_by"] == f"reg@{ISSUER}"
    own = await admins.request("POST", "/v1/servers/foureyes/approve", both, {"comment": "mine"})
    assert own.status_code == 403
    assert own.json()["message"] == f"four_eyes: server foureyes was authored by reg@{ISSUER}, who cannot approve it"


async def test_paths_with_control_characters_are_refused_before_any_route(admins: Admins) -> None:
    token = admins.as_("nobody", [])
    for path in ("/v1/audit/events%0A", "/v1/servers%0A", "/v1/audit/events%00"):
        resp = await admins.request("POST", path, token, {"events": []})
        assert resp.status_code == 400, (path, resp.status_code, resp.text)
        assert resp.json()["message"] == "the request path contains control characters"


async def test_a_route_without_an_action_is_refused_not_passed_through(config: Config) -> None:
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from gateway.controlplane.actor import BOOTSTRAP
    from gateway.controlplane.middleware.admin import AdminAuthorizationMiddleware

    async def handler(request: Any) -> PlainTextResponse:
        return PlainTextResponse("reached")

    extra = [Route("/v1/not-in-actions", handler, methods=["GET"])]
    inner = Starlette(routes=extra)
    app = AdminAuthorizationMiddleware(inner, config=config, routes=extra)

    async def with_actor(scope: Any, receive: Any, send: Any) -> None:
        scope["state"] = {"actor": BOOTSTRAP}
        await app(scope, receive, send)

    async with httpx.AsyncClient(transport=httpx.ASGITransport(with_actor), base_url="http://cp") as http:
        resp = await http.get("/v1/not-in-actions")
    assert resp.status_code == 403 and resp.text != "reached"
    assert "grants unknown" in resp.json()["message"]
