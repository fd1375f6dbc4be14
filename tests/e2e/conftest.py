"""The module-scoped local stack the end-to-end modules share the shape of."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.devtools.stack import LocalStack
from tests.support.stacks import sample_stack


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, pg_admin_url: str, opa_bin: Path) -> Iterator[LocalStack]:
    """``gateway serve`` + OPA + the sample upstream as ``demo`` + the sample policy, on a
    database of this module's own (so modules never see each other's servers)."""
    with sample_stack(tmp_path_factory.mktemp("stack"), pg_admin_url, opa_bin) as s:
        yield s
