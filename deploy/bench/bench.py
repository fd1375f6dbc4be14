"""`make bench`: what a governed MCP request costs over the same request made directly.

One run, one machine, loopback. For each decision engine (``GATEWAY_DECISION_ENGINE``) and
each ASGI server (``GATEWAY_SERVER``) it starts a fresh local stack -- gateway (both planes,
OPA sidecar unless the engine is embedded), PostgreSQL (database ``gateway_bench_<pid>``,
dropped afterwards), the sample upstream, and three benchmark upstreams with 10, 100 and 1,000 tools
(``deploy/bench/upstream_many.py``) -- and measures, everything within that stack:

* ``rtt`` -- a bare HTTP GET to the sample upstream's ``/_health`` with the raw client: **the
  unit** (its p50) every added latency is also given in;
* ``opa`` -- one decision straight to the OPA sidecar (when there is one);
* for each client (``raw`` httpx, ``sdk`` = ``mcp.Client``) x era (``2026-07-28`` stateless,
  ``2025-11-25`` session): ``tools/call echo`` (100 B) straight to the upstream (``direct``)
  and through the gateway (``gateway``), interleaved in rounds; plus ``brokered`` (raw,
  2026-07-28): through a server that requires a cached brokered credential;
* added latency = gateway - direct of the same client and era, in ms and in RTT, at p50 and p99;
* throughput at concurrency 8 (closed loop, 8 workers, direct/gateway/gateway/direct halves):
  req/s and gateway / direct;
* ``tools/call`` with 100 B, 10 KB and 1 MB arguments (raw, 2026-07-28, the 10-tool upstream);
* ``api_adapter`` (``bench_adapter.py``): a REST endpoint (``rest_echo.py``) registered as an API
  source; ``GET /items/7?q=bench`` directly vs its adapter tool through the gateway (raw, both
  eras), interleaved with the MCP raw 2026-07-28 pair; added latency next to MCP's; req/s at
  concurrency 8; OPA queries per call; httpx (the adapter's client) vs aiohttp (the MCP hot path)
  timed in process;
* ``tools/list`` of 10, 100 and 1,000 tools (``/mcp/<server>``), and the OPA queries per list
  (OPA's ``/metrics`` ``v1/data`` request count);
* saturation: closed loop at rising concurrency until req/s stops rising; CPU of the gateway
  and OPA from ``/proc`` -> req/s per core;
* CPU per call by stage (full runs only): ``py-spy record`` of the gateway during a closed
  loop, samples bucketed by :data:`bench_measure.STAGES`;
* peak RSS (``VmHWM``) of the gateway and OPA;
* ``observability`` (last, ``bench_obs.py``): tracing off vs on in two extra data planes, the
  on plane exporting to an OTLP sink in the bench (spans received per call), interleaved with
  the direct call; and the tracing-off hooks a call passes, timed in process, against the
  round-to-round noise of the added p50.

Results: ``<run-dir>/results.json`` and a printed summary; ``docs/performance.md`` explains
each number.

    make bench                                   # sidecar engine, uvicorn + hypercorn
    python deploy/bench/bench.py --engines sidecar,embedded --servers uvicorn
    python deploy/bench/bench.py --quick --run-dir /tmp/b   # a few seconds per case (the test)
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import traceback
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from bench_adapter import measure_adapter, print_adapter
from bench_drivers import ERAS, MODERN, Driver, open_driver
from bench_measure import (
    FALLBACK,
    STAGES,
    CpuMeter,
    Phases,
    added_vs_direct,
    bucket_profile,
    closed_loop,
    cpu_seconds,
    interleaved_latencies,
    start_py_spy,
    vm_hwm_kib,
)
from bench_obs import measure_observability, print_observability
from reload import measure_reload

from gateway.config import PROJECT_ROOT
from gateway.devtools.stack import LocalStack, drop_database, free_port, fresh_database, sample_policy_modules

HERE = Path(__file__).resolve().parent
CLIENTS = ("raw", "sdk")
SIZES = {"100B": 100, "10KB": 10 * 1024, "1MB": 1024 * 1024}
ENGINE_ENV = "GATEWAY_DECISION_ENGINE"


# --------------------------------------------------------------------------- stack set-up
class Upstreams:
    """The benchmark upstreams (``upstream_many.py``), one process per tool count."""

    def __init__(self, run_dir: Path, counts: list[int]) -> None:
        self.ports = {n: free_port() for n in counts}
        self.procs: list[subprocess.Popen[bytes]] = []
        for n, port in self.ports.items():
            log = open(run_dir / f"upstream_many_{n}.log", "ab")  # noqa: SIM115 - owned by the process
            argv = [sys.executable, str(HERE / "upstream_many.py"), "--port", str(port), "--tools", str(n)]
            self.procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
            log.close()
        deadline = time.monotonic() + 60
        for n in counts:
            while True:
                try:
                    if httpx.get(f"http://127.0.0.1:{self.ports[n]}/_health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"upstream_many --tools {n} did not start; see {run_dir}")
                time.sleep(0.1)

    def url(self, n: int) -> str:
        return f"http://127.0.0.1:{self.ports[n]}/mcp"

    def close(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _register_brokered(stack: LocalStack) -> None:
    """``demokey``: the sample upstream again, requiring a credential bound to everyone."""
    server = {"name": "demokey", "transport": "streamable_http", "url": stack.upstream_url, "requires_credential": True}
    stack.admin("POST", "/v1/servers", server)
    secret = {"headers": {"X-Api-Key": "bench-" + os.urandom(8).hex()}}
    credential = stack.admin("POST", "/v1/credentials", {"name": "bench-key", "kind": "headers", "secret": secret})
    binding = {"server": "demokey", "subject": {"kind": "everyone"}, "credential_id": credential["id"]}
    stack.admin("POST", "/v1/credential-bindings", binding)
    stack.admin("POST", "/v1/servers/demokey/approve", {"comment": "reviewed"})


# --------------------------------------------------------------------------- measurement
class Bench:
    """One stack's measurements (see the module docstring); :meth:`run` returns the JSON section."""

    def __init__(self, stack: LocalStack, ups: Upstreams, args: argparse.Namespace) -> None:
        self.stack, self.ups, self.args = stack, ups, args
        self.token = stack.idp.mint("bench", ["viewer"], stack.audience, ttl_seconds=7200)
        self.gw_url = f"{stack.data_url}/mcp"
        self.gw_pid = stack.procs["gateway"].pid
        self.opa_pid = stack.opa_pid()
        self.upstream_pid = stack.procs["upstream"].pid
        self.stack_exit = AsyncExitStack()
        self.http: httpx.AsyncClient

    async def _driver(self, kind: str, era: str, target: str, url: str | None = None) -> Driver:
        if url is None:
            url = self.stack.upstream_url if target == "direct" else self.gw_url
        token = None if target == "direct" else self.token
        drv = await open_driver(kind, self.http, url, token, era)
        self.stack_exit.push_async_callback(drv.close)
        return drv

    async def run(self) -> dict[str, Any]:
        limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
        async with httpx.AsyncClient(limits=limits, timeout=120) as self.http, self.stack_exit:
            out: dict[str, Any] = {}
            phase = Phases()
            lap, phases = phase.lap, phase.seconds

            out["latency"] = await self.latency()
            lap("latency")
            rtt = out["latency"]["rtt"]["p50_ms"]
            out["rtt_ms"] = {"p50": rtt, "p99": out["latency"]["rtt"]["p99_ms"]}
            out["added"] = _added(out["latency"], rtt)
            out["throughput_c8"] = await self.throughput_c8()
            lap("throughput_c8")
            out["reconciliation"] = _reconcile(out)
            out["arg_sizes"] = await self.arg_sizes(rtt)
            lap("arg_sizes")
            out["api_adapter"] = await self.api_adapter(rtt, out["added"].get(f"raw/{MODERN}/gateway"))
            lap("api_adapter")
            out["tools_list"] = await self.tools_list(rtt)
            lap("tools_list")
            out["saturation"] = await self.saturation()
            lap("saturation")
            out["stage_cpu"] = await self.stage_cpu() if not self.args.quick else {"skipped": "--quick"}
            lap("stage_cpu")
            # Last: it approves other policy versions (and the sample policy again at the end).
            out["reload"] = measure_reload(self.stack, self.token, rounds=1 if self.args.quick else 4)
            lap("reload")
            # After reload: the two extra data planes it starts must not be live (and stale)
            # while reload waits for every live data plane to converge.
            out["observability"] = await self.observability(rtt)
            lap("observability")
            out["phase_seconds"] = phases
        out["peak_rss_kib"] = {"gateway": vm_hwm_kib(self.gw_pid), "opa": vm_hwm_kib(self.opa_pid)}
        return out

    async def latency(self) -> dict[str, Any]:
        text = "x" * SIZES["100B"]
        cases: dict[str, Any] = {}
        health = f"http://127.0.0.1:{self.stack.upstream_port}/_health"

        async def rtt() -> None:
            (await self.http.get(health)).raise_for_status()

        cases["rtt"] = rtt
        if self.opa_pid is not None:
            opa_url = f"http://127.0.0.1:{self.stack.opa_port}/v1/data/gateway_runtime/main/call"
            body = {"input": _opa_input(self.stack)}

            async def opa() -> None:
                r = await self.http.post(opa_url, json=body)
                assert r.json()["result"]["decision"]["allow"] is True, r.text

            cases["opa"] = opa
        for era in ERAS:
            for kind in CLIENTS:
                direct = await self._driver(kind, era, "direct")
                gateway = await self._driver(kind, era, "gateway")
                cases[f"{kind}/{era}/direct"] = _bind(direct, "echo", text)
                cases[f"{kind}/{era}/gateway"] = _bind(gateway, "demo__echo", text)
        brokered = await self._driver("raw", MODERN, "gateway")
        cases[f"raw/{MODERN}/brokered"] = _bind(brokered, "demokey__echo", text)
        a = self.args
        return await interleaved_latencies(cases, a.requests, a.warmup, a.rounds)

    async def throughput_c8(self) -> dict[str, Any]:
        """Closed loop, 8 workers (each its own session/SDK client; raw stateless shares a pool)."""
        text = "x" * SIZES["100B"]
        out: dict[str, Any] = {}
        half = self.args.seconds / 2
        for era in ERAS:
            for kind in CLIENTS:
                fns: dict[str, list[Any]] = {}
                for target, tool in (("direct", "echo"), ("gateway", "demo__echo")):
                    drivers = [await self._driver(kind, era, target) for _ in range(8)]
                    fns[target] = [_bind(d, tool, text) for d in drivers]
                done = {"direct": 0, "gateway": 0}
                wall = {"direct": 0.0, "gateway": 0.0}
                await closed_loop(fns["direct"] + fns["gateway"], 0.3)  # warm every session
                for target in ("direct", "gateway", "gateway", "direct"):
                    n, w = await closed_loop(fns[target], half)
                    done[target] += n
                    wall[target] += w
                rps = {t: round(done[t] / wall[t], 1) for t in done}
                out[f"{kind}/{era}"] = {
                    "direct_rps": rps["direct"],
                    "gateway_rps": rps["gateway"],
                    "ratio": round(rps["gateway"] / rps["direct"], 3),
                }
        return out

    async def arg_sizes(self, rtt: float) -> dict[str, Any]:
        """``tools/call echo`` with 100 B / 10 KB / 1 MB text (raw, 2026-07-28, 10-tool upstream)."""
        direct = await self._driver("raw", MODERN, "direct", self.ups.url(10))
        gateway = await self._driver("raw", MODERN, "gateway")
        out: dict[str, Any] = {}
        for label, size in SIZES.items():
            text = "x" * size
            n = self.args.requests_1mb if size >= 1024 * 1024 else self.args.requests_sizes
            cases = {"direct": _bind(direct, "echo", text), "gateway": _bind(gateway, "many10__echo", text)}
            res = await interleaved_latencies(cases, n, max(2, n // 10), max(1, min(self.args.rounds, n // 2)))
            out[label] = {"bytes": size, **res, **added_vs_direct(res["gateway"], res["direct"], rtt)}
        return out

    async def api_adapter(self, rtt: float, mcp_added: dict[str, Any] | None) -> dict[str, Any]:
        """A REST endpoint directly vs its API-adapter tool through the gateway (``bench_adapter``)."""

        async def open_raw(url: str, era: str, token: str | None) -> Driver:
            return await self._driver("raw", era, "direct" if token is None else "gateway", url)

        a = self.args
        try:
            return await measure_adapter(
                stack=self.stack,
                http=self.http,
                token=self.token,
                open_raw=open_raw,
                free_port=free_port,
                opa_queries=self._opa_queries,
                rtt=rtt,
                server=self.stack.extra_env.get("GATEWAY_SERVER", "uvicorn"),
                requests=a.requests,
                warmup=a.warmup,
                rounds=a.rounds,
                c8_seconds=a.seconds,
                client_requests=60 if a.quick else 2000,
                client_rounds=2 if a.quick else 5,
                mcp_added=mcp_added,
            )
        except Exception as exc:  # noqa: BLE001 - reported in the JSON; the stack's other sections stand
            return {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-3000:]}

    async def tools_list(self, rtt: float) -> dict[str, Any]:
        """``tools/list`` of N tools: the N-tool upstream directly vs ``/mcp/many<N>``."""
        out: dict[str, Any] = {}
        for n_tools in self.ups.ports:
            direct = await self._driver("raw", MODERN, "direct", self.ups.url(n_tools))
            gateway = await self._driver("raw", MODERN, "gateway", f"{self.gw_url}/many{n_tools}")
            got = len(await gateway.list())
            if got != n_tools:
                raise RuntimeError(f"the gateway listed {got} of {n_tools} tools")
            n = max(4, self.args.requests_list // {10: 1, 100: 3}.get(n_tools, 10))
            cases = {"direct": direct.list, "gateway": gateway.list}
            res = await interleaved_latencies(cases, n, max(2, n // 10), max(1, min(self.args.rounds, n // 2)))
            before = await self._opa_queries()
            k = 5
            for _ in range(k):
                await gateway.list()
            after = await self._opa_queries()
            queries = None if before is None or after is None else round((after - before) / k, 2)
            out[str(n_tools)] = {"tools": n_tools, **res, **added_vs_direct(res["gateway"], res["direct"], rtt)}
            out[str(n_tools)]["policy_queries_per_list"] = queries
        return out

    async def _opa_queries(self) -> float | None:
        """OPA's count of ``v1/data`` requests (Prometheus ``/metrics``), or None without OPA."""
        if self.opa_pid is None:
            return None
        resp = await self.http.get(f"http://127.0.0.1:{self.stack.opa_port}/metrics")
        total = 0.0
        for line in resp.text.splitlines():
            if line.startswith("http_request_duration_seconds_count{") and 'handler="v1/data"' in line:
                total += float(line.rsplit(" ", 1)[1])
        return total

    async def observability(self, rtt: float) -> dict[str, Any]:
        """Tracing on vs off in two extra data planes, and the off path's hooks in process (``bench_obs``)."""

        async def open_raw(url: str, era: str, token: str | None) -> Driver:
            return await self._driver("raw", era, "direct" if token is None else "gateway", url)

        a = self.args
        try:
            return await measure_observability(
                stack=self.stack,
                http=self.http,
                token=self.token,
                open_raw=open_raw,
                free_port=free_port,
                cpu_seconds=cpu_seconds,
                rtt=rtt,
                requests=20 if a.quick else a.requests,
                warmup=3 if a.quick else a.warmup,
                rounds=5 if a.quick else a.rounds,
                timeit_number=2000 if a.quick else 20000,
                timeit_repeat=3 if a.quick else 7,
            )
        except Exception as exc:  # noqa: BLE001 - reported in the JSON; the stack's other sections stand
            return {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-3000:]}

    def _meter(self) -> CpuMeter:
        return CpuMeter(
            {"gateway": self.gw_pid, "opa": self.opa_pid, "upstream": self.upstream_pid, "driver": os.getpid()}
        )

    async def saturation(self) -> dict[str, Any]:
        """Closed loop (raw, 2026-07-28, 100 B) at rising concurrency until req/s stops rising (< +3 %)."""
        gateway = await self._driver("raw", MODERN, "gateway")
        call = _bind(gateway, "demo__echo", "x" * SIZES["100B"])
        steps: list[dict[str, Any]] = []
        best: dict[str, Any] | None = None
        for c in self.args.saturation_levels:
            await closed_loop([call] * c, 0.2)
            meter = self._meter()
            n, wall = await closed_loop([call] * c, self.args.saturation_seconds)
            cores = meter.stop()
            rps = n / wall
            gw_cores = cores["gateway"] + cores["opa"]
            step = {
                "concurrency": c,
                "rps": round(rps, 1),
                "cores": cores,
                "gateway_plus_opa_cores": round(gw_cores, 3),
                "rps_per_core": round(rps / gw_cores, 1) if gw_cores > 0 else None,
            }
            steps.append(step)
            if best is not None and rps < best["rps"] * 1.03:
                break
            if best is None or rps > best["rps"]:
                best = step
        return {"steps": steps, "peak": best}

    async def stage_cpu(self) -> dict[str, Any]:
        """Gateway CPU per call by stage: py-spy samples (shares) x /proc CPU (absolute)."""
        py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if not Path(py_spy).exists():
            return {"error": "py-spy is not installed (pip install py-spy)"}
        gateway = await self._driver("raw", MODERN, "gateway")
        call = _bind(gateway, "demo__echo", "x" * SIZES["100B"])
        await closed_loop([call] * 8, 0.5)
        raw_path = Path(self.stack.run_dir) / "py-spy.raw.txt"
        seconds = self.args.profile_seconds
        proc = start_py_spy(py_spy, self.gw_pid, seconds, raw_path, self.args.profile_rate)
        await asyncio.sleep(0.5)  # attach
        meter = self._meter()
        calls, wall = await closed_loop([call] * 8, seconds - 1.0)
        cores = meter.stop()
        _, err = await asyncio.to_thread(proc.communicate)
        if proc.returncode != 0 or not raw_path.exists():
            return {"error": f"py-spy failed ({proc.returncode}): {err.decode(errors='replace')[-500:]}"}
        gw_ms = cores["gateway"] * wall / calls * 1000
        return {
            "calls": calls,
            "rps": round(calls / wall, 1),
            "rate_hz": self.args.profile_rate,
            "gateway_cpu_ms_per_call": round(gw_ms, 4),
            "opa_cpu_ms_per_call": round(cores["opa"] * wall / calls * 1000, 4),
            "upstream_cpu_ms_per_call": round(cores["upstream"] * wall / calls * 1000, 4),
            "driver_cpu_ms_per_call": round(cores["driver"] * wall / calls * 1000, 4),
            **_stages(raw_path, gw_ms),
        }


def _stages(raw_path: Path, gw_ms: float) -> dict[str, Any]:
    """Samples per stage of a raw py-spy profile, and ``gw_ms`` (gateway CPU per call) split by them."""
    samples = bucket_profile(raw_path.read_text())
    total = sum(samples.values())
    per_stage = {
        stage: {"samples": count, "share": round(count / total, 4), "cpu_ms_per_call": round(gw_ms * count / total, 4)}
        for stage, count in sorted(samples.items(), key=lambda kv: -kv[1])
    }
    return {
        "samples": total,
        "stages": per_stage,
        "stage_table": [[stage, path, sorted(funcs) if funcs else None] for stage, path, funcs in STAGES],
        "fallback_table": [list(row) for row in FALLBACK],
        "raw_profile": str(raw_path),
    }


def restage(results: Path) -> None:
    """Re-bucket the stored py-spy profiles of ``results`` with the current tables (in place)."""
    summary = json.loads(results.read_text())
    for run in summary["runs"].values():
        sc = run.get("stage_cpu", {})
        if "raw_profile" in sc and Path(sc["raw_profile"]).exists():
            sc.update(_stages(Path(sc["raw_profile"]), sc["gateway_cpu_ms_per_call"]))
    results.write_text(json.dumps(summary, indent=2))


def _bind(driver: Driver, tool: str, text: str) -> Any:
    arguments = {"text": text}

    async def call() -> None:
        await driver.call(tool, arguments)

    return call


def _added(latency: dict[str, Any], rtt: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, res in latency.items():
        kind, _, rest = name.partition("/")
        era, _, target = rest.partition("/")
        if target in ("gateway", "brokered"):
            direct = latency[f"{kind}/{era}/direct"]
            out[name] = {"vs": f"{kind}/{era}/direct", **added_vs_direct(res, direct, rtt)}
    return out


def _reconcile(out: dict[str, Any]) -> dict[str, Any]:
    """The raw client next to the SDK client, per era: where the two methods differ."""
    lat, added, tput = out["latency"], out["added"], out["throughput_c8"]
    rec: dict[str, Any] = {}
    for era in ERAS:
        row: dict[str, Any] = {}
        for kind in CLIENTS:
            d, g = lat[f"{kind}/{era}/direct"]["p50_ms"], lat[f"{kind}/{era}/gateway"]["p50_ms"]
            a = added[f"{kind}/{era}/gateway"]
            row[kind] = {
                "direct_p50_ms": d,
                "gateway_p50_ms": g,
                "added_p50_ms": a["added_p50_ms"],
                "added_p50_rtt": a["added_p50_rtt"],
                "added_p99_rtt": a["added_p99_rtt"],
                "gateway_over_direct_p50": round(g / d, 3),
                "c8_ratio": tput[f"{kind}/{era}"]["ratio"],
            }
        row["sdk_client_cost_p50_ms"] = round(row["sdk"]["direct_p50_ms"] - row["raw"]["direct_p50_ms"], 4)
        row["sdk_minus_raw_added_p50_ms"] = round(row["sdk"]["added_p50_ms"] - row["raw"]["added_p50_ms"], 4)
        rec[era] = row
    return rec


def _opa_input(stack: LocalStack) -> dict[str, Any]:
    return {
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
        "arguments": {"text": "x" * SIZES["100B"]},
        "session": {"id": None, "protocol_version": MODERN},
        "projection": {"version": 1},
    }


# --------------------------------------------------------------------------- one stack
def run_stack(engine: str, server: str, args: argparse.Namespace, database_url: str, opa_bin: str) -> dict[str, Any]:
    """Start a fresh stack for ``engine`` x ``server`` and measure it; failures are reported, not raised."""
    started = time.time()
    section: dict[str, Any] = {"engine": engine, "server": server, "loadavg_start": os.getloadavg()}
    run_dir = Path(args.run_dir) / f"{engine}-{server}"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    ups: Upstreams | None = None
    try:
        db = fresh_database(database_url, args.database)
        with LocalStack.create(run_dir, database_url=db, opa_bin=opa_bin) as stack:
            stack.extra_env["GATEWAY_SERVER"] = server
            stack.extra_env[ENGINE_ENV] = engine
            stack.extra_env["GATEWAY_CREDENTIALS_KEK"] = base64.b64encode(os.urandom(32)).decode()
            stack.start_upstream()
            ups = Upstreams(run_dir, args.tool_counts)
            stack.start_gateway()
            stack.register_and_approve_server("demo", stack.upstream_url)
            _register_brokered(stack)
            for n in args.tool_counts:
                stack.register_and_approve_server(f"many{n}", ups.url(n))
            stack.upload_and_approve_policy(sample_policy_modules())
            stack.wait_projection_active(timeout=60)
            section["setup_seconds"] = round(time.time() - started, 1)
            section.update(asyncio.run(Bench(stack, ups, args).run()))
    except Exception as exc:  # noqa: BLE001 - reported in the JSON, the next stack still runs
        section["error"] = f"{type(exc).__name__}: {exc}"
        section["traceback"] = traceback.format_exc()[-3000:]
    finally:
        if ups is not None:
            ups.close()
        _drop_database(database_url, args.database)
    section["loadavg_end"] = os.getloadavg()
    section["seconds"] = round(time.time() - started, 1)
    return section


def _drop_database(database_url: str, name: str) -> None:
    async def _drop() -> None:
        conn = await asyncpg.connect(database_url)
        try:
            await drop_database(conn, name)
        finally:
            await conn.close()

    try:
        asyncio.run(_drop())
    except Exception as exc:  # noqa: BLE001 - a leftover database is not worth failing the run
        print(f"bench: could not drop database {name}: {exc}", file=sys.stderr)


# --------------------------------------------------------------------------- output
def _print_run(name: str, run: dict[str, Any]) -> None:
    print(f"\n=== {name}  (load average {run['loadavg_start'][0]:.2f} -> {run['loadavg_end'][0]:.2f})")
    if "error" in run:
        print(f"ERROR: {run['error']}")
        return
    rtt = run["rtt_ms"]
    print(f"bare RTT p50 {rtt['p50']:.3f} ms, p99 {rtt['p99']:.3f} ms (the unit)")
    print(f"{'case':28} {'p50 ms':>8} {'p99 ms':>8} {'+p50 RTT':>9} {'+p99 RTT':>9} {'c8 ratio':>9}")
    for case, r in run["latency"].items():
        add = run["added"].get(case)
        kind, _, rest = case.partition("/")
        era = rest.partition("/")[0]
        tput = run["throughput_c8"].get(f"{kind}/{era}") if case.endswith("/gateway") else None
        cols = f"{add['added_p50_rtt']:9.2f} {add['added_p99_rtt']:9.2f}" if add else f"{'':9} {'':9}"
        ratio = f"{tput['ratio']:9.2f}" if tput else ""
        print(f"{case:28} {r['p50_ms']:8.3f} {r['p99_ms']:8.3f} {cols} {ratio}")
    for era, row in run["reconciliation"].items():
        print(
            f"{era}: added p50 raw {row['raw']['added_p50_ms']:.3f} ms ({row['raw']['added_p50_rtt']:.2f} RTT), "
            f"sdk {row['sdk']['added_p50_ms']:.3f} ms ({row['sdk']['added_p50_rtt']:.2f} RTT); "
            f"SDK client cost {row['sdk_client_cost_p50_ms']:.3f} ms/call"
        )
    for label, r in run["arg_sizes"].items():
        print(f"tools/call {label:5}: direct p50 {r['direct']['p50_ms']:.2f} ms, +{r['added_p50_ms']:.2f} ms ", end="")
        print(f"({r['added_p50_rtt']:.2f} RTT) p50, +{r['added_p99_ms']:.2f} ms p99")
    if "api_adapter" in run:
        print_adapter(run["api_adapter"])
    for n, r in run["tools_list"].items():
        print(
            f"tools/list {n:>5}: direct p50 {r['direct']['p50_ms']:.2f} ms, gateway {r['gateway']['p50_ms']:.2f} ms, ",
            end="",
        )
        print(f"+{r['added_p50_rtt']:.2f} RTT; OPA queries per list: {r['policy_queries_per_list']}")
    peak = run["saturation"]["peak"]
    print(
        f"saturation: peak {peak['rps']:.0f} req/s at concurrency {peak['concurrency']}, "
        f"gateway+OPA {peak['gateway_plus_opa_cores']:.2f} cores -> {peak['rps_per_core']} req/s per core"
    )
    sc = run["stage_cpu"]
    if "stages" in sc:
        parts = ", ".join(f"{s} {v['cpu_ms_per_call']:.3f}" for s, v in sc["stages"].items())
        print(f"gateway CPU per call {sc['gateway_cpu_ms_per_call']:.3f} ms: {parts}")
    else:
        print(f"stage CPU: {sc}")
    rss = run["peak_rss_kib"]
    print(f"peak RSS: gateway {rss['gateway']} KiB, OPA {rss['opa']} KiB")
    reload = run["reload"]
    print(f"policy reload (approval -> first call decided by it): p50 {reload['p50_ms']:.0f} ms, ", end="")
    print(f"max {reload['max_ms']:.0f} ms over {reload['n']}")
    if "observability" in run:
        print_observability(run["observability"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a few seconds per case, one server, one engine")
    parser.add_argument("--engines", default=None, help="comma-separated GATEWAY_DECISION_ENGINE values (sidecar)")
    parser.add_argument("--servers", default=None, help="comma-separated GATEWAY_SERVER values (uvicorn,hypercorn)")
    parser.add_argument("--requests", type=int, default=None, help="latency samples per case (1000)")
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (10)")
    parser.add_argument("--seconds", type=float, default=None, help="closed loop at concurrency 8, per target (4)")
    parser.add_argument("--run-dir", default=str(PROJECT_ROOT / ".run" / "bench"))
    parser.add_argument(
        "--database",
        default=f"gateway_bench_{os.getpid()}",
        help="database, re-created per stack and dropped after it (default gateway_bench_<pid>, so concurrent runs "
        "never share one)",
    )
    parser.add_argument("--restage", action="store_true", help="only re-bucket <run-dir>/results.json's profiles")
    args = parser.parse_args()
    if args.restage:
        restage(Path(args.run_dir) / "results.json")
        return 0
    quick = args.quick
    defaults: dict[str, Any] = {
        "engines": "sidecar" if quick else "sidecar,embedded",
        "servers": "uvicorn" if quick else "uvicorn,hypercorn",
        "requests": 30 if quick else 1000,
        "warmup": 5 if quick else 100,
        "rounds": 2 if quick else 10,
        "seconds": 0.25 if quick else 4.0,
    }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.tool_counts = [10, 100] if quick else [10, 100, 1000]
    args.requests_sizes = 12 if quick else 400
    args.requests_1mb = 4 if quick else 40
    args.requests_list = 12 if quick else 300
    args.saturation_levels = [1, 4, 8] if quick else [1, 2, 4, 8, 16, 32, 64]
    args.saturation_seconds = 0.5 if quick else 3.0
    args.profile_seconds = 10.0
    args.profile_rate = 200
    database_url = os.environ.get("DATABASE_URL")
    if not database_url:
        print("bench: DATABASE_URL is not set (run it with `make bench`)", file=sys.stderr)
        return 2
    opa_bin = os.environ.get("OPA_BIN") or str(PROJECT_ROOT / ".tools" / "bin" / "opa")
    runs: dict[str, Any] = {}
    load_start = os.getloadavg()
    for engine in args.engines.split(","):
        for server in args.servers.split(","):
            name = f"{engine}/{server}"
            print(f"bench: {name} ...", flush=True)
            runs[name] = run_stack(engine, server, args, database_url, opa_bin)
            _print_run(name, runs[name])
    summary = {
        "generated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "loadavg_start": load_start,
            "loadavg_end": os.getloadavg(),
        },
        "params": {k: v for k, v in vars(args).items()},
        "units": {
            "rtt": "p50 of a bare HTTP GET /_health to the sample upstream, raw httpx client, same run and stack",
            "added_*_rtt": "(gateway - direct) of the same client and era, at that percentile, divided by RTT p50",
            "ratio": "gateway req/s / direct req/s, closed loop, 8 workers, same client and era",
            "rps_per_core": "req/s / (gateway + OPA CPU seconds per wall second)",
            "api_adapter.added": "(adapter tool through the gateway - the same REST GET made directly with the raw "
            "client) at that percentile, ms and / RTT p50; mcp/2026-07-28: the MCP raw pair in the same rounds",
            "api_adapter.client_in_process": "p50 ms per sequential GET to the REST endpoint in the bench process "
            "(the gateway's loop kind): aiohttp and httpx backends of gateway.httpclient, and ApiUpstream.call",
            "observability.off_path_us_per_call": "observability hooks a governed call passes with tracing off "
            "(counted on the live data planes) x microseconds per hook (timeit, median repeat, bench process)",
        },
        "runs": runs,
    }
    run_dir = Path(args.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "results.json").write_text(json.dumps(summary, indent=2))
    print(f"\nwritten: {run_dir / 'results.json'}")
    return 1 if all("error" in r for r in runs.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
