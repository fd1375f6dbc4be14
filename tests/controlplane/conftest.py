"""Fixtures for control-plane tests: a resolved Config against a throwaway database."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import Config
from tests.controlplane.helpers import make_config


@pytest.fixture
def cp_config(database_url: str, opa_bin: Path) -> Config:
    return make_config(database_url, opa_bin)
