"""Canaries: planted secrets never reach the logs, the audit store, the bundle or a database dump.

Unique strings are planted in

* tool-call arguments (allowed, denied and schema-rejected calls, both protocol eras), in
  ``_meta`` and in a ``params`` key the gateway refuses: these may appear **nowhere**;
* JWT claims the gateway does not use (a custom ``note`` and ``email``): nowhere either;
* the userinfo and query of a second upstream's URL
  (``http://user:<pass>@127.0.0.1:<port>/mcp?apikey=<key>``, the sample upstream again):
  never in a log, an audit table or a bundle. The URL is the server's configuration,
  so it is stored in exactly two columns: the registry's ``mcp_servers.url`` and, inside
  ``projections.routing_table``, ``servers[].url`` (the data plane reads the URL from the
  routing table it polls). The ``pg_dump`` check asserts that those are the only places;
* the same, for a third server whose URL points at a closed port, so that its approval
  fails (502) and the failure, exception text included, is logged: its URL is stored in
  ``mcp_servers.url`` only (it never reaches a projection).

Searched: every file the gateway and its OPA sidecar write below the stack's run directory
(the sample upstream's own log excepted: it is the party that legitimately receives the
arguments), both audit tables (``audit_decisions``, and ``opa_decision_logs`` as OPA
uploaded them), the bundle OPA downloads plus every stored bundle, and a full ``pg_dump``.
The calls are first shown to have happened (their audit rows, and OPA's log of each
decision, exist), so a check cannot pass because nothing was sent.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import shutil
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import asyncpg
import httpx
import orjson
import pytest

from gateway.controlplane.bundle import read_bundle
from gateway.devtools.stack import LocalStack, free_port
from tests.security.helpers import (
    ENVELOPE,
    call_headers,
    opa_headers,
    recorded,
    written_by_gateway,
)

pytestmark = [pytest.mark.integration, pytest.mark.db]

VAULT = "vault"
"""The second server, registered with credentials in its URL."""
DOWN = "vault-down"
"""The third server: credentials in its URL, nothing listening there."""
URL_COLUMNS = {("public.mcp_servers", "url"), ("public.projections", "routing_table")}
"""Where the vault's URL canaries may be stored (see the module docstring)."""


def _pg_dump() -> str:
    found = shutil.which("pg_dump") or "/usr/lib/postgresql/15/bin/pg_dump"
    if not os.access(found, os.X_OK):
        pytest.fail("pg_dump not found (install postgresql-client)", pytrace=False)
    return found


async def _fetch(database_url: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(database_url)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


def _rows(stack: LocalStack, sql: str, *args: Any) -> list[asyncpg.Record]:
    return asyncio.run(_fetch(stack.database_url, sql, *args))


def _call(
    http: httpx.Client, stack: LocalStack, token: str, tool: str, arguments: dict[str, Any], **extra: Any
) -> dict[str, Any]:
    """A 2026-07-28 ``tools/call``; ``extra`` adds ``params`` keys (``_meta`` is merged with the envelope)."""
    params = {"name": tool, "arguments": arguments, **extra, "_meta": {**ENVELOPE, **extra.get("_meta", {})}}
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params}
    resp = http.post(f"{stack.data_url}/mcp", json=body, headers=call_headers(tool, token))
    assert resp.status_code == 200, resp.text
    return resp.json()  # type: ignore[no-any-return]


def _legacy_call(http: httpx.Client, stack: LocalStack, token: str, tool: str, arguments: dict[str, Any]) -> Any:
    """``initialize`` (2025-11-25), then one ``tools/call`` in that session."""
    auth = {"authorization": f"Bearer {token}"}
    init = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "canary", "version": "1"},
        },
    }
    session = http.post(f"{stack.data_url}/mcp", json=init, headers=auth).headers["mcp-session-id"]
    headers = {**auth, "mcp-session-id": session, "mcp-protocol-version": "2025-11-25"}
    listing = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
    assert http.post(f"{stack.data_url}/mcp", json=listing, headers=headers).status_code == 200
    body = {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": tool, "arguments": arguments}}
    return http.post(f"{stack.data_url}/mcp", json=body, headers=headers).json()


def _wait_all_audited(http: httpx.Client, stack: LocalStack, subject: str, count: int) -> list[dict[str, Any]]:
    """Wait (bounded) until ``subject`` has ``count`` audit events and OPA's log of every decided one."""
    deadline = time.monotonic() + 20
    items: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        resp = http.get(
            f"{stack.control_url}/v1/audit/decisions", params={"subject": subject}, headers=stack.admin_headers
        )
        items = resp.json()["items"]
        if len(items) >= count and all(i["opa_logged"] for i in items if i["policy_revision"]):
            assert len(items) == count, items
            return items
        time.sleep(0.1)
    raise AssertionError(f"the canary calls were not all audited after 20 s: {items}")


@pytest.fixture(scope="module")
def planted(http: httpx.Client, stack: LocalStack) -> dict[str, Any]:
    """Plant every canary, make the calls, and wait until all of them are audited."""
    tag = uuid.uuid4().hex
    canary = {
        "argument": f"ARGCANARY{tag}",
        "argument_denied": f"DENIEDARGCANARY{tag}",
        "argument_invalid": f"INVALIDARGCANARY{tag}",
        "argument_legacy": f"LEGACYARGCANARY{tag}",
        "meta": f"METACANARY{tag}",
        "extra_param": f"EXTRAPARAMCANARY{tag}",
        "claim": f"CLAIMCANARY{tag}",
        "email": f"EMAILCANARY{tag}",
    }
    url_canary = {"url_password": f"URLPASSCANARY{tag}", "url_query": f"URLKEYCANARY{tag}"}
    url = (
        f"http://user:{url_canary['url_password']}@127.0.0.1:{stack.upstream_port}/mcp?apikey={url_canary['url_query']}"
    )
    stack.register_and_approve_server(VAULT, url, "the sample upstream, behind credentials")
    stack.wait_projection_active()
    down_canary = {"down_password": f"DOWNPASSCANARY{tag}", "down_query": f"DOWNKEYCANARY{tag}"}
    down_url = f"http://user:{down_canary['down_password']}@127.0.0.1:{free_port()}/mcp?key={down_canary['down_query']}"
    body = {"name": DOWN, "transport": "streamable_http", "url": down_url}
    assert http.post(f"{stack.control_url}/v1/servers", json=body, headers=stack.admin_headers).status_code == 201
    failed_approval = http.post(
        f"{stack.control_url}/v1/servers/{DOWN}/approve", json={"comment": "reviewed"}, headers=stack.admin_headers
    )

    subject = f"canary{tag[:12]}"
    claims = {"note": canary["claim"], "email": f"{canary['email']}@example.com"}
    token = stack.idp.mint(subject, ["viewer"], stack.audience, extra_claims=claims)
    replies = {
        "allowed_via_vault": _call(http, stack, token, f"{VAULT}__echo", {"text": canary["argument"]}),
        "allowed_with_meta": _call(
            http, stack, token, "demo__get_weather", {"city": canary["argument"]}, _meta={"x-canary": canary["meta"]}
        ),
        "denied": _call(
            http, stack, token, "demo__create_ticket", {"title": canary["argument_denied"], "priority": "low"}
        ),
        "invalid": _call(
            http, stack, token, "demo__create_ticket", {"title": "t", "priority": canary["argument_invalid"]}
        ),
        "extra_param": _call(http, stack, token, "demo__echo", {"text": "x"}, task={"note": canary["extra_param"]}),
        "legacy_via_vault": _legacy_call(http, stack, token, f"{VAULT}__echo", {"text": canary["argument_legacy"]}),
    }
    events = _wait_all_audited(http, stack, subject, count=len(replies) + 1)  # + the legacy tools/list
    return {
        "canary": canary,
        "url_canary": url_canary,
        "down_canary": down_canary,
        "failed_approval": failed_approval,
        "token": token,
        "subject": subject,
        "replies": replies,
        "events": events,
        "url": url,
    }


def _all_secrets(planted: dict[str, Any]) -> dict[str, str]:
    return {**planted["canary"], **planted["url_canary"], **planted["down_canary"], "token": planted["token"]}


def test_the_canary_calls_went_through_and_were_audited(
    http: httpx.Client, stack: LocalStack, planted: dict[str, Any]
) -> None:
    replies, canary = planted["replies"], planted["canary"]
    failed = planted["failed_approval"]
    assert failed.status_code == 502 and failed.json()["error"] == "upstream_unavailable", failed.text
    assert {n for n, s in _all_secrets(planted).items() if s in failed.text} == set()
    assert replies["allowed_via_vault"]["result"]["isError"] is False
    assert replies["allowed_with_meta"]["result"]["isError"] is False
    assert replies["denied"]["error"]["data"]["category"] == "policy_denied"
    assert replies["invalid"]["result"]["isError"] is True
    assert replies["extra_param"]["error"]["data"]["category"] == "unexpected_param"
    assert replies["legacy_via_vault"]["result"]["isError"] is False
    # The upstream got the allowed arguments through the vault URL (so its credentials were used).
    arguments = [c["arguments"] for c in recorded(http, stack)["calls"]]
    assert {"text": canary["argument"]} in arguments and {"text": canary["argument_legacy"]} in arguments
    summary = Counter((e["action"], e["server"], e["tool"], e["status"]) for e in planted["events"])
    assert summary == Counter(
        [
            ("tools/call", "demo", "create_ticket", "denied"),
            ("tools/call", "demo", "create_ticket", "rejected"),
            ("tools/call", None, "demo__echo", "rejected"),  # refused before the tool is resolved
            ("tools/call", "demo", "get_weather", "ok"),
            ("tools/call", VAULT, "echo", "ok"),
            ("tools/call", VAULT, "echo", "ok"),
            ("tools/list", None, None, "ok"),
        ]
    )
    decided = [e["decision_id"] for e in planted["events"] if e["policy_revision"]]
    assert len(decided) == 5  # three allowed calls, one denied, one list: OPA decided each ...
    logged = _rows(stack, "SELECT count(*) AS n FROM opa_decision_logs WHERE decision_id = ANY($1::text[])", decided)
    assert logged[0]["n"] == 5  # ... and uploaded its decision log


def test_no_canary_in_any_file_the_gateway_or_its_opa_writes(stack: LocalStack, planted: dict[str, Any]) -> None:
    files = written_by_gateway(stack)
    leaks = {
        (name, str(path.relative_to(stack.run_dir)))
        for path in files
        for name, secret in _all_secrets(planted).items()
        if secret.encode() in path.read_bytes()
    }
    assert leaks == set()
    # Not vacuous: OPA's log is among the files, and the vault's URL was logged (by the SDK's
    # HTTP client during approval), redacted.
    assert stack.run_dir / "opa-dp-local" / "opa.log" in files
    log = (stack.run_dir / "gateway.log").read_text()
    assert f"http://***@127.0.0.1:{stack.upstream_port}/mcp?apikey=***" in log
    assert re.search(r"upstream http://\*\*\*@127\.0\.0\.1:\d+/mcp\?key=\*\*\* unreachable during discovery", log)


def test_no_canary_in_either_audit_table_or_the_audit_api(
    http: httpx.Client, stack: LocalStack, planted: dict[str, Any]
) -> None:
    for table in ("audit_decisions", "opa_decision_logs"):
        rows = _rows(stack, f"SELECT t::text AS row FROM {table} t")
        assert any(planted["subject"] in r["row"] for r in rows), f"no row of the canary calls in {table}"
        leaks = {name for name, secret in _all_secrets(planted).items() for r in rows if secret in r["row"]}
        assert leaks == set(), table
    views = [
        http.get(
            f"{stack.control_url}/v1/audit/decisions",
            params={"subject": planted["subject"]},
            headers=stack.admin_headers,
        ),
        http.get(f"{stack.control_url}/v1/projection", headers=stack.admin_headers),
    ]
    views += [
        http.get(f"{stack.control_url}/v1/audit/decisions/{e['decision_id']}", headers=stack.admin_headers)
        for e in planted["events"]
    ]
    for view in views:
        assert view.status_code == 200
        assert {n for n, s in _all_secrets(planted).items() if s in view.text} == set(), view.request.url


def test_no_canary_in_the_bundle_opa_downloads_nor_in_any_stored_bundle(
    http: httpx.Client, stack: LocalStack, planted: dict[str, Any]
) -> None:
    served = http.get(f"{stack.control_url}/v1/opa/bundles/gateway", headers=opa_headers(stack))
    assert served.status_code == 200
    bundles = [served.content] + [r["bundle"] for r in _rows(stack, "SELECT bundle FROM projections ORDER BY version")]
    registry = orjson.loads(read_bundle(served.content)["data.json"])["gateway_runtime"]["registry"]["servers"]
    assert VAULT in registry, "the vault server is not in the bundle: the check below would prove nothing"
    for blob in bundles:
        files = read_bundle(blob)
        leaks = {(n, f) for f, raw in files.items() for n, s in _all_secrets(planted).items() if s.encode() in raw}
        assert leaks == set()


def _copy_blocks(dump: str) -> Iterator[tuple[str, str, str]]:
    """``(table, column, value)`` for every cell of every ``COPY ... FROM stdin`` block, and
    ``("<ddl>", "", line)`` for every other line."""
    header = re.compile(r"^COPY (?P<table>\S+) \((?P<columns>[^)]*)\) FROM stdin;$")
    table = ""
    columns: list[str] = []
    for line in dump.splitlines():
        if table:
            if line == "\\.":
                table = ""
                continue
            cells = line.split("\t")
            assert len(cells) == len(columns), (table, line[:200])
            yield from ((table, column, cell) for column, cell in zip(columns, cells, strict=True))
        elif m := header.match(line):
            table, columns = m["table"], [c.strip().strip('"') for c in m["columns"].split(",")]
        else:
            yield "<ddl>", "", line


def test_a_pg_dump_holds_the_url_credentials_only_in_the_servers_url_and_nothing_else_at_all(
    stack: LocalStack, planted: dict[str, Any]
) -> None:
    dump = subprocess.run(
        [_pg_dump(), "--no-owner", "--no-privileges", f"--dbname={stack.database_url}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    cells = list(_copy_blocks(dump))
    assert any(t.startswith("public.audit_decisions_p") and planted["subject"] in v for t, _, v in cells), (
        "no audit rows dumped"
    )
    found: dict[str, set[tuple[str, str]]] = {}
    for name, secret in _all_secrets(planted).items():
        found[name] = {(t, c) for t, c, v in cells if secret in v}
    for name in planted["canary"]:
        assert found[name] == set(), name
    assert found["token"] == set()
    for name in planted["url_canary"]:
        assert found[name] == URL_COLUMNS, name
    for name in planted["down_canary"]:
        assert found[name] == {("public.mcp_servers", "url")}, name
    # Inside the routing tables, the URL canaries are in servers[].url and nowhere else.
    for row in _rows(stack, "SELECT routing_table::text AS doc FROM projections"):
        doc = orjson.loads(row["doc"])
        urls = [server.pop("url") for server in doc["servers"]]
        rest = orjson.dumps(doc).decode()
        assert {n for n, s in planted["url_canary"].items() if s in rest} == set()
        if any(planted["url_canary"]["url_password"] in u for u in urls):
            assert planted["url"] in urls
    (registered,) = _rows(stack, "SELECT url FROM mcp_servers WHERE name = $1", VAULT)
    assert registered["url"] == planted["url"]


def test_the_upstream_got_the_urls_credentials_as_basic_auth(
    http: httpx.Client, stack: LocalStack, planted: dict[str, Any]
) -> None:
    """The userinfo is configuration the gateway uses (RFC 7617 Basic), which is why it must be stored."""
    expected = base64.b64encode(f"user:{planted['url_canary']['url_password']}".encode()).decode()
    assert recorded(http, stack)["last_authorization"] == f"Basic {expected}"
