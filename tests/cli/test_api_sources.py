"""gatewayctl api-sources list|show|register|approve against the real registry API."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from gateway.cli.errors import ExitCode
from tests.cli.conftest import ControlPlane

pytestmark = [pytest.mark.db, pytest.mark.integration]

PETSTORE = Path(__file__).resolve().parents[1] / "apiadapter" / "data" / "petstore-3.0.json"


def test_register_a_yaml_file_show_approve_and_list(gatewayctl, cp: ControlPlane, tmp_path: Path) -> None:
    document = tmp_path / "petstore.yaml"
    document.write_text(yaml.safe_dump(json.loads(PETSTORE.read_text()), sort_keys=False))
    overrides = tmp_path / "overrides.json"
    overrides.write_text(json.dumps({"getPetById": {"name": "get_pet", "annotations": {"openWorldHint": False}}}))
    run = gatewayctl(
        "api-sources",
        "register",
        "cli-pets",
        "--file",
        str(document),
        "--base-url",
        "https://petstore.example/v2",
        "--include-tag",
        "pet",
        "--exclude-operation",
        "uploadFile",
        "--overrides",
        f"@{overrides}",
        "--timeout",
        "5",
    )
    assert run.code == 0, run
    assert "registered cli-pets (pending_approval, 7 tools)" in run.stderr, run.stderr
    assert "tools approval would pin" in run.stdout and "GET /pet/{petId}" in run.stdout
    record = cp.admin("GET", "/v1/api-sources/cli-pets")
    assert record["selection"] == {"include": {"tags": ["pet"]}, "exclude": {"operation_ids": ["uploadFile"]}}
    assert record["options"] == {"timeout": 5.0}
    tool = next(t for t in record["tools"] if t["name"] == "get_pet")
    assert tool["annotations"] == {"readOnlyHint": True, "openWorldHint": False}

    missing = gatewayctl("api-sources", "approve", "cli-pets")
    assert missing.code == ExitCode.USAGE and "--comment" in missing.stderr, missing
    run = gatewayctl("api-sources", "approve", "cli-pets", "-m", "reviewed", "--internal", "-o", "json")
    assert run.code == 0, run
    approved = json.loads(run.stdout)
    assert approved["status"] == "approved" and approved["internal"] is True and "get_pet" in approved["diff"]["added"]

    shown = gatewayctl("api-sources", "show", "cli-pets")
    assert shown.code == 0 and "pinned tools" in shown.stdout and "DELETE /pet/{petId}" in shown.stdout, shown
    items = json.loads(gatewayctl("api-sources", "list", "-o", "json").stdout)
    assert [i["name"] for i in items if i["name"] == "cli-pets"] == ["cli-pets"]
    table = gatewayctl("api-sources", "list")
    assert table.code == 0 and "cli-pets" in table.stdout and "3.0" in table.stdout, table


def test_a_document_the_adapter_cannot_use_is_the_servers_400(gatewayctl, cp: ControlPlane, tmp_path: Path) -> None:
    run = gatewayctl("api-sources", "register", "cli-bad", "--file", str(PETSTORE), "--base-url", "https://x.example")
    assert run.code == ExitCode.API, run
    assert "invalid_api_document" in run.stderr and "uploadImage.post.requestBody.content" in run.stderr
    nothing = gatewayctl("api-sources", "register", "cli-bad", "--file", str(tmp_path / "no.json"), "--base-url", "x")
    assert nothing.code == ExitCode.USAGE and "--file" in nothing.stderr
