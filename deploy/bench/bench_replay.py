"""`make bench-replay`: how long replaying 10,000 recorded decisions against a candidate takes.

Seeds real decision logs: a real OPA loads the control plane's own bundle (the sample policy
library, ``policies/gateway``, approved as the active version), decides ``--decisions`` inputs
built by the data plane's input builder (50 subjects with viewer/operator/admin roles, read-only,
plain and destructive tools, tool arguments that the mask erases), and its console decision logs
go through ``POST /v1/opa/logs`` as a sidecar uploads them. The candidate is the same library
with one rule narrowed (operators keep only read-only tools), so some decisions flip.

Then it times ``POST /v1/policies/{candidate}/replay {"limit": N}`` until the replay is
``done`` (polled every 0.1 s), on an in-process control plane (the replay runs in the control
plane's event loop, as in production). Fails (exit 1) above ``--budget`` seconds (30).

    make bench-replay
    python deploy/bench/bench_replay.py --decisions 10000 --budget 30
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import orjson

from gateway.config import PROJECT_ROOT, Config
from gateway.controlplane import controlplane_resources, create_controlplane_app
from gateway.devtools.stack import fresh_database, sample_policy_modules
from gateway.policy.input import Subject, build_input

ADMIN, INTERNAL, OPA_TOKEN = "bench-admin-token", "bench-internal-token", "bench-opa-token"
TOOLS = [
    ("search", {"readOnlyHint": True}),
    ("read_file", {"readOnlyHint": True}),
    ("write_file", {}),
    ("deploy", {}),
    ("delete_repo", {"destructiveHint": True}),
]
ROLES = [("viewer",), ("operator",), ("admin",), ("operator", "viewer"), ()]


def _inputs(n: int) -> list[dict[str, Any]]:
    docs = []
    for i in range(n):
        tool, annotations = TOOLS[i % len(TOOLS)]
        sub = f"user{i % 50}"
        subject = Subject(sub=sub, issuer="https://idp.example", roles=ROLES[(i // 5) % len(ROLES)], claims={"n": i})
        docs.append(
            build_input(
                tenant="tenant_local",
                environment="prod",
                action="tools/call",
                subject=subject,
                server="demo",
                transport="streamable_http",
                tool=tool,
                annotations=annotations,
                arguments={"query": f"secret-{i}"},
                session_id=None,
                protocol_version="2026-07-28",
                projection_version=2,
            )
        )
    return docs


@contextlib.asynccontextmanager
async def _recording_opa(opa_bin: str, bundle: bytes) -> AsyncIterator[tuple[aiohttp.ClientSession, Path]]:
    with tempfile.TemporaryDirectory(prefix="gw-bench-record-") as tmp:
        work = Path(tmp)
        (work / "bundle.tar.gz").write_bytes(bundle)
        sock, out = work / "opa.sock", work / "out.log"
        argv = [opa_bin, "run", "--server", "--addr", f"unix://{sock}", "--bundle", "--skip-verify"]
        argv += [str(work / "bundle.tar.gz"), "--set", "decision_logs.console=true", "--log-level", "error"]
        with open(out, "wb") as fh:
            proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, env={"PATH": os.defpath, "HOME": tmp})
        try:
            connector = aiohttp.UnixConnector(path=str(sock), limit=8)
            async with aiohttp.ClientSession(connector=connector) as session:
                for _ in range(500):
                    with contextlib.suppress(aiohttp.ClientError, OSError):
                        async with session.get("http://opa/health?bundles") as r:
                            if r.status == 200:
                                break
                    await asyncio.sleep(0.02)
                yield session, out
        finally:
            proc.terminate()
            proc.wait(timeout=10)


async def _seed(opa_bin: str, opa: httpx.AsyncClient, n: int) -> dict[str, int]:
    bundle = (await opa.get("/v1/opa/bundles/gateway")).content
    inputs = _inputs(n)
    outcomes = {"allow": 0, "deny": 0}
    async with _recording_opa(opa_bin, bundle) as (session, out):
        queue = iter(inputs)

        async def worker() -> None:
            for doc in queue:
                async with session.post("http://opa/v1/data/gateway_runtime/main/call", json={"input": doc}) as r:
                    body = await r.json()
                outcomes["allow" if body["result"]["decision"]["allow"] else "deny"] += 1

        await asyncio.gather(*(worker() for _ in range(8)))
        for _ in range(600):
            events = [
                e
                for e in (orjson.loads(line) for line in out.read_bytes().splitlines() if line.startswith(b"{"))
                if e.get("msg") == "Decision Log"
            ]
            if len(events) >= n:
                break
            await asyncio.sleep(0.05)
    for event in events:
        event["bundles"] = {"gateway": next(iter(event["bundles"].values()))}
    for start in range(0, len(events), 1000):
        r = await opa.post("/v1/opa/logs", json=events[start : start + 1000])
        r.raise_for_status()
    return outcomes


def _candidate(modules: dict[str, str]) -> tuple[dict[str, str], str]:
    tools = "gateway/tools/tools.rego"
    old = '\t"operator" in input.subject.roles\n\tnot _destructive\n'
    if old in modules.get(tools, ""):
        narrowed = modules[tools].replace(old, old + "\t_read_only\n")
        return {**modules, tools: narrowed}, "operators keep only read-only tools"
    return {**modules, tools: modules[tools] + "\n# unchanged\n"}, "identical rules (the narrowing did not apply)"


async def _bench(database_url: str, opa_bin: str, decisions: int) -> dict[str, Any]:
    config = Config.from_mapping(
        {
            "database_url": database_url,
            "plane": "control",
            "control_plane": {"admin_token": ADMIN, "internal_token": INTERNAL, "opa_token": OPA_TOKEN},
            "opa": {"bin": opa_bin},
        }
    )
    app = create_controlplane_app(config)
    async with controlplane_resources(config) as state:

        async def with_state(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] == "http":
                scope["state"] = dict(state)
            await app(scope, receive, send)

        transport = httpx.ASGITransport(with_state)
        async with (
            httpx.AsyncClient(
                transport=transport, base_url="http://cp", headers={"Authorization": f"Bearer {ADMIN}"}
            ) as admin,
            httpx.AsyncClient(
                transport=transport, base_url="http://cp", headers={"Authorization": f"Bearer {OPA_TOKEN}"}
            ) as opa,
        ):
            modules = sample_policy_modules()
            r = await admin.post("/v1/policies", json={"modules": modules})
            r.raise_for_status()
            active = r.json()["version"]
            (await admin.post(f"/v1/policies/{active}/approve", json={"comment": "bench"})).raise_for_status()
            t0 = time.monotonic()
            outcomes = await _seed(opa_bin, opa, decisions)
            seeded = time.monotonic() - t0
            candidate_modules, change = _candidate(modules)
            r = await admin.post("/v1/policies", json={"modules": candidate_modules})
            r.raise_for_status()
            candidate = r.json()["version"]

            t0 = time.monotonic()
            r = await admin.post(f"/v1/policies/{candidate}/replay", json={"limit": decisions})
            r.raise_for_status()
            url = r.headers["location"]
            while True:
                view = (await admin.get(url)).json()
                if view["status"] != "running":
                    break
                await asyncio.sleep(0.1)
            elapsed = time.monotonic() - t0
    if view["status"] != "done":
        raise SystemExit(f"bench-replay: the replay {view['status']}: {view.get('error')}")
    summary = view["summary"]
    return {
        "decisions": decisions,
        "seeded_outcomes": outcomes,
        "seed_seconds": round(seeded, 2),
        "candidate_change": change,
        "replay_seconds": round(elapsed, 2),
        "decisions_per_second": round(summary["total"] / elapsed, 1),
        "total": summary["total"],
        "flips": summary["flips"],
        "errors": summary["errors"]["count"],
        "sentence": summary["sentence"],
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load": os.getloadavg()},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decisions", type=int, default=10_000)
    parser.add_argument("--budget", type=float, default=30.0, help="fail above this many seconds")
    args = parser.parse_args()
    database_url = os.environ.get("DATABASE_URL")
    if not database_url:
        print("bench-replay: DATABASE_URL is not set (run it with `make bench-replay`)", file=sys.stderr)
        return 2
    opa_bin = os.environ.get("OPA_BIN") or str(PROJECT_ROOT / ".tools" / "bin" / "opa")
    result = asyncio.run(_bench(fresh_database(database_url, "gateway_replay_bench"), opa_bin, args.decisions))
    out = PROJECT_ROOT / ".run" / "bench" / "replay.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    print(
        f"bench-replay: {result['total']} decisions replayed in {result['replay_seconds']} s (budget {args.budget} s)"
    )
    return 0 if result["replay_seconds"] <= args.budget else 1


if __name__ == "__main__":
    sys.exit(main())
