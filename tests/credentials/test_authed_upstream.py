"""The credential-requiring upstream (tests/support/authed_upstream.py), driven with the
``mcp`` SDK client directly (no gateway): each ``--require`` mode refuses a request without
its credential and reports the identity it saw, as digests, never logging a value."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import httpx2
import mcp_types as types
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.sse import sse_client
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client

from tests.credentials.helpers import canary
from tests.support import authed_upstream
from tests.support.authed_upstream import RunningUpstream, digest
from tests.support.oauth_server import DEFAULT_CLIENTS, RunningOAuthServer
from tests.support.oauth_server import start_subprocess as start_as

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

SCRIPT = Path(authed_upstream.__file__).resolve()
BASIC = DEFAULT_CLIENTS[0]
AUDIENCE = "https://authed-upstream.test"
API_KEY = canary("api-key")
QUERY_KEY = canary("query-key")
ENV_KEY = canary("env-key")


def _sha(value: str) -> str:
    return "sha256:" + hashlib.sha256(value.encode()).hexdigest()


@pytest.fixture(scope="module")
def auth_server(log_dir: Path) -> Iterator[RunningOAuthServer]:
    with start_as(log_dir / "test_authed_upstream") as running:
        yield running


def _token(server: RunningOAuthServer, audience: str = AUDIENCE) -> str:
    data = {"grant_type": "client_credentials", "audience": audience, "scope": "tools"}
    answer = httpx.post(server.token_endpoint, data=data, auth=(BASIC.client_id, BASIC.client_secret), trust_env=False)
    token: str = answer.raise_for_status().json()["access_token"]
    return token


def _http(headers: dict[str, str] | None = None, params: dict[str, str] | None = None) -> httpx2.AsyncClient:
    return httpx2.AsyncClient(headers=headers, params=params, timeout=httpx2.Timeout(30), trust_env=False)


async def _whoami(client: Client) -> dict[str, Any]:
    with anyio.fail_after(30):
        result = await client.call_tool("whoami", {})
    assert not result.is_error
    content = result.content[0]
    assert isinstance(content, types.TextContent)
    identity: dict[str, Any] = json.loads(content.text)
    return identity


def _post_status(url: str, headers: dict[str, str] | None = None) -> int:
    body = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    hdrs = {"accept": "application/json, text/event-stream", **(headers or {})}
    return httpx.post(url, json=body, headers=hdrs, trust_env=False).status_code


async def test_bearer_jwt_verified_with_the_as_jwks(auth_server: RunningOAuthServer, log_dir: Path) -> None:
    jwks = f"{auth_server.url}/jwks.json"
    with authed_upstream.start_subprocess(
        log_dir / "test_authed_upstream", ["bearer-jwt"], jwks_url=jwks, audience=AUDIENCE, issuer=auth_server.url
    ) as upstream:
        assert _post_status(upstream.mcp_url) == 401
        assert _post_status(upstream.mcp_url, {"authorization": "Bearer not-a-jwt"}) == 401
        other_audience = _token(auth_server, "https://someone-else.test")
        assert _post_status(upstream.mcp_url, {"authorization": f"Bearer {other_audience}"}) == 401
        answer = httpx.post(upstream.mcp_url, json={}, trust_env=False)
        assert "resource_metadata=" in answer.headers["www-authenticate"]
        metadata = httpx.get(f"{upstream.url}/.well-known/oauth-protected-resource", trust_env=False).json()
        assert metadata["authorization_servers"] == [auth_server.url]

        token = _token(auth_server)
        async with Client(
            streamable_http_client(upstream.mcp_url, http_client=_http({"authorization": f"Bearer {token}"}))
        ) as c:
            identity = await _whoami(c)
        assert identity["sub"] == identity["client_id"] == BASIC.client_id
        assert identity["aud"] == AUDIENCE and identity["scope"] == "tools" and identity["act"] is None
        assert identity["authorization"] == digest(f"Bearer {token}")
        seen = upstream.seen()
        assert seen and all(s["client_id"] == BASIC.client_id for s in seen)
        assert upstream.rejected()["count"] == 4
        assert token not in upstream.proc.read_log()


async def test_header_requirement_with_value_check(log_dir: Path) -> None:
    with authed_upstream.start_subprocess(
        log_dir / "test_authed_upstream", [f"header:X-Api-Key={_sha(API_KEY)}"]
    ) as upstream:
        assert _post_status(upstream.mcp_url) == 401
        assert _post_status(upstream.mcp_url, {"x-api-key": "wrong"}) == 401
        async with Client(streamable_http_client(upstream.mcp_url, http_client=_http({"X-Api-Key": API_KEY}))) as c:
            identity = await _whoami(c)
        assert identity["header"] == digest(API_KEY) and identity["sub"] is None
        assert upstream.rejected()["reasons"] == ["missing header X-Api-Key", "wrong header X-Api-Key"]
        assert API_KEY not in upstream.proc.read_log()
        assert API_KEY not in json.dumps(upstream.seen())


async def test_query_requirement_over_legacy_sse(log_dir: Path) -> None:
    with authed_upstream.start_subprocess(
        log_dir / "test_authed_upstream", ["query:api_key"], transport="sse"
    ) as upstream:
        assert httpx.get(upstream.mcp_url, trust_env=False).status_code == 401

        class QueryKey(httpx2.Auth):
            """The key rides every request, the message endpoint's POSTs included."""

            def auth_flow(self, request: httpx2.Request) -> Iterator[httpx2.Request]:
                request.url = request.url.copy_add_param("api_key", QUERY_KEY)
                yield request

        def factory(headers: Any = None, timeout: Any = None, auth: Any = None) -> httpx2.AsyncClient:
            return httpx2.AsyncClient(headers=headers, timeout=timeout, auth=QueryKey(), trust_env=False)

        async with Client(sse_client(upstream.mcp_url, httpx_client_factory=factory), mode="legacy") as c:
            identity = await _whoami(c)
        assert identity["query"] == digest(QUERY_KEY)
        assert {s["path"] for s in upstream.seen()} >= {"/sse", "/messages/"}
        assert QUERY_KEY not in upstream.proc.read_log()  # no access log of query strings


async def test_env_requirement_over_stdio() -> None:
    params = StdioServerParameters(
        command=sys.executable, args=[str(SCRIPT), "--transport", "stdio", "--require", "env:UPSTREAM_KEY"],
        env={"UPSTREAM_KEY": ENV_KEY},
    )  # fmt: skip
    async with Client(stdio_client(params)) as c:
        identity = await _whoami(c)
    assert identity["env"] == digest(ENV_KEY)


def test_env_requirement_missing_refuses_to_start() -> None:
    argv = [sys.executable, str(SCRIPT), "--transport", "stdio", "--require", "env:UPSTREAM_KEY"]
    env = {"PATH": "/usr/bin:/bin"}
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == 2
    assert "required environment variable UPSTREAM_KEY is missing" in done.stderr
    wrong = subprocess.run(
        [*argv[:-1], f"env:UPSTREAM_KEY={_sha(ENV_KEY)}"],
        env={**env, "UPSTREAM_KEY": "not-it"}, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert wrong.returncode == 2 and "not-it" not in wrong.stderr


async def test_none_requires_nothing_and_reports_a_forwarded_authorization(log_dir: Path) -> None:
    with authed_upstream.start_subprocess(log_dir / "test_authed_upstream") as upstream:
        async with Client(streamable_http_client(upstream.mcp_url, http_client=_http())) as c:
            assert (await _whoami(c))["authorization"] is None
        async with Client(
            streamable_http_client(upstream.mcp_url, http_client=_http({"authorization": "Bearer x"}))
        ) as c:
            assert (await _whoami(c))["authorization"] == digest("Bearer x")
        assert upstream.rejected()["count"] == 0


def test_requirements_combine(log_dir: Path) -> None:
    running: RunningUpstream
    with authed_upstream.start_subprocess(log_dir / "test_authed_upstream", ["header:X-A", "query:k"]) as running:
        assert _post_status(running.mcp_url, {"x-a": "1"}) == 401
        assert _post_status(running.mcp_url + "?k=2") == 401
        assert _post_status(running.mcp_url + "?k=2", {"x-a": "1"}) != 401
