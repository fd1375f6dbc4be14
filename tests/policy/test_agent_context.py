"""Agent context in the policy input (issue 8): real JWTs from the dev IdP through the real
verifier into ``subject`` (agent, groups, scopes, roles, the RFC 8693 ``act`` chain, the
credential kind), the golden documents of a delegated call and an API-key call, and a real
``opa`` that type-checks a policy against the schema and decides on the chain's depth."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.config import PROJECT_ROOT, JwtConfig
from gateway.dataplane.api_keys import ApiKeyEntry
from gateway.dataplane.auth import JwtVerifier
from gateway.devtools.idp import DevIdentityProvider
from gateway.errors import AuthenticationFailed, DelegationTooDeep
from gateway.jwtauth import MAX_DELEGATION_DEPTH, delegation_chain
from gateway.policy.input import Subject, build_input

pytestmark = pytest.mark.anyio

FIXTURES = PROJECT_ROOT / "rego_tests" / "fixtures"
SCHEMAS = PROJECT_ROOT / "schemas"
ISSUER = "http://127.0.0.1:9000/idp"
AUDIENCE = "http://127.0.0.1:8081/mcp"
ACT = {"sub": "research-agent", "client_id": "research-agent", "act": {"sub": "orchestrator", "iss": ISSUER}}


@pytest.fixture(scope="module")
def idp(tmp_path_factory: pytest.TempPathFactory) -> DevIdentityProvider:
    return DevIdentityProvider.create(tmp_path_factory.mktemp("idp"), ISSUER)


async def verified(idp: DevIdentityProvider, token: str, **config: Any) -> Subject:
    async with httpx.AsyncClient() as http:
        jwt_config = JwtConfig(issuer=ISSUER, audience=AUDIENCE, jwks_url=idp.jwks_url, **config)
        return await JwtVerifier(jwt_config, http).verify(token)


def nested_act(depth: int) -> dict[str, Any]:
    act: dict[str, Any] = {"sub": f"agent-{depth}"}
    for level in range(depth - 1, 0, -1):
        act = {"sub": f"agent-{level}", "act": act}
    return act


def call_input(subject: Subject, **kw: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "tenant": "tenant_local",
        "environment": "prod",
        "action": "tools/call",
        "subject": subject,
        "server": "demo",
        "transport": "streamable_http",
        "tool": "get_weather",
        "annotations": {"readOnlyHint": True},
        "arguments": {"city": "Paris"},
        "session_id": "sess-1",
        "protocol_version": "2025-11-25",
        "projection_version": 3,
    }
    args.update(kw)
    return build_input(**args)


async def test_a_delegated_token_reproduces_the_golden_document(idp: DevIdentityProvider) -> None:
    token = idp.mint(
        "alice",
        ["viewer"],
        AUDIENCE,
        scope="mcp:tools mcp:read",
        client_id="demo-agent",
        issued_at=1767225600,
        expires_at=4102444800,
        omit_claims=["nbf", "jti"],
        extra_claims={"azp": "research-agent", "groups": ["eng", "oncall"], "act": ACT},
    )
    subject = await verified(idp, token)
    golden = json.loads((FIXTURES / "tool_call_delegated_agent" / "data.json").read_text())
    assert call_input(subject) == golden
    # What the golden document pins, spelled out: the human, the agent, the chain outermost first.
    assert golden["subject"]["sub"] == "alice"
    assert golden["subject"]["agent"] == "research-agent"  # azp wins for the agent ...
    assert golden["subject"]["client_id"] == "demo-agent"  # ... client_id keeps its old precedence
    assert [a["sub"] for a in golden["subject"]["delegation"]] == ["research-agent", "orchestrator"]
    assert golden["subject"]["credential_kind"] == "jwt" and golden["subject"]["key_id"] is None


def test_an_api_key_subject_reproduces_the_golden_document() -> None:
    entry = ApiKeyEntry("3f9a0c1d2e4b5a6f", "ci-bot", ("operator",), "$argon2id$...", 4102444800.0)
    doc = call_input(
        entry.subject_of(),
        tool="create_ticket",
        annotations={"readOnlyHint": False, "destructiveHint": False},
        arguments={"title": "x", "priority": "low"},
        session_id=None,
        protocol_version="2026-07-28",
    )
    assert doc == json.loads((FIXTURES / "tool_call_api_key" / "data.json").read_text())
    assert doc["subject"]["credential_kind"] == "api_key"
    assert doc["subject"]["client_id"] == doc["subject"]["agent"] == "api_key:3f9a0c1d2e4b5a6f"


async def test_claim_names_are_configurable_and_scopes_may_be_a_list(idp: DevIdentityProvider) -> None:
    token = idp.mint(
        "carol",
        [],
        AUDIENCE,
        client_id=None,
        extra_claims={"app_roles": "editor auditor", "teams": "Platform Team", "scp": ["a:read", "b:write"]},
    )
    subject = await verified(idp, token, roles_claim="app_roles", groups_claim="teams", scopes_claim="scp")
    assert subject.roles == ("editor", "auditor")
    assert subject.groups == ("Platform Team",)  # one string is one group (names may hold spaces)
    assert subject.scopes == ("a:read", "b:write")
    assert subject.agent is None and subject.client_id is None and subject.delegation == ()


async def test_a_token_without_the_new_claims_keeps_the_old_shape(idp: DevIdentityProvider) -> None:
    subject = await verified(idp, idp.mint("dave", ["viewer"], AUDIENCE, client_id="cli"))
    doc = subject.as_input()
    assert doc["groups"] == [] and doc["delegation"] == [] and doc["agent"] == "cli" and doc["client_id"] == "cli"


async def test_groups_of_the_wrong_type_are_refused(idp: DevIdentityProvider) -> None:
    with pytest.raises(AuthenticationFailed, match="groups claim"):
        await verified(idp, idp.mint("erin", [], AUDIENCE, extra_claims={"groups": [1, 2]}))


async def test_the_deepest_accepted_chain_passes_and_one_more_is_refused(idp: DevIdentityProvider) -> None:
    deepest = await verified(idp, idp.mint("frank", [], AUDIENCE, extra_claims={"act": nested_act(8)}))
    assert [a["sub"] for a in deepest.delegation] == [f"agent-{i}" for i in range(1, MAX_DELEGATION_DEPTH + 1)]
    with pytest.raises(DelegationTooDeep) as info:
        await verified(idp, idp.mint("frank", [], AUDIENCE, extra_claims={"act": nested_act(9)}))
    assert info.value.category == "delegation_too_deep" and info.value.status_code == 401


@pytest.mark.parametrize(
    ("act", "message"),
    [
        pytest.param("agent", "not an object", id="string"),
        pytest.param({"client_id": "x"}, "without a subject", id="no-sub"),
        pytest.param({"sub": "  "}, "without a subject", id="blank-sub"),
        pytest.param({"sub": "a", "iss": 7}, "iss is not a string", id="iss-number"),
        pytest.param({"sub": "a", "act": {"sub": "b", "client_id": ["c"]}}, "client_id is not a string", id="nested"),
    ],
)
def test_a_malformed_act_claim_is_refused(act: Any, message: str) -> None:
    with pytest.raises(AuthenticationFailed, match=message):
        delegation_chain({"sub": "alice", "act": act})


def test_other_actor_claims_are_dropped() -> None:
    chain = delegation_chain({"act": {"sub": "a", "iss": "i", "client_id": "c", "email": "a@x", "act": {"sub": "b"}}})
    assert chain == ({"sub": "a", "iss": "i", "client_id": "c"}, {"sub": "b"})


DEPTH_POLICY = """# METADATA
# scope: package
# schemas:
#   - input: schema.decision_input
package gateway

decision := {"allow": allow, "reasons": reasons, "obligations": {}}

default allow := false

allow if {
	count(input.subject.delegation) <= 1
	"eng" in input.subject.groups
}

reasons := ["delegation_too_deep"] if count(input.subject.delegation) > 1

else := []
"""


def _opa(opa_bin: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(opa_bin), *args], capture_output=True, text=True, timeout=60, check=False)


def test_a_real_opa_type_checks_the_new_fields_and_decides_on_the_depth(opa_bin: Path, tmp_path: Path) -> None:
    policy = tmp_path / "policy.rego"
    policy.write_text(DEPTH_POLICY)
    assert _opa(opa_bin, "check", "--strict", "-s", str(SCHEMAS), str(policy)).returncode == 0
    # The schema is what makes a misspelt field a compile error rather than a silent deny.
    misspelt = tmp_path / "misspelt.rego"
    misspelt.write_text(DEPTH_POLICY.replace("input.subject.groups", "input.subject.group"))
    failed = _opa(opa_bin, "check", "--strict", "-s", str(SCHEMAS), str(misspelt))
    assert failed.returncode != 0 and "undefined ref: input.subject.group" in failed.stdout + failed.stderr

    golden = json.loads((FIXTURES / "tool_call_delegated_agent" / "data.json").read_text())

    def decide(doc: dict[str, Any]) -> Any:
        (tmp_path / "input.json").write_text(json.dumps(doc))
        out = _opa(opa_bin, "eval", "-f", "json", "-d", str(policy), "-i", str(tmp_path / "input.json"), "data.gateway")
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)["result"][0]["expressions"][0]["value"]["decision"]

    assert decide(golden) == {"allow": False, "reasons": ["delegation_too_deep"], "obligations": {}}
    one_hop = {**golden, "subject": {**golden["subject"], "delegation": golden["subject"]["delegation"][:1]}}
    assert decide(one_hop)["allow"] is True
