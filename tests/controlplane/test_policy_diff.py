"""``GET /v1/policies/{a}/diff/{b}``: per-file unified diffs of modules and tests, and the data
diff as an RFC 6902 JSON Patch (that applies) with a text form."""

from __future__ import annotations

import subprocess
from pathlib import Path

import jsonpatch
import pytest

from gateway.config import Config
from gateway.controlplane.policy_diff import data_diff, unified_diff
from tests.controlplane.helpers import asgi_controlplane
from tests.controlplane.test_policy_checks import POLICY, TESTS

pytestmark = [pytest.mark.anyio]

LIB_A = 'package gateway.lib\n\nmarker := "a"\n'
LIB_B = 'package gateway.lib\n\nmarker := "b"\n'
OLD_ONLY = "package gateway.old\n\ngone := true\n"
NEW_ONLY = "package gateway.extra\n\nadded := true\n"


@pytest.mark.db
async def test_the_diff_of_two_versions_covers_modules_tests_and_data(cp_config: Config) -> None:
    a_body = {
        "modules": {"gateway.rego": POLICY, "lib/m.rego": LIB_A, "old.rego": OLD_ONLY},
        "data": {"limits": {"max_roles": 3}, "blocked": ["rm", "dd"], "mode": "strict"},
    }
    b_body = {
        "modules": {"gateway.rego": POLICY, "lib/m.rego": LIB_B, "extra.rego": NEW_ONLY, "gateway_test.rego": TESTS},
        "data": {"limits": {"max_roles": 5}, "blocked": ["rm"], "owner": "platform", "mode": "strict"},
    }
    async with asgi_controlplane(cp_config) as (admin, _, _):
        a = (await admin.post("/v1/policies", json=a_body)).json()["version"]
        b = (await admin.post("/v1/policies", json=b_body)).json()["version"]
        r = await admin.get(f"/v1/policies/{a}/diff/{b}")
        assert r.status_code == 200, r.text
        diff = r.json()
        back = (await admin.get(f"/v1/policies/{b}/diff/{a}")).json()
        same = (await admin.get(f"/v1/policies/{a}/diff/{a}")).json()
        missing = await admin.get(f"/v1/policies/{a}/diff/{b + 100}")
        malformed = await admin.get(f"/v1/policies/{a}/diff/x")

    assert (diff["from"], diff["to"]) == (a, b)
    by_file = {m["file"]: m for m in diff["modules"]}
    assert {f: (m["status"], m["test"]) for f, m in by_file.items()} == {
        "extra.rego": ("added", False),
        "gateway_test.rego": ("added", True),
        "lib/m.rego": ("changed", False),
        "old.rego": ("removed", False),
    }
    assert diff["unchanged"] == ["gateway.rego"]
    changed = by_file["lib/m.rego"]["diff"]
    assert changed.startswith("--- a/lib/m.rego\n+++ b/lib/m.rego\n@@ ")
    assert '-marker := "a"\n+marker := "b"\n' in changed
    assert by_file["extra.rego"]["diff"].startswith("--- /dev/null\n+++ b/extra.rego\n")
    assert by_file["old.rego"]["diff"].startswith("--- a/old.rego\n+++ /dev/null\n")
    assert diff["summary"] == {"added": 2, "removed": 1, "changed": 1, "unchanged": 1, "data_operations": 3}

    data = diff["data"]
    assert data["changed"] is True
    assert jsonpatch.apply_patch(a_body["data"], data["patch"]) == b_body["data"]
    assert sorted(data["text"].splitlines()) == [
        'add /owner = "platform"',
        'remove /blocked/1 (was "dd")',
        "replace /limits/max_roles: 3 -> 5",
    ]
    assert {m["file"]: m["status"] for m in back["modules"]}["old.rego"] == "added"
    assert jsonpatch.apply_patch(b_body["data"], back["data"]["patch"]) == a_body["data"]
    assert same["modules"] == [] and same["data"] == {"changed": False, "patch": [], "text": ""}
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"
    assert malformed.status_code == 400 and "b" in malformed.json()["message"]


def test_a_module_diff_applies_with_git_apply(tmp_path: Path) -> None:
    old = "package gateway\n\nx := 1\ny := 2"  # no newline at the end
    new = "package gateway\n\nx := 1\ny := 3\nz := 4\n"
    text = unified_diff("pkg/p.rego", old, new)
    assert "\\ No newline at end of file\n" in text
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "p.rego").write_text(old)
    done = subprocess.run(["git", "apply", "-"], input=text, text=True, cwd=tmp_path, check=False)
    assert done.returncode == 0
    assert (tmp_path / "pkg" / "p.rego").read_text() == new
    assert unified_diff("same.rego", new, new) == ""


@pytest.mark.parametrize(
    ("old", "new"),
    [
        pytest.param(None, {"a": 1}, id="from-null"),
        pytest.param({"a": [1, 2, 3]}, {"a": [3, 2]}, id="array"),
        pytest.param({"a": {"deep": [{"x": 1}]}}, {"b": {"deep": [{"x": 1}]}}, id="moved"),
        pytest.param({"a": 1}, None, id="to-null"),
    ],
)
def test_the_data_patch_turns_the_old_data_into_the_new(old: dict | None, new: dict | None) -> None:
    patch, text = data_diff(old, new)
    assert jsonpatch.apply_patch(old or {}, patch) == (new or {})
    assert len(text.splitlines()) == len(patch) > 0
