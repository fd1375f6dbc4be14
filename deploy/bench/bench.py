"""`make bench`: added latency of a governed ``tools/call`` vs the same call made directly.

One run, one machine, loopback. It starts the local stack (gateway with both
planes + the OPA sidecar + PostgreSQL + the sample upstream), then measures,
with the same HTTP client and the same JSON-RPC body shape (MCP 2026-07-28,
stateless, so no session set-up is timed):

* ``rtt``      — a bare HTTP GET round trip to the upstream (``/_health``): the unit;
* ``opa``      — one decision straight to the OPA sidecar (``/v1/data/gateway_runtime/main/call``);
* ``direct``   — ``tools/call echo`` straight to the upstream;
* ``gateway``  — ``tools/call demo__echo`` through the data plane (JWT, schema
  validation, OPA decision, audit enqueue, pooled upstream session);
* ``brokered`` — the same through ``demokey``, the same upstream registered again with
  ``requires_credential`` and a ``headers`` credential bound to everyone: binding choice,
  ``input.credential``, the credential from the data plane's cache (the first call resolves it
  at the control plane's broker, within the warm-up) and its header on the upstream request.

Sequential requests give p50/p99 latency; a closed loop of concurrent workers
gives throughput. The gateway is measured once per ASGI server (uvicorn with
httptools + uvloop, and Hypercorn), each in a fresh stack, so the default can
follow the numbers. Results are printed and written to ``.run/bench/results.json``.

    make bench                       # defaults: 2000 sequential, 16 workers x 5 s, both servers
    python deploy/bench/bench.py --requests 5000 --concurrency 32 --seconds 10 --servers uvicorn
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

from gateway.config import PROJECT_ROOT
from gateway.devtools.stack import LocalStack, fresh_database, sample_policy_modules

META = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientCapabilities": {},
}


def _call(tool: str, text: str) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": tool, "arguments": {"text": text}, "_meta": META},
    }


def _headers(tool: str, token: str | None = None) -> dict[str, str]:
    h = {
        "accept": "application/json, text/event-stream",
        "mcp-protocol-version": "2026-07-28",
        "mcp-method": "tools/call",
        "mcp-name": tool,
    }
    if token:
        h["authorization"] = f"Bearer {token}"
    return h


def _pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _latencies(
    cases: dict[str, Callable[[], Awaitable[None]]], n: int, warmup: int, rounds: int
) -> dict[str, Any]:
    """p50/p99/mean per case, interleaving the cases in ``rounds`` rounds.

    Interleaving exposes every case to the same background conditions (CPU
    steal, GC, other processes), so the gateway-minus-direct difference is not
    an artefact of when each case happened to run.
    """
    for fn in cases.values():
        for _ in range(warmup):
            await fn()
    samples: dict[str, list[float]] = {name: [] for name in cases}
    per_round = max(1, n // rounds)
    for _ in range(rounds):
        for name, fn in cases.items():
            for _ in range(per_round):
                t0 = time.perf_counter()
                await fn()
                samples[name].append((time.perf_counter() - t0) * 1000)
    return {
        name: {"p50_ms": _pct(s, 0.50), "p99_ms": _pct(s, 0.99), "mean_ms": statistics.fmean(s), "n": len(s)}
        for name, s in samples.items()
    }


async def _throughput(fn: Callable[[], Awaitable[None]], workers: int, seconds: float) -> float:
    done = 0
    stop = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < stop:
            await fn()
            done += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(workers)))
    return done / (time.perf_counter() - t0)


async def measure(stack: LocalStack, args: argparse.Namespace) -> dict[str, Any]:
    token = stack.idp.mint("bench", ["viewer"], stack.audience, ttl_seconds=3600)
    limits = httpx.Limits(max_connections=args.concurrency * 2, max_keepalive_connections=args.concurrency * 2)
    async with httpx.AsyncClient(limits=limits, timeout=30) as http:
        gw_url = f"{stack.data_url}/mcp"
        opa_url = f"http://127.0.0.1:{stack.opa_port}/v1/data/gateway_runtime/main/call"
        opa_input = {
            "input": {
                "tenant": "tenant_local",
                "environment": "prod",
                "action": "tools/call",
                "subject": {
                    "sub": "bench",
                    "issuer": stack.idp.issuer,
                    "roles": ["viewer"],
                    "scopes": [],
                    "client_id": None,
                    "claims": {},
                },
                "server": {"name": "demo", "transport": "streamable_http"},
                "tool": {"name": "echo", "annotations": {"readOnlyHint": True}},
                "arguments": {"text": "x"},
                "session": {"id": None, "protocol_version": "2026-07-28"},
                "projection": {"version": 1},
            }
        }

        async def rtt() -> None:
            (await http.get(f"http://127.0.0.1:{stack.upstream_port}/_health")).raise_for_status()

        async def opa() -> None:
            r = await http.post(opa_url, json=opa_input)
            assert r.json()["result"]["decision"]["allow"] is True

        async def direct() -> None:
            r = await http.post(stack.upstream_url, json=_call("echo", "bench"), headers=_headers("echo"))
            assert r.json()["result"]["isError"] is False, r.text

        async def gateway() -> None:
            r = await http.post(gw_url, json=_call("demo__echo", "bench"), headers=_headers("demo__echo", token))
            assert r.json()["result"]["isError"] is False, r.text

        async def brokered() -> None:
            r = await http.post(gw_url, json=_call("demokey__echo", "bench"), headers=_headers("demokey__echo", token))
            assert r.json()["result"]["isError"] is False, r.text

        cases = {"rtt": rtt, "opa": opa, "direct": direct, "gateway": gateway, "brokered": brokered}
        out = await _latencies(cases, args.requests, args.warmup, args.rounds)
        for name in ("direct", "gateway", "brokered"):
            out[name]["throughput_rps"] = await _throughput(cases[name], args.concurrency, args.seconds)
        return out


def _register_brokered(stack: LocalStack) -> None:
    """``demokey``: the sample upstream again, requiring a credential bound to everyone."""
    server = {"name": "demokey", "transport": "streamable_http", "url": stack.upstream_url, "requires_credential": True}
    stack.admin("POST", "/v1/servers", server)
    secret = {"headers": {"X-Api-Key": "bench-" + os.urandom(8).hex()}}
    credential = stack.admin("POST", "/v1/credentials", {"name": "bench-key", "kind": "headers", "secret": secret})
    binding = {"server": "demokey", "subject": {"kind": "everyone"}, "credential_id": credential["id"]}
    stack.admin("POST", "/v1/credential-bindings", binding)
    stack.admin("POST", "/v1/servers/demokey/approve", {"comment": "reviewed"})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument(
        "--rounds", type=int, default=10, help="latency samples are taken in this many interleaved rounds"
    )
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--run-dir", default=str(PROJECT_ROOT / ".run" / "bench"))
    parser.add_argument("--servers", default="uvicorn,hypercorn", help="comma-separated GATEWAY_SERVER values")
    args = parser.parse_args()
    database_url = os.environ.get("DATABASE_URL")
    if not database_url:
        print("bench: DATABASE_URL is not set (run it with `make bench`)", file=sys.stderr)
        return 2
    opa_bin = os.environ.get("OPA_BIN") or str(PROJECT_ROOT / ".tools" / "bin" / "opa")
    run_dir = Path(args.run_dir)
    runs: dict[str, Any] = {}
    for server in args.servers.split(","):
        with LocalStack.create(
            run_dir / server, database_url=fresh_database(database_url, "gateway_bench"), opa_bin=opa_bin
        ) as stack:
            stack.extra_env["GATEWAY_SERVER"] = server
            stack.extra_env["GATEWAY_CREDENTIALS_KEK"] = base64.b64encode(os.urandom(32)).decode()
            stack.start_upstream()
            stack.start_gateway()
            stack.register_and_approve_server("demo", stack.upstream_url)
            _register_brokered(stack)
            stack.upload_and_approve_policy(sample_policy_modules())
            stack.wait_projection_active()
            results = asyncio.run(measure(stack, args))
        rtt = results["rtt"]["p50_ms"]
        runs[server] = {
            "results": results,
            "brokered_p50_in_rtt": (results["brokered"]["p50_ms"] - results["gateway"]["p50_ms"]) / rtt,
            "added_p50_ms": results["gateway"]["p50_ms"] - results["direct"]["p50_ms"],
            "added_p99_ms": results["gateway"]["p99_ms"] - results["direct"]["p99_ms"],
            "added_p50_in_rtt": (results["gateway"]["p50_ms"] - results["direct"]["p50_ms"]) / rtt,
        }
    for server, run in runs.items():
        print(f"\ngateway served by {server} (hot-path client: {os.environ.get('GATEWAY_HTTP_CLIENT', 'aiohttp')})")
        print(f"{'case':10} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8} {'req/s':>8}")
        for name, r in run["results"].items():
            rps = f"{r['throughput_rps']:8.0f}" if "throughput_rps" in r else f"{'':>8}"
            print(f"{name:10} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f} {r['mean_ms']:8.2f} {rps}")
        print(
            f"governed tools/call adds {run['added_p50_ms']:.2f} ms at p50 ({run['added_p50_in_rtt']:.1f} bare RTT) "
            f"and {run['added_p99_ms']:.2f} ms at p99 over calling the upstream directly"
        )
        print(
            f"a brokered credential (cached) adds {run['brokered_p50_in_rtt']:.2f} bare RTT at p50 to a governed call"
        )
    summary = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "params": vars(args),
        "runs": runs,
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "results.json").write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
