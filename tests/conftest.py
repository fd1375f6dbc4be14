"""Shared test infrastructure (app-specific fixtures are added by the lead).

Fixtures:
  anyio_backend     "asyncio" (session) - for @pytest.mark.anyio tests
  opa_bin           Path to the pinned OPA binary (fails, never skips, if absent)
  embedded_opa_lib  Path to the embedded OPA engine (`make opa-embedded`; fails, never skips, if absent)
  pg_admin_url      URL of a role allowed to CREATE DATABASE ($DATABASE_URL or
                    deploy/scripts/ensure-postgres.sh)
  database_url      fresh throwaway database gwtest_<hex> per test, dropped after
  session_database_url  same, shared by the whole session
  log_dir           session-wide directory holding every managed process log
  run_dir           per-test temp directory (tmp_path)
  spawn             start ManagedProcess(es) logging into log_dir; stopped at teardown
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import pytest

import gateway.devtools.stack as stack_module
from tests.support import pg
from tests.support.procs import ManagedProcess

REPO_ROOT = Path(__file__).resolve().parents[1]


def _worker_ports() -> None:
    """Under ``pytest -n N`` (pytest-xdist) give each worker its own slice of the ports
    ``free_port`` draws from, so two workers never pick the same port at the same moment."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    if not worker.startswith("gw") or count < 2:
        return
    full = stack_module._LISTEN_PORTS
    size = len(full) // count
    start = full.start + int(worker[2:]) * size
    stack_module._LISTEN_PORTS = range(start, start + size)


_worker_ports()


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


# ---------------------------------------------------------------- OPA
def _find_opa() -> Path | None:
    env = os.environ.get("OPA_BIN", "").strip()
    if env:
        return Path(env)
    local = REPO_ROOT / ".tools" / "bin" / "opa"
    if local.exists():
        return local
    found = shutil.which("opa")
    return Path(found) if found else None


@pytest.fixture(scope="session")
def opa_bin() -> Path:
    path = _find_opa()
    if path is None or not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(
            f"OPA binary not found (OPA_BIN={os.environ.get('OPA_BIN')!r}, "
            f"{REPO_ROOT / '.tools/bin/opa'}, PATH). Run `make tools` (or `make test`).",
            pytrace=False,
        )
    return path


@pytest.fixture(scope="session")
def embedded_opa_lib() -> Path:
    from gateway.config import EMBEDDED_OPA_LIB

    path = Path(os.environ.get("GATEWAY_OPA_EMBEDDED_LIB", "").strip() or EMBEDDED_OPA_LIB)
    if not path.is_file():
        pytest.fail(f"embedded OPA engine not found at {path}. Run `make tools` (or `make test`).", pytrace=False)
    return path


# ---------------------------------------------------------------- PostgreSQL
@pytest.fixture(scope="session")
def pg_admin_url() -> str:
    try:
        return pg.admin_url_from_env_or_script()
    except Exception as e:  # noqa: BLE001
        pytest.fail(f"no PostgreSQL available: {e}\nRun `make postgres` or set DATABASE_URL.", pytrace=False)


@pytest.fixture
def database_url(pg_admin_url: str) -> Iterator[str]:
    with pg.throwaway_database(pg_admin_url) as url:
        yield url


@pytest.fixture(scope="session")
def session_database_url(pg_admin_url: str) -> Iterator[str]:
    with pg.throwaway_database(pg_admin_url) as url:
        yield url


# ---------------------------------------------------------------- dirs & processes
@pytest.fixture(scope="session")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every ManagedProcess started via `spawn` logs here (grep it for canaries)."""
    return tmp_path_factory.mktemp("logs")


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return tmp_path


SpawnFn = Callable[..., ManagedProcess]


@pytest.fixture
def spawn(log_dir: Path, request: pytest.FixtureRequest) -> Iterator[SpawnFn]:
    """spawn(name, argv, env=None, cwd=None) -> started ManagedProcess.

    Logs go to ``log_dir/<test name>/<name>.log``; all spawned processes are
    stopped (SIGTERM, then SIGKILL after 5 s) in reverse order at teardown.
    """
    test_dir = log_dir / "".join(c if c.isalnum() or c in "-_." else "_" for c in request.node.name)
    started: list[ManagedProcess] = []

    def _spawn(
        name: str,
        argv: Sequence[str | os.PathLike[str]],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        inherit_env: bool = True,
    ) -> ManagedProcess:
        proc = ManagedProcess(name, argv, log_dir=test_dir, env=env, cwd=cwd, inherit_env=inherit_env)
        started.append(proc)
        return proc.start()

    yield _spawn
    errors: list[BaseException] = []
    for proc in reversed(started):
        try:
            proc.stop()
        except BaseException as e:  # noqa: BLE001 - stop the rest anyway
            errors.append(e)
    if errors:
        raise errors[0]
