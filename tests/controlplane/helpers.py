"""Test helpers: a control plane in-process (ASGI or on a real port) and a sample MCP upstream."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.config import Config
from gateway.controlplane import controlplane_resources, create_controlplane_app
from tests.support.ports import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
SAMPLE_UPSTREAM = REPO_ROOT / "deploy" / "demo" / "sample_upstream.py"
ADMIN_TOKEN = "admin-test-token"
INTERNAL_TOKEN = "internal-test-token"
OPA_TOKEN = "opa-test-token"


def make_config(database_url: str, opa_bin: Path, **overrides: Any) -> Config:
    data: dict[str, Any] = {
        "database_url": database_url,
        "plane": "control",
        "control_plane": {
            "admin_token": ADMIN_TOKEN,
            "internal_token": INTERNAL_TOKEN,
            "opa_token": OPA_TOKEN,
            "discovery_timeout": 10,
        },
        "opa": {"bin": str(opa_bin)},
    }
    data.update(overrides)
    return Config.from_mapping(data)


def with_state(app: ASGIApp, state: dict[str, object]) -> ASGIApp:
    """Do what a server does with lifespan state: give each request a shallow copy."""

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope["state"] = dict(state)
        await app(scope, receive, send)

    return wrapped


@contextlib.asynccontextmanager
async def asgi_controlplane(
    config: Config, *, opa: bool = False
) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient, dict]]:
    """Yield (admin client, internal client, state) talking to the app in-process; with
    ``opa`` the second client presents the OPA token (``/v1/opa/*``) instead."""
    app = create_controlplane_app(config)
    second = OPA_TOKEN if opa else INTERNAL_TOKEN
    async with controlplane_resources(config) as state:
        transport = httpx.ASGITransport(with_state(app, state))
        async with (
            httpx.AsyncClient(transport=transport, base_url="http://cp", headers=_bearer(ADMIN_TOKEN)) as admin,
            httpx.AsyncClient(transport=transport, base_url="http://cp", headers=_bearer(second)) as internal,
        ):
            yield admin, internal, state


@contextlib.asynccontextmanager
async def served_controlplane(config: Config) -> AsyncIterator[str]:
    """Run the control plane under uvicorn on a free loopback port; yield its base URL.

    The app is the real composition root (``gateway.app.create_app``) with its lifespan.
    """
    from gateway.app import create_app

    root = create_app(config)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(root, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve)
        with anyio.fail_after(15):
            while not server.started:
                await anyio.sleep(0.02)
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.should_exit = True


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def start_upstream(spawn: Callable[..., Any]) -> str:
    """Start deploy/demo/sample_upstream.py on a free port; return its MCP URL."""
    port = free_port()
    proc = spawn("sample-upstream", [sys.executable, str(SAMPLE_UPSTREAM), "--port", str(port)])
    proc.wait_http(f"http://127.0.0.1:{port}/_health", timeout=20)
    return f"http://127.0.0.1:{port}/mcp"


async def poll(fn: Callable[[], Any], *, timeout: float = 20, interval: float = 0.1) -> Any:
    """Await ``fn()`` until it returns a truthy value (bounded); return that value."""
    with anyio.fail_after(timeout):
        while True:
            value = await fn()
            if value:
                return value
            await anyio.sleep(interval)


MINIMAL_POLICY = {
    "gateway.rego": 'package gateway\n\ndecision := {"allow": input.tool == "echo", "reasons": [], "obligations": {}}\n'
}
