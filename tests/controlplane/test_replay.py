"""Decision replay: recorded decisions re-evaluated against a candidate version by a real scratch OPA.

The decision logs are real: a real OPA loads the control plane's own bundle (served by
``/v1/opa/bundles``), decides inputs built by the data plane's input builder, writes its
(masked) decision logs to the console, and those events go through ``/v1/opa/logs`` exactly
as a sidecar uploads them.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import httpx
import orjson
import pytest

from gateway.config import Config
from gateway.controlplane import replay
from gateway.db import replays as db_replays
from gateway.policy.input import Subject, build_input
from gateway.policy.reserved import REGO_DIR
from tests.controlplane.helpers import asgi_controlplane, poll

pytestmark = [pytest.mark.anyio, pytest.mark.db]

ALLOW = '{"allow": true, "reasons": [], "obligations": {}}'

ACTIVE = f"""package gateway

default decision := {{"allow": false, "reasons": ["not_allowed"], "obligations": {{}}}}

decision := {ALLOW} if {{
	input.action == "tools/call"
	input.tool.name in {{"echo", "add"}}
	"user" in input.subject.roles
}}
"""

RETIRE_ADD = f"""package gateway

default decision := {{"allow": false, "reasons": ["not_allowed"], "obligations": {{}}}}

decision := {{"allow": false, "reasons": ["tool_retired"], "obligations": {{}}}} if input.tool.name == "add"

decision := {ALLOW} if input.tool.name == "echo"
"""

# Denies on a masked field (the tool arguments): real traffic with text "secret" would be denied,
# replay cannot see the arguments, so nothing flips.
BLOCK_ARGUMENT = ACTIVE.replace(
    '\t"user" in input.subject.roles\n}',
    '\t"user" in input.subject.roles\n\tnot input.arguments.text == "secret"\n}',
)

# Two complete definitions that disagree for bob's "add": OPA cannot evaluate that input.
CONFLICT = f"""package gateway

default decision := {{"allow": false, "reasons": ["not_allowed"], "obligations": {{}}}}

decision := {ALLOW} if input.subject.sub == "bob"

decision := {{"allow": false, "reasons": ["tool_retired"], "obligations": {{}}}} if input.tool.name == "add"
"""

USER = ("user",)
# (subject, roles, tool, arguments, how many) of the recorded calls.
TRAFFIC: list[tuple[str, tuple[str, ...], str, dict[str, Any], int]] = [
    ("alice", USER, "echo", {"text": "secret"}, 3),
    ("alice", USER, "add", {"a": 1, "b": 2}, 2),
    ("bob", USER, "add", {"a": 5, "b": 5}, 1),
    ("bob", USER, "echo", {"text": "hi"}, 1),
    ("carol", (), "echo", {"text": "secret"}, 2),
    ("alice", USER, "delete", {"path": "/"}, 1),
]


def _inputs(traffic: list[tuple[str, tuple[str, ...], str, dict[str, Any], int]]) -> list[dict[str, Any]]:
    docs = []
    for sub, roles, tool, arguments, count in traffic:
        subject = Subject(sub=sub, issuer="https://idp.example", roles=roles, claims={"email": f"{sub}@x"})
        for _ in range(count):
            docs.append(
                build_input(
                    tenant="tenant_local",
                    environment="prod",
                    action="tools/call",
                    subject=subject,
                    server="demo",
                    transport="streamable_http",
                    tool=tool,
                    annotations={},
                    arguments=arguments,
                    session_id="s1",
                    protocol_version="2025-11-25",
                    projection_version=2,
                )
            )
    return docs


@contextlib.asynccontextmanager
async def _recording_opa(opa_bin: Path, bundle: bytes) -> AsyncIterator[tuple[aiohttp.ClientSession, Path]]:
    """A real OPA with ``bundle`` and console decision logs; yields (session, stdout file)."""
    with tempfile.TemporaryDirectory(prefix="gw-test-record-") as tmp:
        work = Path(tmp)
        (work / "bundle.tar.gz").write_bytes(bundle)
        sock, out = work / "opa.sock", work / "out.log"
        argv = [str(opa_bin), "run", "--server", "--addr", f"unix://{sock}", "--bundle", "--skip-verify"]
        argv += [str(work / "bundle.tar.gz"), "--set", "decision_logs.console=true", "--log-level", "error"]
        with open(out, "wb") as fh:
            proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, env={"PATH": os.defpath, "HOME": tmp})
        try:
            async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(sock))) as session:

                async def ready() -> bool:
                    with contextlib.suppress(aiohttp.ClientError, OSError):
                        async with session.get("http://opa/health?bundles") as r:
                            return r.status == 200
                    return False

                await poll(ready, timeout=15, interval=0.02)
                yield session, out
        finally:
            proc.terminate()
            proc.wait(timeout=10)


async def _record(
    opa_bin: Path, admin: httpx.AsyncClient, opa_client: httpx.AsyncClient, inputs: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Decide ``inputs`` with the active projection's bundle; upload OPA's decision logs through
    ``/v1/opa/logs``; return ``[{"decision_id", "allow"}]`` in input order."""
    bundle = (await opa_client.get("/v1/opa/bundles/gateway")).content
    answers = []
    async with _recording_opa(opa_bin, bundle) as (session, out):
        for doc in inputs:
            async with session.post("http://opa/v1/data/gateway_runtime/main/call", json={"input": doc}) as r:
                body = await r.json()
            answers.append({"decision_id": body["decision_id"], "allow": body["result"]["decision"]["allow"]})

        def events() -> list[dict[str, Any]]:
            lines = [orjson.loads(line) for line in out.read_bytes().splitlines() if line.startswith(b"{")]
            return [e for e in lines if e.get("msg") == "Decision Log"]

        async def all_logged() -> list[dict[str, Any]] | None:
            found = events()
            return found if len(found) == len(inputs) else None

        logged = await poll(all_logged, timeout=15, interval=0.05)
    for event in logged:  # as the sidecar names its bundle (the file path when loaded from disk)
        event["bundles"] = {"gateway": next(iter(event["bundles"].values()))}
    for chunk in range(0, len(logged), 1000):
        r = await opa_client.post("/v1/opa/logs", json=logged[chunk : chunk + 1000])
        assert r.status_code == 204, r.text
    return answers


async def _upload(admin: httpx.AsyncClient, source: str) -> int:
    r = await admin.post("/v1/policies", json={"modules": {"gateway.rego": source}})
    assert r.status_code == 201, r.text
    return int(r.json()["version"])


async def _approve(admin: httpx.AsyncClient, version: int) -> None:
    r = await admin.post(f"/v1/policies/{version}/approve", json={"comment": "replay test"})
    assert r.status_code == 200, r.text


async def _replay_done(admin: httpx.AsyncClient, version: int, body: dict[str, Any] | None = None) -> dict[str, Any]:
    r = await admin.post(f"/v1/policies/{version}/replay", json=body or {})
    assert r.status_code == 202, r.text
    started = r.json()
    assert started["status"] == "running" and started["created_by"] == "admin"
    assert r.headers["location"] == f"/v1/policies/{version}/replays/{started['replay_id']}"

    async def finished() -> dict[str, Any] | None:
        view = (await admin.get(r.headers["location"])).json()
        return view if view["status"] != "running" else None

    return await poll(finished, timeout=60, interval=0.05)


def _scratch_opas() -> list[int]:
    """Pids of this process's children that are scratch replay OPAs."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == os.getpid() and b"gw-replay-" in cmdline:
            found.append(int(entry.name))
    return found


async def test_a_candidate_denying_a_tool_flips_its_calls_grouped_with_decision_ids(
    cp_config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with asgi_controlplane(cp_config, opa=True) as (admin, opa, _):
        active = await _upload(admin, ACTIVE)
        await _approve(admin, active)
        answers = await _record(Path(cp_config.opa.bin), admin, opa, _inputs(TRAFFIC))
        assert [a["allow"] for a in answers] == [True] * 7 + [False] * 3
        candidate = await _upload(admin, RETIRE_ADD)

        view = await _replay_done(admin, candidate)
        assert view["status"] == "done", view
        assert view["total"] == view["done"] == 10 and view["baseline_version"] == active
        s = view["summary"]
        assert s["total"] == s["evaluated"] == 10 and s["errors"] == {"count": 0, "items": []}
        assert s["flips"] == {"allow_to_deny": 3, "deny_to_allow": 2} and s["unchanged"] == 5
        assert s["by_tool"] == {
            "add": {"allow_to_deny": 3, "deny_to_allow": 0},
            "echo": {"allow_to_deny": 0, "deny_to_allow": 2},
        }
        assert s["by_subject"] == {
            "alice": {"allow_to_deny": 2, "deny_to_allow": 0},
            "carol": {"allow_to_deny": 0, "deny_to_allow": 2},
            "bob": {"allow_to_deny": 1, "deny_to_allow": 0},
        }
        # a new deny is grouped by the candidate's reason, a lifted one by the original's
        assert s["by_reason"] == {
            "tool_retired": {"allow_to_deny": 3, "deny_to_allow": 0},
            "not_allowed": {"allow_to_deny": 0, "deny_to_allow": 2},
        }
        add_ids = {
            a["decision_id"] for a, doc in zip(answers, _inputs(TRAFFIC), strict=True) if doc["tool"]["name"] == "add"
        }
        carol_ids = {
            a["decision_id"]
            for a, doc in zip(answers, _inputs(TRAFFIC), strict=True)
            if doc["subject"]["sub"] == "carol"
        }
        flipped = {f["decision_id"]: f for f in s["flipped"]}
        assert set(flipped) == add_ids | carol_ids and not s["flipped_truncated"]
        assert all(flipped[i]["direction"] == "allow_to_deny" for i in add_ids)
        some = flipped[next(iter(add_ids))]
        assert some["original"] == {"allow": True, "reasons": []}
        assert some["candidate"] == {"allow": False, "reasons": ["tool_retired"]}
        assert some["action"] == "tools/call" and some["server"] == "demo" and some["tool"] == "add"
        assert s["subjects"] == {"allow_to_deny": 2, "deny_to_allow": 1}
        assert s["tools"] == {"allow_to_deny": 1, "deny_to_allow": 1}
        assert s["erased_fields"] == ["/input/arguments", "/input/subject/claims"]
        assert s["sentence"].startswith(
            "this version would deny 3 calls that were allowed (2 subjects, 1 tool) "
            "and allow 2 calls that were denied (1 subject, 1 tool)"
        )

        # one query per batch gives what one request per input at the data plane's path gives
        monkeypatch.setattr(replay, "BATCH_SIZE", 1)
        alone = await _replay_done(admin, candidate)
        assert alone["summary"] == s
        monkeypatch.setattr(replay, "BATCH_SIZE", 3)  # batches that end mid-page
        assert (await _replay_done(admin, candidate))["summary"] == s
        monkeypatch.undo()
        view = await _replay_done(admin, candidate)

        # the approval view carries the latest finished replay
        shown = (await admin.get(f"/v1/policies/{candidate}")).json()
        assert shown["replay"]["replay_id"] == view["replay_id"]
        assert shown["replay"]["flips"] == s["flips"] and shown["replay"]["sentence"] == s["sentence"]
        assert (await admin.get(f"/v1/policies/{active}")).json()["replay"] is None
        listed = (await admin.get(f"/v1/policies/{candidate}/replays")).json()["items"]
        assert [i["replay_id"] for i in listed][0] == view["replay_id"] and len(listed) == 4
        assert listed[0]["flips"] == s["flips"] and listed[0]["sentence"] == s["sentence"]
        assert "summary" not in listed[0]

        # since/until/limit select the window: the newest first
        limited = await _replay_done(admin, candidate, {"limit": 1})
        assert limited["summary"]["total"] == 1
        assert limited["summary"]["flips"] == {"allow_to_deny": 0, "deny_to_allow": 0}  # the newest: delete
        empty = await _replay_done(admin, candidate, {"since": "2999-01-01T00:00:00Z"})
        assert empty["total"] == 0 and empty["summary"]["total"] == 0
        assert (await admin.get(f"/v1/policies/{candidate}")).json()["replay"]["replay_id"] == empty["replay_id"]
        assert not _scratch_opas()


async def test_identical_masked_and_conflicting_candidates(cp_config: Config) -> None:
    async with asgi_controlplane(cp_config, opa=True) as (admin, opa, _):
        active = await _upload(admin, ACTIVE)
        await _approve(admin, active)
        answers = await _record(Path(cp_config.opa.bin), admin, opa, _inputs(TRAFFIC))

        same = await _upload(admin, ACTIVE + "\n# the same rules\n")
        s = (await _replay_done(admin, same))["summary"]
        assert s["flips"] == {"allow_to_deny": 0, "deny_to_allow": 0} and s["unchanged"] == s["total"] == 10
        assert s["flipped"] == [] and s["by_tool"] == {} and s["errors"]["count"] == 0
        assert s["sentence"] == (
            "this version would deny 0 calls that were allowed and allow 0 calls that were denied; "
            "10 recorded decisions replayed"
        )

        # A rule on a masked field (tool arguments) cannot flip anything in replay.
        masked = await _upload(admin, BLOCK_ARGUMENT)
        s = (await _replay_done(admin, masked))["summary"]
        assert s["flips"] == {"allow_to_deny": 0, "deny_to_allow": 0} and s["evaluated"] == 10
        assert "/input/arguments" in s["erased_fields"]

        # An input OPA cannot evaluate is an error, counted apart from flips.
        conflict = await _upload(admin, CONFLICT)
        s = (await _replay_done(admin, conflict))["summary"]
        bob_add = [
            a["decision_id"] for a, d in zip(answers, _inputs(TRAFFIC), strict=True) if d["subject"]["sub"] == "bob"
        ][0]
        assert s["errors"]["count"] == 1 and s["evaluated"] == 9
        assert s["errors"]["items"][0]["decision_id"] == bob_add
        assert "conflict" in s["errors"]["items"][0]["message"]
        assert "1 could not be evaluated" in s["sentence"]
        # alice's add: retired; carol's echo and alice's delete stay denied; alice's echo: now denied
        assert s["flips"] == {"allow_to_deny": 5, "deny_to_allow": 0}


async def test_masked_fields_are_what_the_reserved_mask_erases(opa_bin: Path) -> None:
    """The documented list (:data:`replay.MASKED_INPUT_FIELDS`) is what OPA evaluates the mask to."""
    result = await anyio.run_process(
        [str(opa_bin), "eval", "--format", "json", "-d", str(REGO_DIR / "system" / "log"), "data.system.log.mask"]
    )
    value = orjson.loads(result.stdout)["result"][0]["expressions"][0]["value"]
    assert sorted(value) == sorted(replay.MASKED_INPUT_FIELDS)


async def test_progress_is_visible_a_second_replay_is_409_and_the_scratch_opa_is_gone(
    cp_config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(replay, "HEARTBEAT", 0.05)
    monkeypatch.setattr(replay, "PAGE_SIZE", 20)
    monkeypatch.setattr(replay, "CONCURRENCY", 1)
    monkeypatch.setattr(replay, "BATCH_SIZE", 1)
    async with asgi_controlplane(cp_config, opa=True) as (admin, opa, _):
        active = await _upload(admin, ACTIVE)
        await _approve(admin, active)
        await _record(Path(cp_config.opa.bin), admin, opa, _inputs([(f"u{i}", USER, "add", {}, 1) for i in range(300)]))
        candidate = await _upload(admin, RETIRE_ADD)
        earlier = set(_scratch_opas())  # an earlier test's scratch OPA may still be exiting
        r = await admin.post(f"/v1/policies/{candidate}/replay")  # no body at all
        assert r.status_code == 202, r.text
        url = r.headers["location"]

        seen: list[tuple[str, int | None, int]] = []
        pids: set[int] = set()
        dirs: set[Path] = set()

        async def finished() -> dict[str, Any] | None:
            view = (await admin.get(url)).json()
            seen.append((view["status"], view["total"], view["done"]))
            for pid in set(_scratch_opas()) - earlier:
                pids.add(pid)
                with contextlib.suppress(OSError):
                    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                    dirs.add(Path(os.fsdecode(argv[argv.index(b"--bundle") + 1])).parent)
            return view if view["status"] != "running" else None

        second = await admin.post(f"/v1/policies/{candidate}/replay", json={})
        assert second.status_code == 409 and r.json()["replay_id"] in second.json()["message"]
        view = await poll(finished, timeout=120, interval=0.02)
        assert view["status"] == "done" and view["summary"]["flips"]["allow_to_deny"] == 300
        running = [(total, done) for status, total, done in seen if status == "running"]
        assert any(total == 300 and 0 < done < 300 for total, done in running), seen
        dones = [done for _, done in running]
        assert dones == sorted(dones)
        assert pids, "a scratch OPA ran the replay"
        assert not set(_scratch_opas()) & pids
        with pytest.raises(ProcessLookupError):
            os.kill(pids.pop(), 0)
        (work,) = dirs  # its private directory (bundles, socket) is gone too
        assert work.name.startswith("gw-replay-") and not work.exists()


async def test_a_failing_replay_is_failed_and_stops_its_opa_and_orphans_are_failed_when_read(
    cp_config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with asgi_controlplane(cp_config, opa=True) as (admin, opa, state):
        active = await _upload(admin, ACTIVE)
        await _approve(admin, active)
        await _record(Path(cp_config.opa.bin), admin, opa, _inputs(TRAFFIC))

        pids: list[int] = []

        def broken(self: replay.ReplayTally, row: Any, verdict: Any) -> None:
            pids.extend(_scratch_opas())
            raise RuntimeError("a bug")

        with monkeypatch.context() as patched:
            patched.setattr(replay.ReplayTally, "add", broken)
            view = await _replay_done(admin, active)
        assert view["status"] == "failed" and view["summary"] is None
        assert view["error"] == "internal error (see the control plane's log)"
        assert pids and not _scratch_opas()

        # A candidate the scratch OPA cannot serve: failed with a reason, nothing left running.
        with monkeypatch.context() as patched:
            patched.setattr(replay, "build_bundle", lambda **_: b"not a bundle")
            view = await _replay_done(admin, active)
        assert view["status"] == "failed" and "restricted capabilities" in view["error"]
        assert not _scratch_opas()

        # A replay whose control plane died (stale heartbeat), then one of this process without a task:
        # each is failed when replays are read.
        pool = state["cp_pool"]
        for owner, stale in (("elsewhere:1:dead", True), (replay.OWNER, False)):
            replay_id = str(uuid.uuid4())
            async with pool.acquire() as conn:
                await db_replays.create_replay(
                    conn,
                    cp_config.tenant,
                    cp_config.environment,
                    replay_id=replay_id,
                    policy_version=active,
                    baseline_version=active,
                    since=None,
                    until=None,
                    limit=10,
                    created_by="admin",
                    owner=owner,
                )
                if stale:
                    await conn.execute(
                        "UPDATE policy_replays SET heartbeat_at = now() - interval '1 hour' WHERE id = $1", replay_id
                    )
            view = (await admin.get(f"/v1/policies/{active}/replays/{replay_id}")).json()
            assert view["status"] == "failed" and "stopped before it finished" in view["error"], view
        # and a new replay can start
        assert (await _replay_done(admin, active))["status"] == "done"


async def test_bad_requests(cp_config: Config) -> None:
    async with asgi_controlplane(cp_config) as (admin, _, _):
        active = await _upload(admin, ACTIVE)
        for body, status in [
            ({"limit": 0}, 400),
            ({"limit": replay.MAX_LIMIT + 1}, 400),
            ({"limit": True}, 400),
            ({"since": "yesterday"}, 400),
            ({"since": "2026-01-02T00:00:00Z", "until": "2026-01-01T00:00:00Z"}, 400),
            ({"other": 1}, 400),
            ([], 400),
        ]:
            r = await admin.post(f"/v1/policies/{active}/replay", json=body)
            assert r.status_code == status, (body, r.text)
        assert (await admin.post("/v1/policies/999/replay", json={})).status_code == 404
        assert (await admin.get(f"/v1/policies/{active}/replays/not-a-uuid")).status_code == 400
        assert (await admin.get(f"/v1/policies/{active}/replays/{uuid.uuid4()}")).status_code == 404
        assert (await admin.get(f"/v1/policies/{active}/replays")).json() == {"items": []}
