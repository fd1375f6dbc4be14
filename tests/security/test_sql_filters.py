"""SQL metacharacters in every filter and name of the admin API (and the data planes' feed).

Every query parameter and path parameter that reaches PostgreSQL gets quotes, comment
markers, statement separators, ``LIKE`` wildcards (``%``, ``_``), a backslash and NUL. Each
answer is 200 with exactly the rows an exact match gives (none: the payloads name nothing
that exists), or 400 naming the parameter; never 5xx. Afterwards every table is still there
with its rows. The parameters are those of ``gateway/controlplane/openapi.py`` (``_AUDIT_FILTERS``,
the path parameters, and the internal projection feed's), read in ``audit.py``, ``servers.py``,
``policies.py`` and ``dataplane.py``.
"""

from __future__ import annotations

import asyncio
import base64
import uuid
from typing import Any
from urllib.parse import quote

import asyncpg
import httpx
import orjson
import pytest

from gateway.devtools.stack import LocalStack
from tests.security.helpers import (
    admin_get,
    assert_bad_request_naming,
    internal_headers,
    post_call,
    raw_request,
    wait_audited,
)

pytestmark = [pytest.mark.integration, pytest.mark.db]

PAYLOADS = [
    "' OR 1=1 --",
    "' OR '1'='1",
    '" OR ""="',
    '"; DROP TABLE audit_decisions; --',
    "'; DROP TABLE mcp_servers; --",
    "1; DELETE FROM policy_versions",
    "') OR ('x'='x",
    "$1",
    "%",
    "_",
    "%%",
    "\\",
    "\\'",
    "x\x00y",
]
TEXT_FILTERS = ("subject", "server", "tool", "action")
"""Exact-match filters of ``GET /v1/audit/decisions``."""
TYPED_FILTERS = ("allowed", "since", "until", "limit", "cursor")
"""Filters with a syntax: any payload above is a 400 naming them."""
TABLES = ("mcp_servers", "mcp_server_tools", "policy_versions", "projections", "data_planes", "opa_instances")
AUDIT_TABLES = ("audit_decisions", "opa_decision_logs")


def _has_nul(payload: str) -> bool:
    return "\x00" in payload


async def _snapshot(database_url: str) -> dict[str, Any]:
    conn = await asyncpg.connect(database_url)
    try:
        tables = {
            r["tablename"] for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        }
        counts = {t: await conn.fetchval(f"SELECT count(*) FROM {t}") for t in (*TABLES, *AUDIT_TABLES)}
        return {"tables": tables, "counts": counts}
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def victim(http: httpx.Client, stack: LocalStack) -> dict[str, Any]:
    """A subject with audited calls (so a filter that matched too much would return rows),
    and the database as it was before any payload was sent."""
    subject = f"victim{uuid.uuid4().hex[:12]}"
    token = stack.idp.mint(subject, ["viewer"], stack.audience)
    for _ in range(2):
        assert post_call(http, stack, token, "demo__echo", {"text": "seed"}).status_code == 200
    items = wait_audited(http, stack, subject, 2)
    return {"subject": subject, "items": items, "before": asyncio.run(_snapshot(stack.database_url))}


def _decisions(http: httpx.Client, stack: LocalStack, params: dict[str, str]) -> httpx.Response:
    return admin_get(http, stack, "/v1/audit/decisions", params)


def test_each_text_filter_matches_exactly_its_own_value(
    http: httpx.Client, stack: LocalStack, victim: dict[str, Any]
) -> None:
    """The control for the payload cases: the real values do find the victim's rows."""
    for name, value in (("subject", victim["subject"]), ("server", "demo"), ("tool", "echo"), ("action", "tools/call")):
        items = _decisions(http, stack, {name: value, "subject": victim["subject"]}).json()["items"]
        assert len(items) == 2 and all(item[name] == value for item in items), (name, items)


@pytest.mark.parametrize("name", TEXT_FILTERS)
@pytest.mark.parametrize("payload", PAYLOADS, ids=[ascii(p) for p in PAYLOADS])
def test_a_text_filter_treats_metacharacters_as_literal_text(
    http: httpx.Client, stack: LocalStack, victim: dict[str, Any], name: str, payload: str
) -> None:
    resp = _decisions(http, stack, {name: payload})
    if _has_nul(payload):
        assert_bad_request_naming(resp, name)
    else:
        assert resp.status_code == 200, resp.text
        assert resp.json() == {"items": [], "next_cursor": None}


@pytest.mark.parametrize("name", TEXT_FILTERS)
def test_like_wildcards_next_to_a_real_value_match_nothing(
    http: httpx.Client, stack: LocalStack, victim: dict[str, Any], name: str
) -> None:
    value = {"subject": victim["subject"], "server": "demo", "tool": "echo", "action": "tools/call"}[name]
    for pattern in (value[:-1] + "%", value[:-1] + "_", "%" + value[1:], "_" + value[1:], value + "%", value.upper()):
        resp = _decisions(
            http, stack, {name: pattern, "subject": victim["subject"]} if name != "subject" else {name: pattern}
        )
        assert resp.status_code == 200 and resp.json()["items"] == [], (name, pattern, resp.text)


@pytest.mark.parametrize("name", TYPED_FILTERS)
@pytest.mark.parametrize("payload", PAYLOADS, ids=[ascii(p) for p in PAYLOADS])
def test_a_typed_filter_refuses_metacharacters_naming_itself(
    http: httpx.Client, stack: LocalStack, victim: dict[str, Any], name: str, payload: str
) -> None:
    assert_bad_request_naming(_decisions(http, stack, {name: payload}), name)
    if name in ("since", "until", "allowed"):  # a valid value with the payload appended
        valid = "true" if name == "allowed" else "2020-01-01T00:00:00Z"
        assert_bad_request_naming(_decisions(http, stack, {name: valid + payload}), name)


@pytest.mark.parametrize("payload", PAYLOADS, ids=[ascii(p) for p in PAYLOADS])
def test_a_well_formed_cursor_carrying_metacharacters_is_a_plain_keyset_position(
    http: httpx.Client, stack: LocalStack, victim: dict[str, Any], payload: str
) -> None:
    """A cursor that decodes to ``["2000-01-01T00:00:00+00:00", <payload>]`` names a position
    before every event: 200 with no rows (or 400 ``cursor`` for NUL)."""
    raw = orjson.dumps(["2000-01-01T00:00:00+00:00", payload])
    cursor = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    resp = _decisions(http, stack, {"cursor": cursor})
    if _has_nul(payload):
        assert_bad_request_naming(resp, "cursor")
    else:
        assert resp.status_code == 200 and resp.json() == {"items": [], "next_cursor": None}, resp.text


def test_every_filter_at_once_with_metacharacters(
    http: httpx.Client, stack: LocalStack, victim: dict[str, Any]
) -> None:
    for payload in PAYLOADS:
        if _has_nul(payload):
            continue
        params = {name: payload for name in TEXT_FILTERS}
        resp = _decisions(http, stack, {**params, "allowed": "true", "since": "2000-01-01T00:00:00Z", "limit": "500"})
        assert resp.status_code == 200 and resp.json()["items"] == [], (payload, resp.text)


@pytest.mark.parametrize("payload", PAYLOADS, ids=[ascii(p) for p in PAYLOADS])
def test_path_parameters_refuse_or_miss_metacharacters(stack: LocalStack, victim: dict[str, Any], payload: str) -> None:
    segment = quote(payload, safe="")
    status, body = raw_request(stack.control_port, "GET", f"/v1/audit/decisions/{segment}", stack.admin_headers)
    # A control character anywhere in the path is refused before routing (400 naming it).
    control = _has_nul(payload) or any(ord(c) < 0x20 or ord(c) == 0x7F for c in payload)
    if control:
        assert_bad_request_naming((status, body), "control characters")
    else:
        assert status == 404 and orjson.loads(body)["error"] == "not_found", (status, body)
    for method, target, name in (
        ("GET", f"/v1/servers/{segment}", "name"),
        ("POST", f"/v1/servers/{segment}/approve", "name"),
        ("GET", f"/v1/policies/{segment}", "version"),
        ("POST", f"/v1/policies/{segment}/approve", "version"),
    ):
        answer = raw_request(stack.control_port, method, target, stack.admin_headers)
        assert_bad_request_naming(answer, "control characters" if control else name)


@pytest.mark.parametrize("payload", [p for p in PAYLOADS if p != "_"], ids=[ascii(p) for p in PAYLOADS if p != "_"])
def test_the_data_planes_feed_refuses_metacharacters_before_recording_anything(
    http: httpx.Client, stack: LocalStack, victim: dict[str, Any], payload: str
) -> None:
    """``GET /v1/dataplane/projection`` writes its query parameters into ``data_planes`` and
    ``opa_instances``: each is checked first (``_`` is a legitimate id character, so not sent)."""
    url = f"{stack.control_url}/v1/dataplane/projection"
    for params, name in (
        ({"dataplane_id": payload}, "dataplane_id"),
        ({"dataplane_id": "dp-local", "active_version": payload}, "active_version"),
        ({"dataplane_id": "dp-local", "error": payload}, "error"),
        ({"dataplane_id": "dp-local", "opa_instance": payload}, "opa_instance"),
    ):
        assert_bad_request_naming(http.get(url, params=params, headers=internal_headers(stack)), name)


def test_the_tables_and_their_rows_are_intact_afterwards(
    http: httpx.Client, stack: LocalStack, victim: dict[str, Any]
) -> None:
    """Runs last in this module: after every payload above, nothing was dropped or deleted."""
    before, after = victim["before"], asyncio.run(_snapshot(stack.database_url))
    assert after["tables"] == before["tables"]
    for table in TABLES:
        assert after["counts"][table] == before["counts"][table], table
    for table in AUDIT_TABLES:  # events of earlier modules may still arrive; none may go
        assert after["counts"][table] >= before["counts"][table], table
    again = admin_get(http, stack, "/v1/audit/decisions", {"subject": victim["subject"], "action": "tools/call"})
    assert again.json()["items"] == victim["items"]
