"""docs/policy-guide.md, walked through as a new user would, against a real local stack.

The guide is the command list: every fenced ```` ```sh ```` block runs, in document order, in
one ``bash -euo pipefail`` session (shell variables and functions such as the guide's ``call``
carry from block to block, as in a terminal), in a scratch checkout holding a copy of
``policies/``. The one block marked ``<!-- policy-guide: setup -->`` starts processes; the test
starts the same stack with :class:`gateway.devtools.stack.LocalStack` instead and provides the
variables that block exports (with this stack's URLs and token). Each block must succeed, and
a few outputs are checked: the call is allowed first, the replay shows the flip, the call is
refused after the approval, and allowed again after the rollback.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.config import PROJECT_ROOT
from gateway.devtools.stack import LocalStack
from tests.support import pg

pytestmark = [pytest.mark.db, pytest.mark.integration]

GUIDE = PROJECT_ROOT / "docs" / "policy-guide.md"
SETUP_MARK = "<!-- policy-guide: setup -->"
MARKER = "@@policy-guide block {}@@"
RUN_TIMEOUT = 150.0
"""Seconds the whole walkthrough may take (it normally takes well under a minute)."""


@dataclass(frozen=True)
class Block:
    """One ```` ```sh ```` block of the guide: its text, first line number, and whether it is the setup."""

    text: str
    line: int
    setup: bool


def sh_blocks(markdown: str) -> list[Block]:
    """Every ```` ```sh ```` fenced block, in order (other fences, e.g. ```` ```text ````, are output samples)."""
    blocks: list[Block] = []
    lines = markdown.splitlines()
    i = 0
    previous = ""
    while i < len(lines):
        stripped = lines[i].strip()
        if stripped.startswith("```"):
            info = stripped[3:].strip()
            start = i + 1
            i += 1
            while i < len(lines) and lines[i].strip() != "```":
                i += 1
            if i == len(lines):
                raise AssertionError(f"{GUIDE.name}:{start}: unclosed code fence")
            if info == "sh":
                blocks.append(Block("\n".join(lines[start:i]) + "\n", start, previous == SETUP_MARK))
            previous = ""
        elif stripped:
            previous = stripped
        i += 1
    return blocks


def exported_names(block: Block) -> set[str]:
    """Names the block sets with ``export NAME=...`` (several per line allowed)."""
    names: set[str] = set()
    for line in block.text.splitlines():
        if line.lstrip().startswith("export "):
            names.update(re.findall(r"(?:^|\s)([A-Za-z_][A-Za-z0-9_]*)=", line))
    return names


def test_extraction_finds_the_blocks_and_the_setup() -> None:
    sample = (
        'x\n<!-- policy-guide: setup -->\n```sh\nexport A=1 B="$(x)"\n```\n```text\nout\n```\n```sh\necho hi\n```\n'
    )
    blocks = sh_blocks(sample)
    assert [(b.text, b.setup) for b in blocks] == [('export A=1 B="$(x)"\n', True), ("echo hi\n", False)]
    assert exported_names(blocks[0]) == {"A", "B"}
    with pytest.raises(AssertionError, match="unclosed"):
        sh_blocks("```sh\necho\n")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, pg_admin_url: str, opa_bin: Path) -> Iterator[LocalStack]:
    """The guide's step 0: the sample upstream and ``gateway serve`` (nothing registered, no policy)."""
    run_dir = tmp_path_factory.mktemp("guide-stack")
    with (
        pg.throwaway_database(pg_admin_url) as database_url,
        LocalStack.create(run_dir, database_url=database_url, opa_bin=str(opa_bin)) as s,
    ):
        s.start_upstream()
        s.start_gateway()
        yield s


def run_walkthrough(blocks: list[Block], cwd: Path, env: dict[str, str]) -> tuple[int, dict[int, str]]:
    """Run the blocks in one bash session; return its exit code and each block's output (stdout
    and stderr interleaved) by index. A failing block stops the session: later ones have no output."""
    script = ["set -euo pipefail", "exec 2>&1"]
    for index, block in enumerate(blocks):
        script.append(f"printf '\\n%s\\n' '{MARKER.format(index)}'")
        script.append(block.text)
    proc = subprocess.Popen(
        ["bash", "-c", "\n".join(script)],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError(f"the walkthrough took longer than {RUN_TIMEOUT}s; output so far:\n{out}") from None
    finally:
        if proc.poll() is None:  # pragma: no cover - only after an unexpected error above
            os.killpg(proc.pid, signal.SIGKILL)
    outputs: dict[int, str] = {}
    parts = re.split(r"\n@@policy-guide block (\d+)@@\n", out)
    for number, text in zip(parts[1::2], parts[2::2], strict=True):
        outputs[int(number)] = text
    return proc.returncode, outputs


def the_block(blocks: list[Block], outputs: dict[int, str], command: str) -> str:
    """The output of the one block containing ``command``."""
    found = [i for i, b in enumerate(blocks) if command in b.text]
    assert len(found) == 1, f"expected one ```sh block with {command!r} in the guide, found {len(found)}"
    return outputs[found[0]]


def test_policy_guide_walkthrough(stack: LocalStack, tmp_path: Path) -> None:
    blocks = sh_blocks(GUIDE.read_text(encoding="utf-8"))
    setup = [b for b in blocks if b.setup]
    assert len(setup) == 1, "the guide must mark exactly one ```sh block as its setup"
    steps = [b for b in blocks if not b.setup]
    commands = " ".join(b.text for b in steps)
    for command in ("policies test", "policies push", "policies replay", "policies approve", "policies rollback"):
        assert f"gatewayctl {command} " in commands, f"the guide no longer runs `gatewayctl {command}`"

    checkout = tmp_path / "checkout"
    checkout.mkdir()
    shutil.copytree(PROJECT_ROOT / "policies", checkout / "policies")
    tools = [str(PROJECT_ROOT / ".venv" / "bin"), str(PROJECT_ROOT / ".tools" / "bin")]
    provided = {
        "PATH": os.pathsep.join([*tools, os.environ.get("PATH", "/usr/bin:/bin")]),
        "DATABASE_URL": stack.database_url,
        "GATEWAYCTL_URL": stack.control_url,
        "GATEWAYCTL_TOKEN": stack.admin_token,
        "MCP": f"{stack.data_url}/mcp",
        "UPSTREAM": stack.upstream_url,
    }
    missing = exported_names(setup[0]) - provided.keys()
    assert not missing, f"the guide's setup exports {sorted(missing)}, which this test does not provide"
    env = {
        **provided,
        "HOME": str(tmp_path / "home"),
        "GATEWAYCTL_CONFIG": str(tmp_path / "gatewayctl.toml"),
        "COLUMNS": "200",
        "LANG": "C.UTF-8",
        "TMPDIR": str(tmp_path),
    }

    code, outputs = run_walkthrough(steps, checkout, env)
    if code != 0:
        failed = max(outputs, default=0)
        raise AssertionError(
            f"guide block at {GUIDE.name}:{steps[failed].line} failed with exit code {code}:\n"
            f"{steps[failed].text}\n--- output ---\n{outputs.get(failed, '')}"
        )
    assert len(outputs) == len(steps)
    assert stack.admin_token not in "".join(outputs.values()), "a guide command printed the admin token"

    before = the_block(steps, outputs, "KEY=$(gatewayctl keys create")
    assert '"result"' in before and "result(s) for 'vpn'" in before, before
    tested = the_block(steps, outputs, "gatewayctl policies test my-policy")
    assert "tests: 3 passed, 0 failed, 0 errors" in tested, tested
    replayed = the_block(steps, outputs, "gatewayctl policies replay 2")
    assert "gate: passed" in replayed, replayed
    assert "this version would deny 1 call that was allowed (1 subject, 1 tool)" in replayed, replayed
    assert "docs-bot" in replayed and "search_docs_not_for_api_keys" in replayed, replayed
    approved = the_block(steps, outputs, "gatewayctl policies approve 2")
    assert '"code":-32003' in approved and '"reasons":["search_docs_not_for_api_keys"]' in approved, approved
    assert approved.count("search_docs_not_for_api_keys") >= 2, approved  # the refused call and the audit query
    rolled_back = the_block(steps, outputs, "gatewayctl policies rollback 1")
    assert '"result"' in rolled_back and "-32003" not in rolled_back, rolled_back
    assert re.search(r"\b1\b.*\bactive\b", rolled_back) and "superseded" in rolled_back, rolled_back
