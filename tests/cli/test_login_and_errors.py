"""gatewayctl settings (flag > environment > config file), login, and the exit codes of failures."""

from __future__ import annotations

import stat
import tomllib
from pathlib import Path

import pytest

from gateway.cli.errors import ExitCode
from tests.cli.conftest import ControlPlane
from tests.support.ports import free_port

pytestmark = [pytest.mark.db, pytest.mark.integration]

NO_ENV: dict[str, str | None] = {"GATEWAYCTL_URL": None, "GATEWAYCTL_TOKEN": None}


def test_login_checks_the_token_and_saves_url_and_token_0600(gatewayctl, cp: ControlPlane, tmp_path: Path) -> None:
    config = tmp_path / "fresh" / "gatewayctl.toml"
    run = gatewayctl("--config", str(config), "login", "--url", cp.url + "/", "--token", cp.token, env=NO_ENV)
    assert run.code == 0, run
    assert "(tenant tenant_local, environment prod)" in run.stderr and str(config) in run.stderr
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert stat.S_IMODE(config.parent.stat().st_mode) == 0o700
    assert tomllib.loads(config.read_text()) == {"url": cp.url, "token": cp.token}

    # later runs take both from the file
    listed = gatewayctl("--config", str(config), "servers", "list", "-o", "json", env=NO_ENV)
    assert listed.code == 0, listed


def test_login_prompts_for_the_token_hidden(gatewayctl, cp: ControlPlane) -> None:
    run = gatewayctl("login", "--url", cp.url, env=NO_ENV, input=cp.token + "\n")
    assert run.code == 0, run
    assert tomllib.loads(gatewayctl.config_path.read_text())["token"] == cp.token


def test_login_with_a_wrong_token_saves_nothing_and_exits_1(gatewayctl, cp: ControlPlane) -> None:
    run = gatewayctl("login", "--url", cp.url, "--token", "wrong-token", env=NO_ENV)
    assert run.code == ExitCode.API, run
    assert run.stderr.startswith("error: 401 admin_unauthenticated"), run
    assert len(run.stderr.strip().splitlines()) == 1
    assert not gatewayctl.config_path.exists()


def test_flags_beat_environment_beat_config_file(gatewayctl, cp: ControlPlane) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    path = gatewayctl.config_path
    path.parent.mkdir(parents=True)
    path.write_text(f'url = "{dead}"\ntoken = "file-token"\n')
    # the file alone: its dead URL -> connection error (exit 3)
    assert gatewayctl("servers", "list", env=NO_ENV).code == ExitCode.CONNECTION
    # the environment beats the file
    assert gatewayctl("servers", "list", env={"GATEWAYCTL_URL": cp.url}).code == 0
    # a flag beats the environment
    run = gatewayctl("--url", dead, "servers", "list")
    assert run.code == ExitCode.CONNECTION, run
    assert run.stderr.startswith(f"error: cannot reach the control plane at {dead}")
    # token: the file's wrong token is used when nothing else gives one; the env one beats it
    assert gatewayctl("servers", "list", env={"GATEWAYCTL_URL": cp.url, "GATEWAYCTL_TOKEN": None}).code == 1
    assert gatewayctl("--token", "flag-token", "servers", "list").code == 1
    assert gatewayctl("servers", "list").code == 0


def test_missing_settings_and_bad_input_are_usage_errors(gatewayctl, tmp_path: Path) -> None:
    run = gatewayctl("servers", "list", env=NO_ENV)
    assert run.code == ExitCode.USAGE, run
    assert run.stderr.startswith("error: no control plane URL: pass --url, set GATEWAYCTL_URL")
    run = gatewayctl("servers", "list", env={"GATEWAYCTL_TOKEN": None})
    assert run.code == ExitCode.USAGE and "no admin token" in run.stderr, run
    bad = tmp_path / "bad.toml"
    bad.write_text("url = [")
    run = gatewayctl("--config", str(bad), "servers", "list", env=NO_ENV)
    assert run.code == ExitCode.USAGE and "is not valid TOML" in run.stderr, run
    assert gatewayctl("servers", "list", "-o", "yaml").code == ExitCode.USAGE
    assert gatewayctl("policies", "show", "not-a-number").code == ExitCode.USAGE
    assert gatewayctl("--url", "ftp://x", "servers", "list").code == ExitCode.USAGE


def test_api_errors_are_one_line_with_the_control_plane_error(gatewayctl) -> None:
    run = gatewayctl("servers", "show", "no-such-server")
    assert run.code == ExitCode.API, run
    assert run.stdout == ""
    (line,) = run.stderr.strip().splitlines()
    assert line.startswith("error: 404 not_found: ") and "request_id" in line


def test_token_is_never_printed_even_in_a_crash_free_failure(gatewayctl, cp: ControlPlane) -> None:
    # the runner asserts on every call that the token is absent; exercise error paths with it set
    for args in (["servers", "show", "x"], ["--timeout", "0.1", "projection", "status"], ["keys", "revoke", "?"]):
        gatewayctl(*args)
    run = gatewayctl("--url", cp.url + "/nowhere", "servers", "list")
    assert run.code == ExitCode.API and cp.token not in run.stderr
