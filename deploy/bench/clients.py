"""Micro-benchmark of the hot-path HTTP client backends against a real OPA.

Sequential ``POST /v1/data/gateway_runtime/main/call`` round trips on one
keep-alive connection, with each backend of :mod:`gateway.httpclient` (and raw
httpcore for reference), interleaved over several rounds; prints the p50 per
round in milliseconds. This is how the default backend was chosen.

    .venv/bin/python deploy/bench/clients.py [--requests 1500] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable

import httpcore
import orjson

from gateway.config import PROJECT_ROOT
from gateway.devtools.stack import free_port
from gateway.httpclient import create_http_client

INPUT = {
    "input": {
        "action": "tools/call",
        "subject": {"roles": ["viewer"]},
        "tool": {"name": "echo", "annotations": {"readOnlyHint": True}},
    }
}


def _wait(port: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError("opa did not start")


async def _p50(fn: Callable[[], Awaitable[None]], n: int) -> float:
    for _ in range(200):
        await fn()
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        await fn()
        samples.append((time.perf_counter() - t0) * 1000)
    samples.sort()
    return samples[len(samples) // 2]


async def run(url: str, requests: int, rounds: int) -> dict[str, list[float]]:
    body = orjson.dumps(INPUT)
    headers = {"content-type": "application/json"}
    clients = {name: create_http_client(name) for name in ("aiohttp", "httpx")}
    pool = httpcore.AsyncConnectionPool()

    def via(name: str) -> Callable[[], Awaitable[None]]:
        async def call() -> None:
            async with clients[name].request("POST", url, body=body, headers=headers, timeout=5) as resp:
                assert orjson.loads(await resp.read())["result"]["decision"]["allow"] is True

        return call

    async def raw_httpcore() -> None:
        resp = await pool.request("POST", url, content=body, headers=headers)
        assert orjson.loads(resp.content)["result"]["decision"]["allow"] is True

    cases = {"aiohttp": via("aiohttp"), "httpx": via("httpx"), "httpcore": raw_httpcore}
    results: dict[str, list[float]] = {name: [] for name in cases}
    try:
        for _ in range(rounds):
            for name, fn in cases.items():
                results[name].append(round(await _p50(fn, requests), 3))
    finally:
        for client in clients.values():
            await client.aclose()
        await pool.aclose()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1500)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    opa = os.environ.get("OPA_BIN") or str(PROJECT_ROOT / ".tools" / "bin" / "opa")
    port = free_port()
    proc = subprocess.Popen(
        [opa, "run", "--server", "--addr", f"127.0.0.1:{port}", "--skip-version-check", str(PROJECT_ROOT / "policies")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait(port)
        results = asyncio.run(
            run(f"http://127.0.0.1:{port}/v1/data/gateway_runtime/main/call", args.requests, args.rounds)
        )
    finally:
        proc.terminate()
        proc.wait()
    print("p50 ms per OPA round trip, per round:")
    for name, p50s in results.items():
        print(f"  {name:9} {p50s}")


if __name__ == "__main__":
    main()
