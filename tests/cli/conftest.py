"""Fixtures for the gatewayctl tests: a real control plane (uvicorn in a thread, real PostgreSQL,
real opa) that typer's CliRunner talks to over loopback HTTP, and a ``gatewayctl`` runner.

``cp`` is package-scoped: one control plane on one throwaway database for every tests/cli module
(tests create uniquely named records, so they never depend on each other's state).
"""

from __future__ import annotations

import secrets
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from click.testing import Result
from typer.testing import CliRunner

from gateway.cli.main import app
from gateway.config import Config
from tests.controlplane.helpers import SAMPLE_UPSTREAM, make_config, served_controlplane
from tests.support import pg
from tests.support.ports import free_port
from tests.support.procs import ManagedProcess

INTERNAL_TOKEN = "cli-internal-token"


@dataclass
class ControlPlane:
    """A running control plane: its URL, admin token (a canary: never printed) and internal token."""

    url: str
    token: str
    internal_token: str
    upstream_url: str

    def internal(self, method: str, path: str, json: Any = None) -> Any:
        """Call an internal-API route (data-plane side, e.g. audit ingest) with the internal token."""
        resp = httpx.request(
            method, self.url + path, json=json, headers={"Authorization": f"Bearer {self.internal_token}"}, timeout=30
        )
        resp.raise_for_status()
        return resp.json() if resp.content else None

    def admin(self, method: str, path: str, json: Any = None) -> Any:
        """Call the admin API directly (to set up or cross-check what a command did)."""
        resp = httpx.request(
            method, self.url + path, json=json, headers={"Authorization": f"Bearer {self.token}"}, timeout=60
        )
        resp.raise_for_status()
        return resp.json() if resp.content else None


class ThreadedControlPlane:
    """``served_controlplane`` (the real app under uvicorn) on its own event loop in a thread, so
    synchronous CliRunner calls can reach it over loopback."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.url: str | None = None
        self.error: BaseException | None = None
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cli-test-controlplane", daemon=True)

    def _run(self) -> None:
        async def main() -> None:
            async with served_controlplane(self.config) as url:
                self.url = url
                self._ready.set()
                await anyio.to_thread.run_sync(self._stop.wait)

        try:
            anyio.run(main)
        except BaseException as e:  # noqa: BLE001 - reported by __enter__/__exit__
            self.error = e
        finally:
            self._ready.set()

    def __enter__(self) -> str:
        self._thread.start()
        if not self._ready.wait(60) or self.url is None:
            self._stop.set()
            raise RuntimeError(f"control plane did not start: {self.error!r}")
        return self.url

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)
        if self._thread.is_alive():  # pragma: no cover
            raise RuntimeError("control plane thread did not stop")
        if self.error is not None:
            raise self.error


@pytest.fixture(scope="package")
def cp(tmp_path_factory: pytest.TempPathFactory, pg_admin_url: str, opa_bin: Path) -> Iterator[ControlPlane]:
    """The control plane every gatewayctl test talks to, plus the sample MCP upstream to approve."""
    token = "cli-admin-" + secrets.token_hex(12)
    port = free_port()
    upstream = ManagedProcess(
        "sample-upstream",
        [sys.executable, str(SAMPLE_UPSTREAM), "--port", str(port)],
        log_dir=tmp_path_factory.mktemp("cli-logs"),
    )
    with pg.throwaway_database(pg_admin_url) as database_url, upstream.start():
        upstream.wait_http(f"http://127.0.0.1:{port}/_health", timeout=20)
        config = make_config(
            database_url,
            opa_bin,
            control_plane={"admin_token": token, "internal_token": INTERNAL_TOKEN, "discovery_timeout": 10},
        )
        with ThreadedControlPlane(config) as url:
            yield ControlPlane(
                url=url, token=token, internal_token=INTERNAL_TOKEN, upstream_url=f"http://127.0.0.1:{port}/mcp"
            )


@dataclass
class Run:
    """One gatewayctl run: exit code, stdout, stderr."""

    code: int
    stdout: str
    stderr: str
    result: Result

    def __repr__(self) -> str:
        return f"Run(code={self.code}, stdout={self.stdout[-2000:]!r}, stderr={self.stderr[-2000:]!r})"


@pytest.fixture
def gatewayctl(cp: ControlPlane, tmp_path: Path) -> Iterator[Any]:
    """``gatewayctl(*args, env=..., input=...)`` -> :class:`Run`, against ``cp`` by default.

    The URL and token come from ``GATEWAYCTL_URL``/``GATEWAYCTL_TOKEN`` unless ``env`` overrides
    them (None removes a variable); the config file is a per-test path. Every run is checked
    never to print the admin token.
    """
    runner = CliRunner()
    config_path = tmp_path / "gatewayctl" / "config.toml"

    def run(*args: str, env: dict[str, str | None] | None = None, input: str | None = None) -> Run:
        full_env: dict[str, str | None] = {
            "GATEWAYCTL_URL": cp.url,
            "GATEWAYCTL_TOKEN": cp.token,
            "GATEWAYCTL_CONFIG": str(config_path),
            "XDG_CONFIG_HOME": str(tmp_path / "xdg"),
            "COLUMNS": "250",
        }
        full_env.update(env or {})
        result = runner.invoke(app, list(args), env=full_env, input=input, catch_exceptions=False)
        run_ = Run(result.exit_code, result.stdout, result.stderr, result)
        assert cp.token not in result.stdout + result.stderr, "gatewayctl printed the admin token"
        return run_

    run.config_path = config_path  # type: ignore[attr-defined]
    yield run
