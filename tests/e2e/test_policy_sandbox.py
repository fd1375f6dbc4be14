"""The OPA sidecar is sandboxed and accounted for: a minimal environment, and the rollout view
never reports a version active before the sidecar has activated it (real processes)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.devtools.stack import LocalStack, sample_policy_modules

pytestmark = [pytest.mark.integration, pytest.mark.db]

OPA_DELAY = 3.0
"""Seconds the wrapped OPA waits before it execs: the window in which it has loaded nothing."""


def _slow_opa(tmp_path: Path, opa_bin: Path) -> str:
    wrapper = tmp_path / "slow-opa"
    wrapper.write_text(f'#!/bin/sh\nsleep {OPA_DELAY}\nexec "{opa_bin}" "$@"\n')
    wrapper.chmod(0o755)
    return str(wrapper)


def _view_until(stack: LocalStack, predicate: Any, timeout: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    view: dict[str, Any] = {}
    while time.monotonic() < deadline:
        view = stack.admin("GET", "/v1/projection")
        if predicate(view):
            return view
        time.sleep(0.02)
    raise AssertionError(f"rollout view never matched: {view}")


def _dp_live(view: dict[str, Any]) -> bool:
    return any(d["id"] == "dp-local" and d["live"] for d in view["data_planes"])


def _own_opa(view: dict[str, Any]) -> list[dict[str, Any]]:
    return [o for o in view["opa"] if o["dataplane_id"] == "dp-local"]


def test_the_sidecar_gets_a_minimal_environment_without_gateway_secrets(stack: LocalStack) -> None:
    pid = stack.opa_pid()
    assert pid is not None
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    env = dict(item.split("=", 1) for item in raw.decode().split("\0") if item)
    assert sorted(env) == ["HOME", "LANG", "PATH", "TMPDIR"]
    assert stack.admin_token not in raw.decode() and stack.database_url not in raw.decode()


def test_a_started_sidecar_counts_as_an_instance_before_it_has_activated_anything(
    tmp_path: Path, database_url: str, opa_bin: Path
) -> None:
    with LocalStack.create(tmp_path, database_url=database_url, opa_bin=str(opa_bin)) as s:
        s.start_gateway(plane="control")
        s.upload_and_approve_policy(sample_policy_modules())
        s.extra_env["OPA_BIN"] = _slow_opa(tmp_path, opa_bin)
        s.start_gateway(plane="data")

        # The data plane has reported (and activated the projection) while its OPA is still asleep.
        view = _view_until(s, _dp_live)
        assert s.opa_pid() is None, "OPA already runs: the window this test needs is gone"
        assert view["desired_version"] is not None
        assert view["active_version"] is None
        (pending,) = _own_opa(view)
        assert pending["state"] == "starting" and pending["active_version"] is None

        view = s.wait_projection_active()
        (running,) = _own_opa(view)
        assert running["id"] == pending["id"] and running["state"] == "ok"

        # A restarted sidecar is a new instance: registered at once, its predecessor retired.
        pid = s.opa_pid()
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        view = _view_until(s, lambda v: [o["id"] for o in _own_opa(v)] not in ([], [running["id"]]))
        (restarted,) = _own_opa(view)
        assert restarted["state"] == "starting" and view["active_version"] is None
        view = s.wait_projection_active()
        assert [o["id"] for o in _own_opa(view)] == [restarted["id"]]


def test_an_opa_the_data_plane_does_not_run_counts_as_an_instance_once_named(
    tmp_path: Path, database_url: str, opa_bin: Path
) -> None:
    """Kubernetes: OPA is a sidecar *container* (``GATEWAY_OPA_MANAGE=false``). Named by
    ``GATEWAY_OPA_INSTANCE_ID`` (its ``gateway_instance`` label, the pod name), it is registered
    when the data plane starts, so the rollout view never shows a version active that it has
    not loaded (here it never starts)."""
    with LocalStack.create(tmp_path, database_url=database_url, opa_bin=str(opa_bin)) as s:
        s.start_gateway(plane="control")
        s.upload_and_approve_policy(sample_policy_modules())
        s.extra_env.update(
            {
                "GATEWAY_OPA_MANAGE": "false",
                "GATEWAY_OPA_INSTANCE_ID": "gw-data-7f9c-x2k4q",
                "GATEWAY_OPA_URL": f"http://127.0.0.1:{s.opa_port}",  # nobody listens: the sidecar is late
            }
        )
        s.start_gateway(plane="data")

        view = _view_until(s, lambda v: _dp_live(v) and _own_opa(v))
        (pending,) = _own_opa(view)
        assert (pending["id"], pending["state"], pending["active_version"]) == ("gw-data-7f9c-x2k4q", "starting", None)
        assert view["desired_version"] is not None and view["active_version"] is None
        assert s.opa_pid() is None
