"""deploy/scripts/go-tools.sh: the one checksum-database fallback the ensure-*.sh scripts share.

``go`` here is a stand-in script on PATH (the module proxy and checksum database are not
reachable on purpose); it records each invocation with its GOSUMDB and fails with the given
output unless GOSUMDB=off.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LIB = REPO / "deploy" / "scripts" / "go-tools.sh"

FAKE_GO = """#!/usr/bin/env bash
if [ "$1" = env ]; then echo sum.golang.org; exit 0; fi
echo "GOSUMDB=${GOSUMDB:-default} GOBIN=$GOBIN $*" >> "$CALLS"
if [ "${GOSUMDB:-}" = off ]; then exit 0; fi
printf '%s\\n' "$FAKE_OUTPUT"
exit 1
"""

UNREACHABLE = (
    'go: verifying module: github.com/x/y@v1.0.0: Get "https://sum.golang.org/lookup/github.com/x/y@v1.0.0": '
    "dial tcp: lookup sum.golang.org: no such host"
)
MISMATCH = (
    "verifying github.com/x/y@v1.0.0: checksum mismatch\n"
    "SECURITY ERROR\nThis download does NOT match the one reported by the checksum server (sum.golang.org).\n"
    "dial tcp: i/o timeout"
)
BUILD_FAILURE = "./main.go:3:2: undefined: nothing"


def _go_fetching(tmp_path: Path, output: str) -> tuple[int, list[str], str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "go").write_text(FAKE_GO)
    (bin_dir / "go").chmod(0o755)
    calls = tmp_path / "calls"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "CALLS": str(calls), "FAKE_OUTPUT": output}
    env.pop("GOSUMDB", None)
    # As the ensure-*.sh scripts run it: set -euo pipefail (go_fetching must return, not exit).
    script = (
        f'set -euo pipefail; log() {{ echo "log: $*" >&2; }}; TOOLS={tmp_path}/tools; . {LIB}; '
        "rc=0; go_fetching install example.com/x@v1 || rc=$?; echo returned >&2; exit $rc"
    )
    done = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=30)
    assert "returned" in done.stderr, done.stderr
    return done.returncode, calls.read_text().splitlines() if calls.exists() else [], done.stderr


def test_an_unreachable_checksum_database_is_retried_once_without_it(tmp_path: Path) -> None:
    rc, calls, stderr = _go_fetching(tmp_path, UNREACHABLE)
    assert rc == 0
    assert calls == [
        f"GOSUMDB=default GOBIN={tmp_path}/tools install example.com/x@v1",
        f"GOSUMDB=off GOBIN={tmp_path}/tools install example.com/x@v1",
    ]
    assert "checksum database sum.golang.org unreachable; retrying once with GOSUMDB=off" in stderr


@pytest.mark.parametrize("output", [MISMATCH, BUILD_FAILURE], ids=["checksum-mismatch", "build-failure"])
def test_other_failures_are_never_retried(tmp_path: Path, output: str) -> None:
    rc, calls, stderr = _go_fetching(tmp_path, output)
    assert rc != 0
    assert calls == [f"GOSUMDB=default GOBIN={tmp_path}/tools install example.com/x@v1"]
    assert "retrying" not in stderr


@pytest.mark.parametrize("script", ["ensure-opa.sh", "ensure-opa-embedded.sh", "ensure-deploy-tools.sh"])
def test_every_go_script_takes_go_from_the_shared_file(script: str) -> None:
    text = (REPO / "deploy" / "scripts" / script).read_text()
    assert '. "$ROOT/deploy/scripts/go-tools.sh"' in text
    assert "command -v go" not in text
