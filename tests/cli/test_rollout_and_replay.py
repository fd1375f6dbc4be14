"""gatewayctl projection status [--wait] and policies replay against a full local stack (control
plane, data plane, its supervised OPA sidecar and the sample upstream as real processes; real MCP
calls make the decision logs a replay re-evaluates), and projection --wait against the
data-plane-less test control plane (where the rollout never finishes, so it must exit 4)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp.shared.exceptions import MCPError

from gateway.cli.errors import ExitCode
from gateway.devtools.stack import LocalStack, sample_policy_modules
from tests.cli.conftest import ControlPlane
from tests.controlplane.helpers import MINIMAL_POLICY, poll
from tests.e2e.helpers import client
from tests.support import pg

pytestmark = [pytest.mark.db, pytest.mark.integration]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, pg_admin_url: str, opa_bin: Path) -> Iterator[LocalStack]:
    run_dir = tmp_path_factory.mktemp("cli-stack")
    with (
        pg.throwaway_database(pg_admin_url) as database_url,
        LocalStack.create(run_dir, database_url=database_url, opa_bin=str(opa_bin)) as s,
    ):
        s.start_upstream()
        s.start_gateway()
        s.register_and_approve_server("demo", s.upstream_url)
        s.upload_and_approve_policy(sample_policy_modules())
        s.wait_projection_active()
        yield s


def stack_ctl(gatewayctl, stack: LocalStack):  # noqa: ANN201 - the Run of the gatewayctl fixture
    env = {"GATEWAYCTL_URL": stack.control_url, "GATEWAYCTL_TOKEN": stack.admin_token}

    def ctl(*args: str) -> Any:
        run = gatewayctl(*args, env=env)
        assert stack.admin_token not in run.stdout + run.stderr
        return run

    return ctl


def write_policy(root: Path, modules: dict[str, str]) -> Path:
    for name, source in modules.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
    return root


def test_wait_until_data_plane_and_opa_run_the_new_version(gatewayctl, stack: LocalStack, tmp_path: Path) -> None:
    ctl = stack_ctl(gatewayctl, stack)
    pushed = ctl("policies", "push", str(write_policy(tmp_path / "p", sample_policy_modules())), "-o", "json")
    assert pushed.code == 0, pushed
    version = json.loads(pushed.stdout)["version"]
    approved = ctl("policies", "approve", str(version), "-m", "sample policy", "-o", "json")
    assert approved.code == 0, approved
    desired = json.loads(approved.stdout)["projection_version"]

    run = ctl("projection", "status", "--wait", "--timeout", "60", "-o", "json")
    assert run.code == 0, run
    state = json.loads(run.stdout)
    assert state["desired_version"] >= desired and state["active_version"] == state["desired_version"]
    assert state["policy_version"] == version
    assert all(d["active_version"] == state["desired_version"] for d in state["data_planes"] if d["live"])
    assert any(o["live"] for o in state["opa"])

    table = ctl("projection", "status")
    assert table.code == 0, table
    assert "rolled_out" in table.stdout and "true" in table.stdout
    assert "data planes" in table.stdout and "dp-local" in table.stdout and "OPA" in table.stdout


def test_wait_times_out_with_exit_4(gatewayctl, cp: ControlPlane, tmp_path: Path) -> None:
    policy = write_policy(tmp_path / "p", MINIMAL_POLICY)
    version = json.loads(gatewayctl("policies", "push", str(policy), "-o", "json").stdout)["version"]
    assert gatewayctl("policies", "approve", str(version), "-m", "for the timeout").code == 0

    plain = gatewayctl("projection", "status", "-o", "json")
    assert plain.code == 0 and json.loads(plain.stdout)["active_version"] is None, plain

    run = gatewayctl("projection", "status", "--wait", "--timeout", "0.5", "--interval", "0.1")
    assert run.code == ExitCode.TIMEOUT, run
    assert "error: projection" in run.stderr and "not active everywhere after 0.5s" in run.stderr
    assert "desired_version" in run.stdout  # the last state is still shown


FROZEN = 'package gateway\n\ndecision := {"allow": false, "reasons": ["frozen"], "obligations": {}}\n'


@pytest.mark.anyio
async def test_replay_shows_the_flips_of_real_recorded_decisions(gatewayctl, stack: LocalStack, tmp_path: Path) -> None:
    ctl = stack_ctl(gatewayctl, stack)
    subject = "replayed-alice"
    token = stack.idp.mint(subject, ["viewer"], stack.audience)
    async with client(stack, token) as c:
        assert not (await c.call_tool("demo__echo", {"text": "recorded"})).is_error
        with pytest.raises(MCPError):
            await c.call_tool("demo__create_ticket", {"title": "x", "priority": "low"})

    async def logged() -> bool:  # the sidecar has uploaded both decision logs
        async with httpx.AsyncClient(base_url=stack.control_url, headers=stack.admin_headers) as http:
            items = (await http.get("/v1/audit/decisions", params={"subject": subject})).json()["items"]
            calls = [i for i in items if i["action"] == "tools/call"]
            if len(calls) < 2:
                return False
            for item in calls:
                if (await http.get(f"/v1/audit/decisions/{item['decision_id']}")).json()["opa_decision_log"] is None:
                    return False
            return True

    await poll(logged, timeout=60, interval=0.2)

    frozen = json.loads(
        ctl("policies", "push", str(write_policy(tmp_path / "frozen", {"gateway.rego": FROZEN})), "-o", "json").stdout
    )
    version = frozen["version"]
    run = ctl("policies", "replay", str(version), "--timeout", "120")
    assert run.code == 0, run
    assert "this version would deny" in run.stdout and "flips by tool" in run.stdout
    assert "echo" in run.stdout and subject in run.stdout and "frozen" in run.stdout  # tool, subject, reason
    assert "flipped decisions" in run.stdout and "allow_to_deny" in run.stdout

    started = ctl("policies", "replay", str(version), "--no-wait")
    assert started.code == 0, started
    replay_id = started.stdout.strip()
    shown = ctl("policies", "replay", str(version), "--id", replay_id, "-o", "json")
    assert shown.code == 0, shown
    state = json.loads(shown.stdout)
    assert state["status"] == "done" and state["replay_id"] == replay_id
    assert state["summary"]["flips"]["allow_to_deny"] >= 1
    assert state["summary"]["by_subject"][subject]["allow_to_deny"] >= 1
    assert any(f["decision_id"] for f in state["summary"]["flipped"])

    listed = json.loads(ctl("policies", "replays", str(version), "-o", "json").stdout)
    assert [i["replay_id"] for i in listed][:1] == [replay_id]
    approval = ctl("policies", "show", str(version))
    assert "replay: this version would deny" in approval.stdout, approval
    assert ctl("policies", "replay", str(version), "--id", "not-a-uuid").code == 1
