"""The Python side of the decision contract: the input builder reproduces the
golden documents that the Rego tests evaluate (``rego_tests/fixtures/*/data.json``),
and every golden document validates against the JSON Schemas in ``schemas/``.

Subjects go through the real JWT path (dev IdP -> JwtVerifier -> Subject), so
the claim mapping is part of the contract too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest

from gateway.config import PROJECT_ROOT, JwtConfig
from gateway.dataplane.auth import JwtVerifier
from gateway.devtools.idp import DevIdentityProvider
from gateway.policy.input import Candidate, Subject, build_discovery_input, build_input

pytestmark = pytest.mark.anyio

FIXTURES = PROJECT_ROOT / "rego_tests" / "fixtures"
SCHEMAS = PROJECT_ROOT / "schemas"
ISSUER = "http://127.0.0.1:9000/idp"
AUDIENCE = "http://127.0.0.1:8081/mcp"
READ_ONLY = {"readOnlyHint": True}
WRITE = {"readOnlyHint": False, "destructiveHint": False}
DESTRUCTIVE = {"readOnlyHint": False, "destructiveHint": True}


def golden(name: str) -> Any:
    return json.loads((FIXTURES / name / "data.json").read_text())


async def subject(tmp_path: Path, sub: str, role: str) -> Subject:
    idp = DevIdentityProvider.create(tmp_path / "idp", ISSUER)
    token = idp.mint(
        sub,
        [role],
        AUDIENCE,
        scope="mcp:tools",
        client_id="demo-agent",
        issued_at=1767225600,
        expires_at=4102444800,
        omit_claims=["nbf", "jti"],
    )
    async with httpx.AsyncClient() as http:
        verifier = JwtVerifier(JwtConfig(issuer=ISSUER, audience=AUDIENCE, jwks_url=idp.jwks_url), http)
        return await verifier.verify(token)


def call_input(subj: Subject, session: str, tool: str, annotations: dict[str, Any], arguments: dict[str, Any]) -> Any:
    return build_input(
        tenant="tenant_local",
        environment="prod",
        action="tools/call",
        subject=subj,
        server="demo",
        transport="streamable_http",
        tool=tool,
        annotations=annotations,
        arguments=arguments,
        session_id=session,
        protocol_version="2025-11-25",
        projection_version=3,
    )


@pytest.mark.parametrize(
    ("fixture", "sub", "role", "session", "tool", "annotations", "arguments"),
    [
        pytest.param(
            "tool_call_viewer_read_only",
            "alice",
            "viewer",
            "sess-1",
            "get_weather",
            READ_ONLY,
            {"city": "Paris"},
            id="viewer-read-only",
        ),
        pytest.param(
            "tool_call_viewer_write",
            "alice",
            "viewer",
            "sess-1",
            "create_ticket",
            WRITE,
            {"title": "x", "priority": "low"},
            id="viewer-write",
        ),
        pytest.param(
            "tool_call_operator_destructive",
            "bob",
            "operator",
            "sess-2",
            "delete_record",
            DESTRUCTIVE,
            {"record_id": "r-1"},
            id="operator-destructive",
        ),
    ],
)
async def test_build_input_reproduces_the_golden_call_documents(
    tmp_path: Path,
    fixture: str,
    sub: str,
    role: str,
    session: str,
    tool: str,
    annotations: dict[str, Any],
    arguments: dict[str, Any],
) -> None:
    subj = await subject(tmp_path, sub, role)
    assert call_input(subj, session, tool, annotations, arguments) == golden(fixture)


async def test_build_discovery_input_reproduces_the_golden_list_document(tmp_path: Path) -> None:
    subj = await subject(tmp_path, "alice", "viewer")
    candidates = [
        Candidate("demo__get_weather", "demo", "streamable_http", "get_weather", READ_ONLY),
        Candidate("demo__create_ticket", "demo", "streamable_http", "create_ticket", WRITE),
        Candidate("demo__delete_record", "demo", "streamable_http", "delete_record", DESTRUCTIVE),
    ]
    doc = build_discovery_input(
        tenant="tenant_local",
        environment="prod",
        subject=subj,
        candidates=candidates,
        session_id="sess-1",
        protocol_version="2025-11-25",
        projection_version=3,
    )
    assert doc == golden("tool_list_viewer")


def feature_input(subj: Subject, action: str, session: str | None, version: str, **kw: Any) -> Any:
    return build_input(
        tenant="tenant_local",
        environment="prod",
        action=action,
        subject=subj,
        session_id=session,
        protocol_version=version,
        projection_version=3,
        **kw,
    )


DEMO = {"server": "demo", "transport": "streamable_http"}


@pytest.mark.parametrize(
    ("fixture", "sub", "role", "action", "session", "version", "kw"),
    [
        pytest.param(
            "resource_read_viewer",
            "alice",
            "viewer",
            "resources/read",
            "sess-1",
            "2025-11-25",
            {**DEMO, "resource_uri": "demo://docs/readme"},
            id="resource-read",
        ),
        pytest.param(
            "prompt_get_viewer",
            "alice",
            "viewer",
            "prompts/get",
            None,
            "2026-07-28",
            {**DEMO, "prompt": "incident_report", "prompt_arguments": {"service": "vpn", "severity": "high"}},
            id="prompt-get",
        ),
        pytest.param(
            "completion_resource_viewer",
            "alice",
            "viewer",
            "completion/complete",
            None,
            "2026-07-28",
            {**DEMO, "resource_uri": "demo://weather/{city}", "arguments": {"city": "Pa"}},
            id="completion-resource",
        ),
        pytest.param(
            "logging_set_level_operator",
            "bob",
            "operator",
            "logging/setLevel",
            "sess-2",
            "2025-11-25",
            {"server": None, "transport": None, "arguments": {"level": "debug"}},
            id="logging-set-level",
        ),
        pytest.param(
            "sampling_operator",
            "bob",
            "operator",
            "sampling/createMessage",
            "sess-2",
            "2025-11-25",
            {
                **DEMO,
                "tool": "summarize",
                "annotations": READ_ONLY,
                "arguments": {"maxTokens": 200, "includeContext": "none"},
            },
            id="sampling-relayed",
        ),
    ],
)
async def test_build_input_reproduces_the_golden_feature_documents(
    tmp_path: Path,
    fixture: str,
    sub: str,
    role: str,
    action: str,
    session: str | None,
    version: str,
    kw: dict[str, Any],
) -> None:
    subj = await subject(tmp_path, sub, role)
    assert feature_input(subj, action, session, version, **kw) == golden(fixture)


@pytest.mark.parametrize(
    ("fixture", "action", "session", "version", "candidates"),
    [
        pytest.param(
            "resource_list_viewer",
            "resources/list",
            "sess-1",
            "2025-11-25",
            [
                Candidate(f"mcp-gw://demo/{u}", "demo", "streamable_http", resource_uri=u)
                for u in ("demo://docs/readme", "demo://internal/payroll")
            ],
            id="resources",
        ),
        pytest.param(
            "prompt_list_viewer",
            "prompts/list",
            None,
            "2026-07-28",
            [
                Candidate(f"demo__{n}", "demo", "streamable_http", prompt=n)
                for n in ("incident_report", "weather_brief")
            ],
            id="prompts",
        ),
    ],
)
async def test_build_discovery_input_reproduces_the_golden_feature_lists(
    tmp_path: Path, fixture: str, action: str, session: str | None, version: str, candidates: list[Candidate]
) -> None:
    subj = await subject(tmp_path, "alice", "viewer")
    doc = build_discovery_input(
        tenant="tenant_local",
        environment="prod",
        subject=subj,
        candidates=candidates,
        session_id=session,
        protocol_version=version,
        projection_version=3,
        action=action,
    )
    assert doc == golden(fixture)


@pytest.mark.parametrize("fixture", sorted(p.name for p in FIXTURES.iterdir() if p.is_dir()))
def test_every_golden_document_validates_against_its_schema(fixture: str) -> None:
    doc = golden(fixture)
    name = "discovery_input" if "candidates" in doc else "decision_input"
    schema = json.loads((SCHEMAS / f"{name}.json").read_text())
    jsonschema.Draft202012Validator(schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER).validate(doc)


def test_a_built_input_with_a_null_session_validates(tmp_path: Path) -> None:
    subj = Subject(sub="s", issuer=ISSUER, roles=("viewer",), scopes=(), client_id=None, claims={"sub": "s"})
    doc = build_input(
        tenant="tenant_local",
        environment="prod",
        action="tools/call",
        subject=subj,
        server="demo",
        transport="streamable_http",
        tool="echo",
        annotations=None,
        arguments=None,
        session_id=None,
        protocol_version="2026-07-28",
        projection_version=1,
    )
    schema = json.loads((SCHEMAS / "decision_input.json").read_text())
    jsonschema.Draft202012Validator(schema).validate(doc)
