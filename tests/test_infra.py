"""Smoke tests proving the shared test infrastructure works."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from tests.support.logs import files_containing
from tests.support.ports import free_port, port_open
from tests.support.procs import ManagedProcess, ProcessStartError, managed_process


def test_opa_bin_reports_pinned_version(opa_bin: Path) -> None:
    want = os.environ.get("OPA_VERSION", "v1.22.2").removeprefix("v")
    out = subprocess.run([str(opa_bin), "version"], capture_output=True, text=True, timeout=30, check=True)
    assert f"Version: {want}" in out.stdout.splitlines(), out.stdout


@pytest.mark.db
def test_database_url_is_fresh_and_writable(database_url: str, pg_admin_url: str) -> None:
    async def go() -> str:
        conn = await asyncpg.connect(database_url, timeout=10)
        try:
            assert await conn.fetchval("select count(*) from pg_tables where schemaname = 'public'") == 0
            await conn.execute("create table t (id int primary key, v text)")
            await conn.execute("insert into t values (1, 'x')")
            assert await conn.fetchval("select v from t where id = 1") == "x"
            return await conn.fetchval("select current_database()")
        finally:
            await conn.close()

    name = asyncio.run(go())
    assert name.startswith("gwtest_")
    assert database_url.rsplit("/", 1)[-1] == name


def test_managed_process_http_and_logs(spawn, log_dir: Path, run_dir: Path) -> None:
    port = free_port()
    assert not port_open("127.0.0.1", port)
    (run_dir / "index.html").write_text("ok")
    canary = "canary-7f3a9c"
    proc = spawn(
        "http",
        [
            sys.executable,
            "-u",
            "-c",
            f"import sys; print({canary!r}); sys.stdout.flush(); "
            f"import runpy; sys.argv=['http.server','--bind','127.0.0.1','{port}']; "
            "runpy.run_module('http.server', run_name='__main__')",
        ],
        cwd=run_dir,
    )
    proc.wait_port("127.0.0.1", port, timeout=15)
    assert proc.wait_http(f"http://127.0.0.1:{port}/index.html", timeout=15) == 200
    assert proc.stop() is not None
    assert not proc.is_running()
    assert files_containing(log_dir, canary) == [proc.log_path]


def test_managed_process_reports_early_exit(run_dir: Path) -> None:
    p = ManagedProcess("dies", [sys.executable, "-c", "print('boom-message'); raise SystemExit(3)"], log_dir=run_dir)
    with p, pytest.raises(ProcessStartError, match="boom-message") as ei:
        p.wait_http("http://127.0.0.1:1/", timeout=10)
    assert "rc=3" in str(ei.value)


def test_managed_process_stop_escalates_to_sigkill(run_dir: Path) -> None:
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('RE' + 'ADY', flush=True); time.sleep(60)"
    with managed_process("stubborn", [sys.executable, "-c", code], log_dir=run_dir) as p:
        p._poll("startup line", lambda: "READY" in p.read_log(), 10)
        rc = p.stop(grace=0.5)
    assert rc == -9
