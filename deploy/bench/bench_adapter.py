"""`make bench` section ``api_adapter``: what a governed call to a REST API costs over calling it directly.

In the stack :mod:`bench` has just measured (``docs/performance.md`` "API adapter"):

1. **The REST endpoint.** :mod:`rest_echo` (Starlette under uvicorn, run like the sample MCP
   upstream) on a free port, registered as API source :data:`SOURCE` with its OpenAPI 3.1
   document (``POST /v1/api-sources``) and approved ``internal`` (a 127.0.0.1 base URL is
   refused otherwise); its one operation is tool ``benchrest__getItem`` on ``/mcp``.
2. **Latency, same run, interleaved.** In rounds (the order rotates by one each round):
   ``rest/direct`` -- ``GET /items/7?q=bench`` with the bench's shared raw httpx client, the
   ``accept`` and ``user-agent`` the adapter sends, the JSON body parsed (orjson): the very
   request the adapter makes; ``adapter/<era>/gateway`` -- ``tools/call benchrest__getItem
   {"id": 7, "q": "bench"}`` through the data plane with the raw driver, governed like any MCP
   call (bearer JWT, ``inputSchema``, OPA decision with ``server.transport = "openapi"``, audit),
   both eras; and, for the comparison, the MCP pair of the latency section in the same rounds:
   ``mcp/2026-07-28/direct`` and ``.../gateway`` (raw, ``echo`` with 100 B, sample upstream).
   Added latency = gateway - its direct, at p50 and p99, in ms and in RTT (the run's unit);
   ``adapter_minus_mcp`` = the adapter's added latency - the MCP one (2026-07-28), with the
   spread of each across rounds (``noise``).
3. **Throughput at concurrency 8** (closed loop, 8 workers, halves in the order direct,
   gateway, MCP gateway, MCP gateway, gateway, direct): the REST endpoint directly vs the
   adapter tool (raw, 2026-07-28), and the MCP ``demo__echo`` through the gateway in the same
   window; the gateway process's CPU (``/proc``) per adapter call and per MCP call.
4. **Governed.** OPA ``v1/data`` queries per adapter call (the sidecar's ``/metrics``; None
   with the embedded engine) and the newest audited decision of the source.
5. **The API client, in process.** The adapter reaches APIs with httpx (its own
   ``httpx.AsyncClient`` over a guarded transport) while MCP upstreams use the hot-path
   aiohttp client (:mod:`gateway.httpclient`). In this process, on the gateway's event loop
   kind (uvloop for uvicorn, asyncio for hypercorn), sequential round trips to the same
   endpoint on one keep-alive connection, interleaved: ``aiohttp`` and ``httpx`` (the two
   :mod:`gateway.httpclient` backends: request, read, ``orjson.loads``) and ``adapter``
   (:class:`gateway.apiadapter.upstream.ApiUpstream` ``call``: request building, the guarded
   httpx exchange, the capped read, the ``CallToolResult`` with ``outputSchema`` validation).
   ``httpx - aiohttp`` is what the client library costs per call; ``adapter - httpx`` the
   adapter's own work around it.

The REST endpoint is stopped at the end; the source stays registered (unused).
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
from bench_measure import Phases, added_vs_direct, closed_loop, cpu_seconds, pct, summary
from rest_echo import DOCUMENT, OPERATION_ID, item

HERE = Path(__file__).resolve().parent
SOURCE = "benchrest"
TOOL = f"{SOURCE}__{OPERATION_ID}"
ITEM_ID, QUERY = 7, "bench"
ARGUMENTS = {"id": ITEM_ID, "q": QUERY}
MODERN, LEGACY = "2026-07-28", "2025-11-25"
ADAPTER_ERAS = (MODERN, LEGACY)
CLIENT_CASES = ("aiohttp", "httpx", "adapter")

__all__ = ["RestEcho", "client_costs", "measure_adapter", "print_adapter"]

Call = Callable[[], Awaitable[Any]]


# --------------------------------------------------------------------------- the REST endpoint
class RestEcho:
    """``rest_echo.py`` as a process of its own on ``port`` (own session: stopped by group)."""

    def __init__(self, run_dir: Path, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        log = open(run_dir / "rest_echo.log", "ab")  # noqa: SIM115 - owned by the process
        argv = [sys.executable, str(HERE / "rest_echo.py"), "--port", str(port)]
        self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"rest_echo.py exited with {self.proc.returncode}; see {run_dir}/rest_echo.log")
            try:
                if httpx.get(f"{self.url}/_health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.close()
                raise TimeoutError(f"rest_echo.py not ready at {self.url} after 30 s")
            time.sleep(0.05)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _register(stack: Any, base_url: str) -> dict[str, Any]:
    """Register and approve :data:`SOURCE` (internal) and wait until every data plane serves it."""
    stack.admin("POST", "/v1/api-sources", {"name": SOURCE, "base_url": base_url, "document": DOCUMENT})
    approved: dict[str, Any] = stack.admin(
        "POST", f"/v1/api-sources/{SOURCE}/approve", {"comment": "make bench", "internal": True}
    )
    stack.wait_projection_active(timeout=60)
    return approved


def _latest_audit(stack: Any, timeout: float = 15) -> dict[str, Any] | None:
    """The newest audited decision of :data:`SOURCE`, polled until shipped (None after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        page = stack.admin("GET", f"/v1/audit/decisions?server={SOURCE}&limit=1")
        if page["items"]:
            found: dict[str, Any] = page["items"][0]
            return found
        if time.monotonic() > deadline:
            return None
        time.sleep(0.1)


async def _rounds(cases: dict[str, Call], n: int, warmup: int, rounds: int) -> dict[str, list[list[float]]]:
    """Latency samples (ms) per case and round; the case order rotates by one each round."""
    for fn in cases.values():
        for _ in range(warmup):
            await fn()
    names = list(cases)
    per_round = max(1, n // rounds)
    samples: dict[str, list[list[float]]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            fn, out = cases[name], []
            for _ in range(per_round):
                t0 = time.perf_counter()
                await fn()
                out.append((time.perf_counter() - t0) * 1000)
            samples[name].append(out)
    return samples


# --------------------------------------------------------------------------- measurement
async def measure_adapter(
    *,
    stack: Any,
    http: httpx.AsyncClient,
    token: str,
    open_raw: Callable[[str, str, str | None], Awaitable[Any]],
    free_port: Callable[[], int],
    opa_queries: Callable[[], Awaitable[float | None]],
    rtt: float,
    server: str,
    requests: int,
    warmup: int,
    rounds: int,
    c8_seconds: float,
    client_requests: int,
    client_rounds: int,
    mcp_added: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``api_adapter`` JSON section (see the module docstring for what each part means).

    Args:
        stack: The running ``LocalStack`` (control plane, data plane URL, run dir).
        http: The bench's shared raw client (the direct REST calls and the raw drivers).
        token: A bearer token of a ``viewer`` for the data plane.
        open_raw: ``open_raw(url, era, token)`` -> an opened raw driver (``call(tool, args)``).
        free_port: A free TCP port.
        opa_queries: OPA's ``v1/data`` request count so far, or None without a sidecar.
        rtt: The run's bare RTT p50, ms (the unit).
        server: The gateway's ASGI server (``uvicorn``: the in-process part runs on uvloop).
        requests: Calls per case in ``rounds`` interleaved rounds, after ``warmup`` per case.
        c8_seconds: Closed-loop seconds per target (two halves each).
        client_requests: Round trips per case of the in-process part, ``client_rounds`` rounds.
        mcp_added: The latency section's ``added["raw/2026-07-28/gateway"]`` (for reference).

    Returns:
        ``source``, ``latency`` (case -> p50/p99/mean ms), ``added`` (``adapter/<era>`` and
        ``mcp/2026-07-28``: added ms/RTT vs their direct), ``adapter_minus_mcp``,
        ``round_added_p50_ms``, ``noise``, ``throughput_c8``, ``governed``, ``client_in_process``,
        ``latency_section_mcp_added``, ``rtt_ms``, ``phase_seconds``.

    Raises:
        Whatever the set-up raises (registration refused, the endpoint not starting, a call
        failing); the caller reports it in the JSON.
    """
    phase = Phases()
    lap, phases = phase.lap, phase.seconds
    rest = await asyncio.to_thread(RestEcho, Path(stack.run_dir), free_port())
    try:
        approved = await asyncio.to_thread(_register, stack, rest.url)
        lap("start")
        url = f"{rest.url}/items/{ITEM_ID}?q={QUERY}"
        from gateway.apiadapter.request import ACCEPT, USER_AGENT

        headers = {"accept": ACCEPT, "user-agent": USER_AGENT}
        expected = item(ITEM_ID, QUERY)

        async def direct() -> None:
            resp = await http.get(url, headers=headers)
            if resp.status_code != 200 or orjson.loads(resp.content) != expected:
                raise RuntimeError(f"rest_echo answered {resp.status_code}: {resp.text[:200]}")

        gw_url = f"{stack.data_url}/mcp"
        cases: dict[str, Call] = {"rest/direct": direct}
        for era in ADAPTER_ERAS:
            drv = await open_raw(gw_url, era, token)
            cases[f"adapter/{era}/gateway"] = _bind(drv, TOOL, ARGUMENTS)
        text = {"text": "x" * 100}
        cases[f"mcp/{MODERN}/direct"] = _bind(await open_raw(stack.upstream_url, MODERN, None), "echo", text)
        cases[f"mcp/{MODERN}/gateway"] = _bind(await open_raw(gw_url, MODERN, token), "demo__echo", text)
        structured = await _check_result(http, gw_url, token)
        if structured != expected:
            raise RuntimeError(f"the adapter's structuredContent {structured!r} is not {expected!r}")
        lap("open_drivers")

        samples = await _rounds(cases, requests, warmup, rounds)
        lap("calls")
        out: dict[str, Any] = {
            "source": {
                "name": SOURCE,
                "tool": TOOL,
                "base_url": rest.url,
                "request": f"GET /items/{ITEM_ID}?q={QUERY}",
                "rest_server": "deploy/bench/rest_echo.py (Starlette, uvicorn)",
                "status": approved.get("status"),
            },
            "rtt_ms": rtt,
            "phase_seconds": phases,
        }
        out.update(_latency_part(samples, rtt))

        out["throughput_c8"] = await _throughput(
            {
                "direct": [direct] * 8,
                "gateway": [cases[f"adapter/{MODERN}/gateway"]] * 8,
                "mcp_gateway": [cases[f"mcp/{MODERN}/gateway"]] * 8,
            },
            c8_seconds,
            stack.procs["gateway"].pid,
        )
        lap("throughput_c8")

        k = 10
        before = await opa_queries()
        for _ in range(k):
            await cases[f"adapter/{MODERN}/gateway"]()
        after = await opa_queries()
        audit = await asyncio.to_thread(_latest_audit, stack)
        out["governed"] = {
            "policy_queries_per_call": None if before is None or after is None else round((after - before) / k, 2),
            "audit": None
            if audit is None
            else {key: audit.get(key) for key in ("server", "tool", "allowed", "status", "protocol_version")},
        }
        lap("governed")

        out["client_in_process"] = await asyncio.to_thread(
            client_costs, rest.url, use_uvloop=server == "uvicorn", n=client_requests, rounds=client_rounds
        )
        lap("client_in_process")
        out["latency_section_mcp_added"] = mcp_added
        return out
    finally:
        await asyncio.to_thread(rest.close)
        lap("stop")  # shown in the dict returned above (the same object)


def _bind(driver: Any, tool: str, arguments: dict[str, Any]) -> Call:
    async def call() -> None:
        await driver.call(tool, arguments)

    return call


async def _check_result(http: httpx.AsyncClient, gw_url: str, token: str) -> Any:
    """One adapter ``tools/call`` by hand (2026-07-28): its ``structuredContent``."""
    meta = {"io.modelcontextprotocol/protocolVersion": MODERN, "io.modelcontextprotocol/clientCapabilities": {}}
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": TOOL, "arguments": ARGUMENTS, "_meta": meta},
    }
    headers = {
        "authorization": f"Bearer {token}",
        "accept": "application/json, text/event-stream",
        "content-type": "application/json",
        "mcp-protocol-version": MODERN,
        "mcp-method": "tools/call",
        "mcp-name": TOOL,
    }
    resp = await http.post(gw_url, content=orjson.dumps(body), headers=headers)
    msg = orjson.loads(resp.content)
    if resp.status_code != 200 or "result" not in msg or msg["result"].get("isError"):
        raise RuntimeError(f"adapter tools/call: HTTP {resp.status_code}: {resp.text[:300]}")
    return msg["result"].get("structuredContent")


def _latency_part(samples: dict[str, list[list[float]]], rtt: float) -> dict[str, Any]:
    latency = {name: summary([s for rnd in rounds for s in rnd]) for name, rounds in samples.items()}
    pairs = {f"adapter/{era}": (f"adapter/{era}/gateway", "rest/direct") for era in ADAPTER_ERAS}
    pairs[f"mcp/{MODERN}"] = (f"mcp/{MODERN}/gateway", f"mcp/{MODERN}/direct")
    added: dict[str, dict[str, Any]] = {
        key: {"vs": d, **added_vs_direct(latency[g], latency[d], rtt)} for key, (g, d) in pairs.items()
    }
    a, m = added[f"adapter/{MODERN}"], added[f"mcp/{MODERN}"]
    minus: dict[str, float] = {}
    for q in ("p50", "p99"):
        d = a[f"added_{q}_ms"] - m[f"added_{q}_ms"]
        minus[f"{q}_ms"] = round(d, 4)
        minus[f"{q}_rtt"] = round(d / rtt, 3)
    round_added = {
        key: [round(pct(gr, 0.5) - pct(dr, 0.5), 4) for gr, dr in zip(samples[g], samples[d], strict=True)]
        for key, (g, d) in pairs.items()
    }
    noise = {}
    for key, values in round_added.items():
        stdev = statistics.stdev(values) if len(values) > 1 else 0.0
        noise[key] = {
            "rounds": len(values),
            "added_p50_min_ms": round(min(values), 4),
            "added_p50_max_ms": round(max(values), 4),
            "added_p50_stdev_ms": round(stdev, 4),
        }
    return {
        "latency": latency,
        "added": added,
        "adapter_minus_mcp": {"era": MODERN, **minus},
        "round_added_p50_ms": round_added,
        "noise": noise,
    }


async def _throughput(fns: dict[str, list[Call]], seconds: float, gateway_pid: int) -> dict[str, Any]:
    """Closed loop, one worker per function, per target for ``seconds`` in two halves (order
    ``direct, gateway, mcp_gateway, mcp_gateway, gateway, direct``), and the gateway process's
    CPU per call while it serves ``gateway`` (the adapter) and ``mcp_gateway`` (MCP ``echo``)."""
    done = dict.fromkeys(fns, 0)
    wall = dict.fromkeys(fns, 0.0)
    cpu = dict.fromkeys(fns, 0.0)
    await closed_loop([f for group in fns.values() for f in group], 0.3)  # warm the pools
    for target in ("direct", "gateway", "mcp_gateway", "mcp_gateway", "gateway", "direct"):
        c0 = cpu_seconds(gateway_pid)
        n, w = await closed_loop(fns[target], seconds / 2)
        cpu[target] += cpu_seconds(gateway_pid) - c0
        done[target] += n
        wall[target] += w
    rps = {t: round(done[t] / wall[t], 1) for t in done}
    return {
        "concurrency": len(fns["gateway"]),
        "direct_rps": rps["direct"],
        "gateway_rps": rps["gateway"],
        "ratio": round(rps["gateway"] / rps["direct"], 3),
        "mcp_gateway_rps": rps["mcp_gateway"],
        "gateway_over_mcp_gateway": round(rps["gateway"] / rps["mcp_gateway"], 3),
        "gateway_cpu_ms_per_call": {
            "adapter": round(cpu["gateway"] / done["gateway"] * 1000, 4),
            "mcp": round(cpu["mcp_gateway"] / done["mcp_gateway"] * 1000, 4),
        },
    }


# --------------------------------------------------------------------------- the API client, in process
def client_costs(base_url: str, *, use_uvloop: bool, n: int, rounds: int) -> dict[str, Any]:
    """p50 ms per sequential round trip to ``rest_echo`` in this thread: aiohttp vs httpx vs the adapter.

    Runs an event loop of its own (uvloop when ``use_uvloop``, as the gateway under uvicorn),
    so it must be called from a thread when a loop is running. Each case keeps one keep-alive
    connection; the cases are interleaved in ``rounds`` rounds of ``n // rounds`` calls (after
    ``max(20, n // 10)`` warm-up calls each).

    Returns:
        ``{"loop", "n", "p50_ms": {case: ms}, "round_p50_ms": {case: [ms per round]},
        "httpx_minus_aiohttp_ms", "adapter_minus_httpx_ms", "adapter_minus_aiohttp_ms"}``.
    """
    from gateway.apiadapter.binding import ApiSource
    from gateway.apiadapter.documents import check_document, load_document
    from gateway.apiadapter.operations import compile_source
    from gateway.apiadapter.request import ACCEPT, USER_AGENT
    from gateway.apiadapter.upstream import ApiUpstream
    from gateway.httpclient import create_http_client

    doc = load_document(DOCUMENT)
    check_document(doc)
    compiled = compile_source(doc)
    source = ApiSource(
        SOURCE,
        base_url,
        True,
        {op.tool: op for op in compiled.operations},
        {t["name"]: t["outputSchema"] for t in compiled.tools if "outputSchema" in t},
    )
    url = f"{base_url}/items/{ITEM_ID}?q={QUERY}"
    headers = {"accept": ACCEPT, "user-agent": USER_AGENT}
    expected = item(ITEM_ID, QUERY)
    params = {"name": OPERATION_ID, "arguments": ARGUMENTS}

    async def run() -> dict[str, list[list[float]]]:
        clients = {name: create_http_client(name, max_connections=1) for name in ("aiohttp", "httpx")}
        adapter = ApiUpstream(source)

        def via(name: str) -> Call:
            client = clients[name]

            async def call() -> None:
                async with client.request("GET", url, body=None, headers=headers, timeout=5) as resp:
                    if orjson.loads(await resp.read()) != expected:
                        raise RuntimeError(f"{name}: unexpected body")

            return call

        async def adapter_call() -> None:
            answer = await adapter.call("tools/call", params, credential=None)
            if answer["result"].get("structuredContent") != expected:
                raise RuntimeError(f"adapter: unexpected result {str(answer)[:200]}")

        cases = {"aiohttp": via("aiohttp"), "httpx": via("httpx"), "adapter": adapter_call}
        try:
            return await _rounds(cases, n, max(20, n // 10), rounds)
        finally:
            for client in clients.values():
                await client.aclose()
            await adapter.aclose()

    if use_uvloop:
        import uvloop

        samples = uvloop.run(run())
    else:
        samples = asyncio.run(run())
    p50 = {name: round(pct([s for r in rs for s in r], 0.5), 4) for name, rs in samples.items()}
    return {
        "loop": "uvloop" if use_uvloop else "asyncio",
        "thread": threading.current_thread().name,
        "n": {name: sum(len(r) for r in rs) for name, rs in samples.items()},
        "p50_ms": p50,
        "round_p50_ms": {name: [round(pct(r, 0.5), 4) for r in rs] for name, rs in samples.items()},
        "httpx_minus_aiohttp_ms": round(p50["httpx"] - p50["aiohttp"], 4),
        "adapter_minus_httpx_ms": round(p50["adapter"] - p50["httpx"], 4),
        "adapter_minus_aiohttp_ms": round(p50["adapter"] - p50["aiohttp"], 4),
    }


# --------------------------------------------------------------------------- output
def print_adapter(res: dict[str, Any]) -> None:
    """The section's lines of the human summary."""
    if "error" in res:
        print(f"api adapter: ERROR {res['error']}")
        return
    lat, added = res["latency"], res["added"]
    print(
        f"api adapter: REST direct p50 {lat['rest/direct']['p50_ms']:.3f} ms, p99 {lat['rest/direct']['p99_ms']:.3f} ms "
        f"({res['source']['request']}, {res['source']['tool']})"
    )
    for key, row in added.items():
        gw = lat[f"{key}/gateway"]
        print(
            f"api adapter {key:24}: gateway p50 {gw['p50_ms']:.3f} ms, added +{row['added_p50_ms']:.3f} ms "
            f"({row['added_p50_rtt']:.2f} RTT) p50, +{row['added_p99_ms']:.3f} ms ({row['added_p99_rtt']:.2f} RTT) p99 "
            f"(round spread {res['noise'][key]['added_p50_min_ms']:.3f}..{res['noise'][key]['added_p50_max_ms']:.3f} ms)"
        )
    m = res["adapter_minus_mcp"]
    print(
        f"api adapter - MCP added ({m['era']}): {m['p50_ms']:+.3f} ms ({m['p50_rtt']:+.2f} RTT) p50, "
        f"{m['p99_ms']:+.3f} ms ({m['p99_rtt']:+.2f} RTT) p99"
    )
    t = res["throughput_c8"]
    cpu = t["gateway_cpu_ms_per_call"]
    print(
        f"api adapter c8: direct {t['direct_rps']:.0f} req/s, gateway {t['gateway_rps']:.0f} req/s "
        f"(ratio {t['ratio']:.2f}), MCP through the gateway {t['mcp_gateway_rps']:.0f} req/s; gateway CPU per call "
        f"adapter {cpu['adapter']:.2f} ms, MCP {cpu['mcp']:.2f} ms"
    )
    print(
        f"api adapter governed: OPA queries per call {res['governed']['policy_queries_per_call']}; "
        f"audited: {res['governed']['audit']}"
    )
    c = res["client_in_process"]
    p = c["p50_ms"]
    print(
        f"api adapter client in process ({c['loop']}): p50 aiohttp {p['aiohttp']:.3f} ms, httpx {p['httpx']:.3f} ms, "
        f"adapter {p['adapter']:.3f} ms; httpx - aiohttp {c['httpx_minus_aiohttp_ms']:+.3f} ms, "
        f"adapter - httpx {c['adapter_minus_httpx_ms']:+.3f} ms"
    )
