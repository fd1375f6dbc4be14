"""The policy library's documented configurations work: the example ``data.json`` of
``policies/README.md`` ("The policy library") and the one of ``docs/policy-guide.md`` ("The
library"), each mounted at ``data.gateway`` as the control plane mounts an upload's data, are
evaluated with the real ``opa`` against the sample policy. Each listed case must produce the
reasons the documentation promises."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from gateway.config import PROJECT_ROOT

POLICY_README = PROJECT_ROOT / "policies" / "README.md"
GUIDE = PROJECT_ROOT / "docs" / "policy-guide.md"
POLICIES = PROJECT_ROOT / "policies" / "gateway"


def json_block_after(markdown: str, heading: str) -> Any:
    """The first ```` ```json ```` block after ``heading`` (a line of the document), parsed."""
    start = markdown.index(heading)
    match = re.search(r"```json\n(.*?)\n```", markdown[start:], re.S)
    assert match, f"no json block after {heading!r}"
    return json.loads(match.group(1))


def decide(opa_bin: Path, tmp_path: Path, data: Any, request: dict[str, Any], now: str | None = None) -> dict[str, Any]:
    """``data.gateway.decision`` of the sample policy with ``data`` at ``data.gateway``, at the
    RFC 3339 time ``now`` (default: the real clock)."""
    query = "data.gateway.decision" + (f' with time.now_ns as time.parse_rfc3339_ns("{now}")' if now else "")
    (tmp_path / "data.json").write_text(json.dumps({"gateway": data}))
    (tmp_path / "input.json").write_text(json.dumps(request))
    out = subprocess.run(
        [str(opa_bin), "eval", "--format", "raw", "--data", str(POLICIES)]
        + ["--data", str(tmp_path / "data.json"), "--input", str(tmp_path / "input.json"), query],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def call(roles: list[str], server: str, tool: str, annotations: dict[str, Any], **extra: Any) -> dict[str, Any]:
    request: dict[str, Any] = {
        "action": "tools/call",
        "environment": "prod",
        "subject": {"sub": "someone", "roles": roles, "delegation": []},
        "server": {"name": server, "transport": "streamable_http"},
        "tool": {"name": tool, "annotations": annotations},
        "arguments": {},
    }
    for key, value in extra.items():
        request[key] = {**request.get(key, {}), **value} if isinstance(value, dict) else value
    return request


CLOSED = {"readOnlyHint": True, "openWorldHint": False}
README_CASES = [
    (call(["viewer"], "demo", "search_docs", CLOSED, arguments={"limit": 11}), False, ["argument_above_maximum"]),
    (call(["admin"], "demo", "search_docs", CLOSED, arguments={"limit": 11}), True, ["granted_by_role_admin"]),
    (
        call(["admin"], "db", "run_sql", CLOSED, arguments={"query": "DROP table t"}),
        False,
        ["argument_matches_refused_pattern"],
    ),
    (
        call(["deployer"], "ci", "deploy_app", {"openWorldHint": False}, arguments={"target": {"region": "eu-west-1"}}),
        True,
        ["granted_by_tool_grant"],
    ),
    (
        call(["deployer"], "ci", "deploy_app", {"openWorldHint": False}, arguments={"target": {"region": "us-east-1"}}),
        False,
        ["argument_does_not_match_pattern"],
    ),
    (
        call(["viewer"], "demo", "delete_record", {"openWorldHint": False}),
        False,
        ["tool_not_read_only", "tool_restricted_to_roles"],
    ),
    (call(["admin"], "github", "delete_repo", CLOSED), False, ["tool_not_allowed_on_server"]),
    (call(["viewer"], "github", "get_issue", {"readOnlyHint": True}), False, ["open_world_tool_requires_role"]),
    (call(["admin"], "demo", "debug_dump", CLOSED), False, ["tool_refused_in_environment"]),
    (
        call(
            ["oncall", "operator"],
            "payments",
            "refund",
            {"openWorldHint": False},
            subject={"delegation": [{"sub": "agent"}]},
        ),
        False,
        ["delegation_depth_exceeded"],
    ),
]


@pytest.mark.parametrize(("request_", "allow", "reasons"), README_CASES)
def test_policy_readme_library_example(
    opa_bin: Path, tmp_path: Path, request_: dict[str, Any], allow: bool, reasons: list[str]
) -> None:
    data = json_block_after(POLICY_README.read_text(encoding="utf-8"), "Example `data.json`:")
    assert decide(opa_bin, tmp_path, data, request_) == {"allow": allow, "reasons": reasons, "obligations": {}}


def test_policy_readme_library_example_time_window(opa_bin: Path, tmp_path: Path) -> None:
    data = json_block_after(POLICY_README.read_text(encoding="utf-8"), "Example `data.json`:")
    request = call(["operator"], "demo", "echo", CLOSED)
    monday_noon_paris, saturday = "2026-11-30T11:00:00Z", "2026-12-05T11:00:00Z"
    assert decide(opa_bin, tmp_path, data, request, monday_noon_paris)["allow"] is True
    assert decide(opa_bin, tmp_path, data, request, saturday)["reasons"] == ["outside_time_window"]


def test_policy_readme_library_example_without_data_changes_nothing(opa_bin: Path, tmp_path: Path) -> None:
    request = call(["viewer"], "github", "get_issue", {"readOnlyHint": True})
    assert decide(opa_bin, tmp_path, {}, request)["allow"] is True


def test_policy_guide_library_example(opa_bin: Path, tmp_path: Path) -> None:
    data = json_block_after(GUIDE.read_text(encoding="utf-8"), "## The library")
    big = call(["viewer"], "demo", "search_docs", {"readOnlyHint": True}, arguments={"query": "x", "limit": 20})
    assert decide(opa_bin, tmp_path, data, big)["reasons"] == ["argument_above_maximum"]
    destructive = call(["viewer"], "demo", "delete_record", {"destructiveHint": True})
    assert decide(opa_bin, tmp_path, data, destructive)["reasons"] == [
        "destructive_tool_refused_in_environment",
        "tool_not_read_only",
    ]
    operator = call(["operator"], "demo", "create_ticket", {})
    assert decide(opa_bin, tmp_path, data, operator, "2026-11-30T17:59:00Z")["allow"] is True  # 18:59 in Paris
    assert decide(opa_bin, tmp_path, data, operator, "2026-11-30T18:00:00Z")["reasons"] == ["outside_time_window"]
    chained = call(["viewer"], "demo", "echo", {"readOnlyHint": True}, subject={"delegation": [{}, {}]})
    assert decide(opa_bin, tmp_path, data, chained)["reasons"] == ["delegation_depth_exceeded"]
