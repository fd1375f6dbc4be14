"""One running gateway shared by the whole security regression suite.

``gateway serve`` (both planes) + the OPA sidecar it supervises + the sample upstream
as ``demo`` + the sample policy, on a throwaway database of this package's own. The
gateway logs at DEBUG, so the canary checks cover every log level, and its internal
token is chosen here, so the tests can fetch the bundle exactly as OPA does.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.devtools.stack import LocalStack, sample_policy_modules
from tests.support import pg


@pytest.fixture(scope="package")
def stack(tmp_path_factory: pytest.TempPathFactory, pg_admin_url: str, opa_bin: Path) -> Iterator[LocalStack]:
    """The running stack (see the module docstring); ``extra_env`` holds its internal token."""
    run_dir = tmp_path_factory.mktemp("security-stack")
    with (
        pg.throwaway_database(pg_admin_url) as database_url,
        LocalStack.create(run_dir, database_url=database_url, opa_bin=str(opa_bin)) as s,
    ):
        s.extra_env["GATEWAY_LOG_LEVEL"] = "DEBUG"
        s.extra_env["GATEWAY_INTERNAL_TOKEN"] = secrets.token_urlsafe(24)
        s.start_upstream()
        s.start_gateway()
        s.register_and_approve_server("demo", s.upstream_url, "sample upstream")
        s.upload_and_approve_policy(sample_policy_modules())
        s.wait_projection_active()
        yield s


@pytest.fixture(scope="package")
def http() -> Iterator[httpx.Client]:
    """One keep-alive HTTP client for every request the suite sends (30 s timeout)."""
    with httpx.Client(timeout=30) as client:
        yield client
