"""The sample local stack the end-to-end modules share: one context manager, many fixtures."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from gateway.devtools.stack import LocalStack, sample_policy_modules
from tests.support import pg


@contextlib.contextmanager
def sample_stack(
    run_dir: Path,
    pg_admin_url: str,
    opa_bin: Path,
    *,
    env: Mapping[str, str] | None = None,
    policy_data: Any = None,
) -> Iterator[LocalStack]:
    """``gateway serve`` + OPA + the sample upstream as ``demo`` + the sample policy (with
    ``policy_data`` as its data), on a throwaway database of its own; ``env`` is added to the
    gateway's environment (e.g. ``GATEWAY_DECISION_ENGINE``)."""
    with (
        pg.throwaway_database(pg_admin_url) as database_url,
        LocalStack.create(run_dir, database_url=database_url, opa_bin=str(opa_bin)) as s,
    ):
        s.extra_env.update(env or {})
        s.start_upstream()
        s.start_gateway()
        s.register_and_approve_server("demo", s.upstream_url, "sample upstream")
        s.upload_and_approve_policy(sample_policy_modules(), data=policy_data)
        s.wait_projection_active()
        yield s
