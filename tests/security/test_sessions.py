"""Handshake-era sessions (MCP 2025-11-25 ``initialize`` + ``Mcp-Session-Id``) belong to one subject.

A session id presented by another subject, or one nobody was given, is answered 404 exactly
like an unknown id, for every method and for ``DELETE``; the owner's session keeps working.
Source: MCP 2025-11-25 ``basic/transports`` (session management) and ``basic/security_best_practices``
("Session Hijacking").
"""

from __future__ import annotations

import secrets
from typing import Any

import httpx
import pytest

from gateway.devtools.stack import LocalStack
from tests.security.helpers import marker, upstream_saw

pytestmark = [pytest.mark.integration, pytest.mark.db]

HANDSHAKE = "2025-11-25"


def _auth(stack: LocalStack, sub: str, roles: list[str]) -> dict[str, str]:
    return {"authorization": f"Bearer {stack.idp.mint(sub, roles, stack.audience)}"}


def _rpc(method: str, params: dict[str, Any] | None = None, request_id: int = 1) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params or {}}


def _initialize(http: httpx.Client, stack: LocalStack, auth: dict[str, str]) -> str:
    params = {
        "protocolVersion": HANDSHAKE,
        "capabilities": {},
        "clientInfo": {"name": "security-suite", "version": "1"},
    }
    resp = http.post(f"{stack.data_url}/mcp", json=_rpc("initialize", params), headers=auth)
    assert resp.status_code == 200, resp.text
    return resp.headers["mcp-session-id"]


def _send(
    http: httpx.Client, stack: LocalStack, auth: dict[str, str], session_id: str, body: dict[str, Any]
) -> httpx.Response:
    headers = {**auth, "mcp-session-id": session_id, "mcp-protocol-version": HANDSHAKE}
    return http.post(f"{stack.data_url}/mcp", json=body, headers=headers)


def _assert_owner_session_works(http: httpx.Client, stack: LocalStack, auth: dict[str, str], session_id: str) -> None:
    listing = _send(http, stack, auth, session_id, _rpc("tools/list"))
    assert listing.status_code == 200, listing.text
    assert "demo__echo" in [t["name"] for t in listing.json()["result"]["tools"]]
    assert _send(http, stack, auth, session_id, _rpc("ping")).json()["result"] == {}


def _assert_session_not_found(resp: httpx.Response) -> None:
    assert resp.status_code == 404, resp.text
    assert resp.json()["error"]["message"] in ("Session not found", "Unknown session")


def test_another_subjects_session_id_is_404_for_every_method_and_the_owner_keeps_it(
    http: httpx.Client, stack: LocalStack
) -> None:
    alice, bob = _auth(stack, "alice", ["viewer"]), _auth(stack, "bob", ["admin"])
    session = _initialize(http, stack, alice)
    text = marker("hijacked-call")
    for body in (
        _rpc("tools/list"),
        _rpc("ping"),
        _rpc("tools/call", {"name": "demo__echo", "arguments": {"text": text}}),
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
    ):
        _assert_session_not_found(_send(http, stack, bob, session, body))
    assert not upstream_saw(http, stack, text)
    _assert_owner_session_works(http, stack, alice, session)


def test_deleting_another_subjects_session_is_404_and_leaves_it_alive(http: httpx.Client, stack: LocalStack) -> None:
    alice, bob = _auth(stack, "alice", ["viewer"]), _auth(stack, "bob", ["admin"])
    session = _initialize(http, stack, alice)
    stolen = http.delete(f"{stack.data_url}/mcp", headers={**bob, "mcp-session-id": session})
    _assert_session_not_found(stolen)
    _assert_owner_session_works(http, stack, alice, session)
    # The owner can end it; then it is gone for the owner too.
    assert http.delete(f"{stack.data_url}/mcp", headers={**alice, "mcp-session-id": session}).status_code == 204
    _assert_session_not_found(_send(http, stack, alice, session, _rpc("tools/list")))


def test_a_session_is_bound_to_the_subject_not_to_the_token(http: httpx.Client, stack: LocalStack) -> None:
    """Another token of the same subject (``iss`` + ``sub``) may use the session; another subject may not."""
    session = _initialize(http, stack, _auth(stack, "carol", ["viewer"]))
    _assert_owner_session_works(http, stack, _auth(stack, "carol", ["viewer"]), session)
    _assert_session_not_found(_send(http, stack, _auth(stack, "carol2", ["viewer"]), session, _rpc("tools/list")))


def test_guessed_session_ids_are_404(http: httpx.Client, stack: LocalStack) -> None:
    alice = _auth(stack, "alice", ["viewer"])
    real = _initialize(http, stack, alice)
    flipped = real[:-1] + ("A" if real[-1] != "A" else "B")
    guesses = [
        secrets.token_urlsafe(32),
        secrets.token_hex(32),
        "0",
        "1",
        "null",
        "undefined",
        "*",
        "../" + real,
        real[:-1],
        real + "x",
        flipped,
        real.upper() if real.upper() != real else real.lower(),
        f"{real},{real}",
        "%00",
        "' OR 1=1 --",
    ]
    text = marker("guessed-session-call")
    for guess in guesses:
        _assert_session_not_found(_send(http, stack, alice, guess, _rpc("tools/list")))
        _assert_session_not_found(
            _send(http, stack, alice, guess, _rpc("tools/call", {"name": "demo__echo", "arguments": {"text": text}}))
        )
        _assert_session_not_found(http.delete(f"{stack.data_url}/mcp", headers={**alice, "mcp-session-id": guess}))
    assert not upstream_saw(http, stack, text)
    _assert_owner_session_works(http, stack, alice, real)
