"""DNS rebinding: the data plane answers only its own ``Host`` names and ``Origin``s, on every route.

A page on ``http://evil.example`` whose name was re-pointed at 127.0.0.1, or a page served
from another local port, must not be able to drive the gateway with the victim's browser:
a foreign ``Origin`` gets 403, a foreign ``Host`` gets 421, before authentication, routing or
any upstream call. Source: MCP 2025-11-25 and 2026-07-28 ``basic/transports`` ("Security
Warning": servers MUST validate ``Origin``), RFC 9110 §15.5.20 (421 Misdirected Request).
"""

from __future__ import annotations

import httpx
import pytest

from gateway.devtools.stack import LocalStack, free_port
from tests.security.helpers import call_body, call_headers, marker, upstream_saw

pytestmark = [pytest.mark.integration, pytest.mark.db]

ROUTES = [
    pytest.param("POST", "/mcp", id="POST-/mcp"),
    pytest.param("POST", "/mcp/demo", id="POST-/mcp/demo"),
    pytest.param("GET", "/mcp", id="GET-/mcp"),
    pytest.param("DELETE", "/mcp", id="DELETE-/mcp"),
    pytest.param("GET", "/.well-known/oauth-protected-resource/mcp", id="GET-prm"),
    pytest.param("GET", "/healthz", id="GET-/healthz"),
    pytest.param("GET", "/readyz", id="GET-/readyz"),
    pytest.param("GET", "/no-such-route", id="GET-unknown-route"),
]


def _request(
    http: httpx.Client,
    stack: LocalStack,
    method: str,
    path: str,
    headers: dict[str, str] | list[tuple[str, str]],
    text: str,
) -> httpx.Response:
    """``method path`` with a valid token and, for POST, a ``tools/call`` that would reach the upstream."""
    tool = "echo" if path == "/mcp/demo" else "demo__echo"
    base = call_headers(tool, stack.idp.mint("alice", ["viewer"], stack.audience))
    merged = list(base.items()) + (list(headers.items()) if isinstance(headers, dict) else headers)
    body = call_body(tool, {"text": text}) if method == "POST" else None
    return http.request(method, f"{stack.data_url}{path}", json=body, headers=merged)


def _assert_refused(resp: httpx.Response, status: int, category: str) -> None:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == "application/json"
    error = resp.json()["error"]
    assert error["code"] == -32600 and error["data"] == {"category": category}


def _bad_origins(stack: LocalStack) -> list[str]:
    other = free_port()
    return [
        "http://evil.example",
        f"http://evil.example:{stack.data_port}",
        f"http://127.0.0.1:{other}",
        f"http://127.0.0.1:{stack.control_port}",
        f"http://localhost:{other}",
        f"https://127.0.0.1:{stack.data_port}",
        "http://127.0.0.1",
        "null",
    ]


def _bad_hosts(stack: LocalStack) -> list[str]:
    return [
        "evil.example",
        f"evil.example:{stack.data_port}",
        f"127.0.0.1:{free_port()}",
        f"localhost:{stack.control_port}",
        "127.0.0.1",
        f"127.0.0.1.evil.example:{stack.data_port}",
    ]


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_a_foreign_origin_is_403_on_every_route(http: httpx.Client, stack: LocalStack, method: str, path: str) -> None:
    text = marker("foreign-origin")
    for origin in _bad_origins(stack):
        _assert_refused(_request(http, stack, method, path, {"origin": origin}, text), 403, "origin_not_allowed")
    # A second Origin header cannot launder a foreign one, whichever comes first.
    good = [("origin", f"http://127.0.0.1:{stack.data_port}")]
    for twice in (good + [("origin", "http://evil.example")], [("origin", "http://evil.example")] + good):
        _assert_refused(_request(http, stack, method, path, twice, text), 403, "origin_not_allowed")
    assert not upstream_saw(http, stack, text)


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_a_foreign_host_is_421_on_every_route(http: httpx.Client, stack: LocalStack, method: str, path: str) -> None:
    text = marker("foreign-host")
    for host in _bad_hosts(stack):
        _assert_refused(_request(http, stack, method, path, {"host": host}, text), 421, "host_not_allowed")
        # Even together with an allowed Origin.
        headers = {"host": host, "origin": f"http://127.0.0.1:{stack.data_port}"}
        _assert_refused(_request(http, stack, method, path, headers, text), 421, "host_not_allowed")
    assert not upstream_saw(http, stack, text)


def test_the_data_planes_own_origins_and_hosts_are_served(http: httpx.Client, stack: LocalStack) -> None:
    """The control: the same call with the data plane's own names goes through."""
    for name in ("127.0.0.1", "localhost"):
        text = marker("own-origin")
        headers = {"origin": f"http://{name}:{stack.data_port}", "host": f"{name}:{stack.data_port}"}
        resp = _request(http, stack, "POST", "/mcp", headers, text)
        assert resp.status_code == 200 and resp.json()["result"]["isError"] is False, resp.text
        assert upstream_saw(http, stack, text)
