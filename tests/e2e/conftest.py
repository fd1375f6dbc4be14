"""The module-scoped local stack the end-to-end modules share the shape of."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.devtools.stack import LocalStack, sample_policy_modules
from tests.support import pg


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, pg_admin_url: str, opa_bin: Path) -> Iterator[LocalStack]:
    """``gateway serve`` + OPA + the sample upstream as ``demo`` + the sample policy, on a
    database of this module's own (so modules never see each other's servers)."""
    run_dir = tmp_path_factory.mktemp("stack")
    with (
        pg.throwaway_database(pg_admin_url) as database_url,
        LocalStack.create(run_dir, database_url=database_url, opa_bin=str(opa_bin)) as s,
    ):
        s.start_upstream()
        s.start_gateway()
        s.register_and_approve_server("demo", s.upstream_url, "sample upstream")
        s.upload_and_approve_policy(sample_policy_modules())
        s.wait_projection_active()
        yield s
