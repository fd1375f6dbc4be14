"""`make bench` section ``observability``: what traces and metrics cost a governed call.

Two measurements, both in the stack :mod:`bench` has just measured (``docs/performance.md``
"Observability cost"):

1. **Tracing on vs off, same run.** Two extra data planes (``gateway serve --plane data``;
   with the sidecar engine both use the stack's OPA sidecar, with the embedded engine each has
   its own OPA in process) join the stack's control plane, identical but for one variable: ``off`` has no OTLP endpoint, ``on`` has
   ``GATEWAY_OTLP_ENDPOINT`` pointing at :class:`OtlpSink`, a tiny OTLP/HTTP receiver this
   module runs as a process of its own (``POST /v1/traces``, protobuf decoded and its spans
   counted, ``GET /counts``). The governed raw-httpx ``tools/call`` (100 B, both eras) goes to
   the upstream directly, through ``off`` and through ``on``, interleaved in rounds (the order
   rotates each round); added latency = plane - direct of the same era, in ms and in bare RTT
   (the unit of the run). Both planes are data-plane-only processes, so neither carries the
   control plane (the stack's own gateway runs both planes, and the audit ingest of every data
   plane, in its process). The sink must receive the ``on`` plane's spans: the section reports
   spans received per traced ``tools/call`` and by name, and the spans from ``off`` (zero).
   ``on`` runs with ``OTEL_BSP_SCHEDULE_DELAY=1000`` (ms; the SDK default is 5000) so that
   the bench need not wait 5 s for the last batch; at the sequential call rate the batch size
   (512 spans) triggers most exports anyway.
2. **The off path, in process.** How many times a governed call passes each observability
   hook is counted on the live planes (spans per call by name from the sink; metric
   observations per call from ``off``'s ``/metrics`` counters before/after); each hook is
   then timed in this process with ``timeit`` loops (the median of the repeats, µs per
   hook): a ``Tracing.span`` no-op (``DISABLED``), the upstream span's attribute dict plus its
   no-op, the decision span's no-op plus ``is_recording``, ``observe_decision``,
   ``observe_upstream``, and the :class:`~gateway.observability.asgi.RequestObserver` around
   a trivial ASGI app against the app alone (context variable, send wrapper, the tracing
   check, ``note_action``/``note_governed``, ``observe_request``). Their sum per call, in µs
   and as a fraction of the RTT unit, is set against the noise of the added p50: its spread
   across the rounds of measurement 1.

Run as ``python bench_obs.py --sink-port N``, this module is the OTLP sink.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import timeit
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
from bench_measure import Phases, added_vs_direct, pct, summary

HERE = Path(__file__).resolve().parent
TRACES_PATH = "/v1/traces"
BSP_DELAY_MS = 1000
ERAS = ("2026-07-28", "2025-11-25")
TARGETS = ("direct", "off", "on")
PLANES = ("off", "on")

__all__ = ["OtlpSink", "hook_costs", "measure_observability", "print_observability"]


# --------------------------------------------------------------------------- the OTLP sink
class _SinkState:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.exports = 0
        self.spans = 0
        self.by_instance: Counter[str] = Counter()
        self.trace_spans: dict[bytes, Counter[str]] = defaultdict(Counter)
        self.call_traces: set[bytes] = set()

    def add(self, body: bytes) -> None:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
        from opentelemetry.proto.trace.v1.trace_pb2 import Span

        export = ExportTraceServiceRequest()
        export.ParseFromString(body)
        with self.lock:
            self.exports += 1
            for rs in export.resource_spans:
                instance = next(
                    (a.value.string_value for a in rs.resource.attributes if a.key == "service.instance.id"), "-"
                )
                for ss in rs.scope_spans:
                    for span in ss.spans:
                        self.spans += 1
                        self.by_instance[instance] += 1
                        self.trace_spans[span.trace_id][span.name] += 1
                        if span.kind == Span.SPAN_KIND_SERVER and any(
                            a.key == "mcp.method.name" and a.value.string_value == "tools/call" for a in span.attributes
                        ):
                            self.call_traces.add(span.trace_id)

    def counts(self) -> dict[str, Any]:
        with self.lock:
            by_name: Counter[str] = Counter()
            for trace_id in self.call_traces:
                by_name.update(self.trace_spans[trace_id])
            return {
                "exports": self.exports,
                "spans": self.spans,
                "by_instance": dict(self.by_instance),
                "call_traces": len(self.call_traces),
                "call_trace_spans": dict(by_name),
            }


def serve_sink(port: int) -> None:
    """Serve the OTLP/HTTP traces sink on ``127.0.0.1:port`` until SIGTERM.

    ``POST /v1/traces`` (protobuf ``ExportTraceServiceRequest``, gzip accepted) answers an
    empty ``ExportTraceServiceResponse``; ``GET /counts`` answers JSON: ``exports``, ``spans``,
    ``by_instance`` (spans per ``service.instance.id``), ``call_traces`` (traces whose SERVER
    span has ``mcp.method.name = tools/call``) and ``call_trace_spans`` (their spans by name).
    """
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

    state = _SinkState()
    reply = ExportTraceServiceResponse().SerializeToString()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _send(self, status: int, body: bytes, ctype: str) -> None:
            self.send_response(status)
            self.send_header("content-type", ctype)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            if self.path != TRACES_PATH:
                self._send(404, b"", "text/plain")
                return
            if self.headers.get("content-encoding") == "gzip":
                body = gzip.decompress(body)
            try:
                state.add(body)
            except Exception:  # noqa: BLE001 - a malformed export is a 400, the sink keeps serving
                self._send(400, b"", "text/plain")
                return
            self._send(200, reply, "application/x-protobuf")

        def do_GET(self) -> None:  # noqa: N802
            if self.path != "/counts":
                self._send(404, b"", "text/plain")
                return
            self._send(200, json.dumps(state.counts()).encode(), "application/json")

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
            return

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown, daemon=True).start())
    server.serve_forever()


def _wait_http(
    url: str, proc: subprocess.Popen[bytes], what: str, timeout: float, ok: Callable[[httpx.Response], bool]
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            if ok(httpx.get(url, timeout=2)):
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready at {url} after {timeout:.0f} s")
        time.sleep(0.05)


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM each process group, then wait (SIGKILL after 10 s)."""
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


class OtlpSink:
    """The sink process (:func:`serve_sink`) on a free port; :meth:`counts` reads ``GET /counts``."""

    def __init__(self, run_dir: Path, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        log = open(run_dir / "otlp_sink.log", "ab")  # noqa: SIM115 - owned by the process
        argv = [sys.executable, str(HERE / "bench_obs.py"), "--sink-port", str(port)]
        self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        _wait_http(f"{self.url}/counts", self.proc, "the OTLP sink", 20, lambda r: r.status_code == 200)

    def counts(self) -> dict[str, Any]:
        resp = httpx.get(f"{self.url}/counts", timeout=5)
        resp.raise_for_status()
        out: dict[str, Any] = resp.json()
        return out

    def close(self) -> None:
        _stop([self.proc])


# --------------------------------------------------------------------------- the two data planes
class ObsPlanes:
    """``off`` and ``on``: two ``gateway serve --plane data`` processes on the stack's control
    plane, started together; :meth:`wait_ready` waits for both to serve the desired projection."""

    def __init__(self, stack: Any, sink: OtlpSink, free_port: Callable[[], int]) -> None:
        self.stack = stack
        self.ports: dict[str, int] = {}
        self.ids: dict[str, str] = {}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.endpoint = sink.url
        for plane in PLANES:
            port = free_port()
            env = stack.gateway_env()
            for key in ("GATEWAY_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
                env.pop(key, None)
            self.ids[plane] = f"dp-obs-{plane}"
            env["GATEWAY_DATA_PORT"] = str(port)
            env["GATEWAY_DATAPLANE_ID"] = self.ids[plane]
            # The stack's OPA sidecar decides for both (no OPA to start; the same one for off and on).
            # The embedded engine ignores these: each plane has its own OPA in process.
            env["GATEWAY_OPA_MANAGE"] = "false"
            env["GATEWAY_OPA_URL"] = f"http://127.0.0.1:{stack.opa_port}"
            if plane == "on":
                env["GATEWAY_OTLP_ENDPOINT"] = sink.url
                env["OTEL_BSP_SCHEDULE_DELAY"] = str(BSP_DELAY_MS)
            self.ports[plane] = port
            log = open(stack.run_dir / f"{self.ids[plane]}.log", "ab")  # noqa: SIM115 - owned by the process
            argv = [sys.executable, "-m", "gateway", "serve", "--plane", "data"]
            self.procs[plane] = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
            log.close()

    def url(self, plane: str) -> str:
        return f"http://127.0.0.1:{self.ports[plane]}"

    def wait_ready(self, timeout: float = 90) -> None:
        desired = self.stack.admin("GET", "/v1/projection")["desired_version"]
        for plane in PLANES:
            _wait_http(
                f"{self.url(plane)}/readyz",
                self.procs[plane],
                f"data plane {self.ids[plane]}",
                timeout,
                lambda r: r.status_code == 200 and r.json().get("projection_version") == desired,
            )

    def pid(self, plane: str) -> int:
        return self.procs[plane].pid

    def close(self) -> None:
        _stop(list(self.procs.values()))


# --------------------------------------------------------------------------- measurement
def _metric_totals(text: str) -> dict[str, float]:
    """Sums over label sets of the data plane's per-call series (Prometheus text)."""
    names = {
        "gateway_dp_requests_total": "observe_request",
        "gateway_dp_tool_calls_total": "tool_calls",
        "gateway_opa_decision_duration_seconds_count": "observe_decision",
        "gateway_upstream_duration_seconds_count": "observe_upstream",
    }
    out = dict.fromkeys(names.values(), 0.0)
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in names:
            out[names[name]] += float(line.rsplit(" ", 1)[1])
    return out


async def _interleaved_rounds(
    cases: dict[str, Callable[[], Awaitable[Any]]], n: int, warmup: int, rounds: int
) -> dict[str, list[list[float]]]:
    """Latency samples (ms) per case and round; the case order rotates by one each round."""
    for fn in cases.values():
        for _ in range(warmup):
            await fn()
    names = list(cases)
    per_round = max(1, n // rounds)
    samples: dict[str, list[list[float]]] = {name: [] for name in names}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            fn, out = cases[name], []
            for _ in range(per_round):
                t0 = time.perf_counter()
                await fn()
                out.append((time.perf_counter() - t0) * 1000)
            samples[name].append(out)
    return samples


async def measure_observability(
    *,
    stack: Any,
    http: httpx.AsyncClient,
    token: str,
    open_raw: Callable[[str, str, str | None], Awaitable[Any]],
    free_port: Callable[[], int],
    cpu_seconds: Callable[[int | None], float],
    rtt: float,
    requests: int,
    warmup: int,
    rounds: int,
    timeit_number: int,
    timeit_repeat: int,
) -> dict[str, Any]:
    """The ``observability`` JSON section (see the module docstring for what each part means).

    Args:
        stack: The running ``LocalStack`` (its control plane, upstream, run dir, IdP token).
        http: The bench's shared client (raw drivers).
        token: A bearer token for the data plane (the stack's audience).
        open_raw: ``open_raw(url, era, token)`` -> an opened raw driver (``call(tool, args)``).
        free_port: A free TCP port (``gateway.devtools.stack.free_port``).
        cpu_seconds: utime + stime of a pid (``bench_measure.cpu_seconds``).
        rtt: The run's bare RTT p50, ms (the unit).
        requests: Calls per case (era x target); ``rounds`` interleaved rounds; ``warmup`` first.
        timeit_number: Calls per ``timeit`` repeat; ``timeit_repeat`` repeats (the median is kept).

    Returns:
        ``planes``, ``latency`` (``<era>/<target>`` -> p50/p99/mean ms), ``added`` (per era:
        ``off`` and ``on`` vs direct, and ``on_minus_off_*``), ``round_added_p50_ms`` and
        ``noise`` (per era: the spread of ``off``'s added p50 across rounds), ``spans``,
        ``hooks_per_call``, ``hook_us``, ``off_path_us_per_call``, ``off_path_rtt_fraction``,
        ``off_path_over_noise``, ``cpu_ms_per_call`` (``off``/``on`` data-plane processes),
        ``rtt_ms``, ``phase_seconds`` (start, open_drivers, calls, spans_wait, hooks, stop).
    """
    phase = Phases()
    lap, phases = phase.lap, phase.seconds

    sink = OtlpSink(Path(stack.run_dir), free_port())
    planes: ObsPlanes | None = None
    try:
        planes = ObsPlanes(stack, sink, free_port)
        await asyncio.to_thread(planes.wait_ready)
        lap("start")
        text = {"text": "x" * 100}
        cases: dict[str, Callable[[], Awaitable[Any]]] = {}
        for era in ERAS:
            for target in TARGETS:
                url = stack.upstream_url if target == "direct" else f"{planes.url(target)}/mcp"
                driver = await open_raw(url, era, None if target == "direct" else token)
                tool = "echo" if target == "direct" else "demo__echo"
                cases[f"{era}/{target}"] = _binder(driver, tool, text)
        metrics_url = f"{planes.url('off')}/metrics"
        before = _metric_totals((await http.get(metrics_url)).text)
        spans_before = await asyncio.to_thread(sink.counts)
        cpu0 = {p: cpu_seconds(planes.pid(p)) for p in PLANES}
        lap("open_drivers")
        samples = await _interleaved_rounds(cases, requests, warmup, rounds)
        lap("calls")
        cpu = {p: cpu_seconds(planes.pid(p)) - cpu0[p] for p in PLANES}
        after = _metric_totals((await http.get(metrics_url)).text)
        per_round = max(1, requests // rounds)
        calls = {p: len(ERAS) * (warmup + rounds * per_round) for p in PLANES}
        spans = await asyncio.to_thread(_wait_spans, sink, spans_before["call_traces"] + calls["on"])
        lap("spans_wait")
        out: dict[str, Any] = {
            "planes": {
                "off": {"dataplane_id": planes.ids["off"], "otlp_endpoint": None},
                "on": {
                    "dataplane_id": planes.ids["on"],
                    "otlp_endpoint": planes.endpoint,
                    "bsp_schedule_delay_ms": BSP_DELAY_MS,
                },
            },
            "rtt_ms": rtt,
            "phase_seconds": phases,
        }
        out.update(_latency_part(samples, rtt))
        traced = spans["call_traces"] - spans_before["call_traces"]
        by_name = Counter(spans["call_trace_spans"])
        by_name.subtract(spans_before["call_trace_spans"])
        per_name = {name: round(c / traced, 3) for name, c in sorted(by_name.items()) if traced and c}
        off_id, on_id = planes.ids["off"], planes.ids["on"]
        out["spans"] = {
            "received": spans["spans"],
            "exports": spans["exports"],
            "calls_sent_on": calls["on"],
            "calls_traced": traced,
            "per_call": round(sum(by_name.values()) / traced, 3) if traced else None,
            "per_call_by_name": per_name,
            "from_on_plane": spans["by_instance"].get(on_id, 0),
            "from_off_plane": spans["by_instance"].get(off_id, 0),
        }
        out["cpu_ms_per_call"] = {p: round(cpu[p] / calls[p] * 1000, 4) for p in PLANES}
        counted = {k: round((after[k] - before[k]) / calls["off"], 3) for k in after}
        # In a thread: it runs an event loop of its own for the request observer.
        costs = await asyncio.to_thread(hook_costs, timeit_number, timeit_repeat)
        lap("hooks")
        out.update(_off_path(per_name, counted, costs, rtt, out["noise"]))
        return out
    finally:
        if planes is not None:
            await asyncio.to_thread(planes.close)
        sink.close()
        lap("stop")  # shown in the dict returned above (the same object)


def _binder(driver: Any, tool: str, arguments: dict[str, Any]) -> Callable[[], Awaitable[None]]:
    async def call() -> None:
        await driver.call(tool, arguments)

    return call


def _wait_spans(sink: OtlpSink, want_traces: int, timeout: float = BSP_DELAY_MS / 1000 + 10) -> dict[str, Any]:
    """Poll the sink until it holds ``want_traces`` traced ``tools/call`` requests (children end,
    and so are exported, before their SERVER span) or ``timeout`` passes; its counts then."""
    deadline = time.monotonic() + timeout
    while True:
        counts = sink.counts()
        if counts["call_traces"] >= want_traces or time.monotonic() > deadline:
            return counts
        time.sleep(0.1)


def _latency_part(samples: dict[str, list[list[float]]], rtt: float) -> dict[str, Any]:
    latency = {name: summary([s for rnd in rounds for s in rnd]) for name, rounds in samples.items()}
    added: dict[str, Any] = {}
    round_added: dict[str, Any] = {}
    noise: dict[str, Any] = {}
    for era in ERAS:
        direct = latency[f"{era}/direct"]
        row: dict[str, Any] = {p: added_vs_direct(latency[f"{era}/{p}"], direct, rtt) for p in PLANES}
        for q in ("p50", "p99"):
            d = row["on"][f"added_{q}_ms"] - row["off"][f"added_{q}_ms"]
            row[f"on_minus_off_{q}_ms"] = round(d, 4)
            row[f"on_minus_off_{q}_rtt"] = round(d / rtt, 3)
        added[era] = row
        direct_rounds = [pct(r, 0.5) for r in samples[f"{era}/direct"]]
        round_added[era] = {
            p: [round(pct(r, 0.5) - d, 4) for r, d in zip(samples[f"{era}/{p}"], direct_rounds, strict=True)]
            for p in PLANES
        }
        off = round_added[era]["off"]
        stdev = statistics.stdev(off) if len(off) > 1 else 0.0
        noise[era] = {
            "rounds": len(off),
            "off_added_p50_min_ms": round(min(off), 4),
            "off_added_p50_max_ms": round(max(off), 4),
            "off_added_p50_range_ms": round(max(off) - min(off), 4),
            "off_added_p50_stdev_ms": round(stdev, 4),
            "off_added_p50_stdev_rtt": round(stdev / rtt, 4),
        }
    return {"latency": latency, "added": added, "round_added_p50_ms": round_added, "noise": noise}


# --------------------------------------------------------------------------- the off path, in process
def hook_costs(number: int, repeat: int) -> dict[str, float]:
    """µs per call of each observability hook on the tracing-off path, timed in this process.

    ``timeit`` loops of ``number`` calls, ``repeat`` times; the median repeat / ``number``.
    Keys: ``span_noop`` (``with DISABLED.span(name)``), ``span_noop_upstream`` (the upstream
    span's attribute dict, built whether tracing is on or not, and its no-op with
    ``client=True``), ``span_noop_decision`` (no-op plus ``is_recording()``),
    ``observe_decision``, ``observe_upstream``, ``observe_request`` (alone), and
    ``request_observer`` (the ASGI middleware with metrics, tracing off, access line off,
    around an app that sends a response and notes the action and governed event, minus that
    app alone; it includes ``observe_request``).
    """
    from gateway.observability.asgi import RequestObserver
    from gateway.observability.context import RequestRecord, note_action, note_governed
    from gateway.observability.metrics import DataPlaneMetrics
    from gateway.observability.tracing import DISABLED

    projection = SimpleNamespace(
        servers={"demo": SimpleNamespace(tools={"echo": object()}, transport="streamable_http")},
        version=1,
        revision="p1-pv1",
    )
    metrics = DataPlaneMetrics(projection=lambda: projection, protocol_versions=ERAS)
    record = RequestRecord()
    record.action, record.server, record.tool = "tools/call", "demo", "echo"
    record.outcome, record.decision_id, record.protocol = "allowed", "d" * 36, ERAS[0]
    scope: dict[str, Any] = {
        "type": "http",
        "method": "POST",
        "path": "/mcp",
        "headers": [(b"mcp-protocol-version", ERAS[0].encode())],
        "state": {"dp_metrics": metrics, "dp_tracing": DISABLED},
    }
    server, transport, method = "demo", "streamable_http", "tools/call"

    def span_noop() -> None:
        with DISABLED.span("gateway.auth"):
            pass

    def span_noop_upstream() -> None:
        attributes = {"gateway.server": server, "gateway.transport": transport, "mcp.method.name": method}
        with DISABLED.span("gateway.upstream", attributes, client=True):
            pass

    def span_noop_decision() -> None:
        with DISABLED.span("gateway.decision") as span:
            if span.is_recording():
                raise AssertionError("tracing is off")

    def observe_request() -> None:
        metrics.observe_request(scope, record, 200, 0.008)

    def observe_decision() -> None:
        metrics.observe_decision("call", 0.001)

    def observe_upstream() -> None:
        metrics.observe_upstream(server, transport, 0.004)

    sync = {
        "span_noop": span_noop,
        "span_noop_upstream": span_noop_upstream,
        "span_noop_decision": span_noop_decision,
        "observe_request": observe_request,
        "observe_decision": observe_decision,
        "observe_upstream": observe_upstream,
    }
    out: dict[str, float] = {}
    for name, fn in sync.items():
        fn()  # bind the label children once, as the first request does
        runs = timeit.repeat(fn, number=number, repeat=repeat)
        out[name] = round(statistics.median(runs) / number * 1e6, 4)

    start = {"type": "http.response.start", "status": 200, "headers": []}
    body = {"type": "http.response.body", "body": b"{}"}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        note_action("tools/call")
        note_governed(decision_id="d" * 36, server="demo", tool="echo", status="ok", protocol_version=ERAS[0])
        await send(start)
        await send(body)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        return None

    observed = RequestObserver(
        app, plane="data", metrics_key="dp_metrics", metrics_endpoint=app, tracing_key="dp_tracing"
    )

    async def loop(target: Any) -> float:
        t0 = time.perf_counter()
        for _ in range(number):
            await target(scope, receive, send)
        return time.perf_counter() - t0

    async def timed() -> tuple[list[float], list[float]]:
        bare: list[float] = []
        wrapped: list[float] = []
        await observed(scope, receive, send)
        for _ in range(repeat):  # alternate, so both see the same machine
            bare.append(await loop(app))
            wrapped.append(await loop(observed))
        return bare, wrapped

    bare, wrapped = asyncio.run(timed())
    out["request_observer"] = round((statistics.median(wrapped) - statistics.median(bare)) / number * 1e6, 4)
    return out


def _off_path(
    span_names: dict[str, float],
    counted: dict[str, float],
    costs: dict[str, float],
    rtt: float,
    noise: dict[str, Any],
) -> dict[str, Any]:
    """Hooks per call x µs per hook; the SERVER span is the observer's ``enabled`` check (in
    ``request_observer``), every other span name one ``Tracing.span`` no-op when off."""
    span_hooks = {n: c for n, c in span_names.items() if n.startswith("gateway.")}
    tracing_us = 0.0
    for name, count in span_hooks.items():
        key = {"gateway.upstream": "span_noop_upstream", "gateway.decision": "span_noop_decision"}.get(
            name, "span_noop"
        )
        tracing_us += count * costs[key]
    metrics_us = (
        counted["observe_request"] * costs["request_observer"]
        + counted["observe_decision"] * costs["observe_decision"]
        + counted["observe_upstream"] * costs["observe_upstream"]
    )
    total = tracing_us + metrics_us
    unit_us = rtt * 1000
    stdevs = [noise[era]["off_added_p50_stdev_ms"] * 1000 for era in ERAS]
    return {
        "hooks_per_call": {"tracing_span": span_hooks, **counted},
        "hook_us": costs,
        "off_path_us_per_call": {
            "tracing": round(tracing_us, 3),
            "metrics_and_observer": round(metrics_us, 3),
            "total": round(total, 3),
        },
        "off_path_rtt_fraction": {
            "tracing": round(tracing_us / unit_us, 5),
            "total": round(total / unit_us, 5),
        },
        "off_path_over_noise": round(total / min(stdevs), 4) if min(stdevs) > 0 else None,
    }


# --------------------------------------------------------------------------- output
def print_observability(obs: dict[str, Any]) -> None:
    """The section's lines of the human summary."""
    if "error" in obs:
        print(f"observability: ERROR {obs['error']}")
        return
    for era in ERAS:
        row, noise = obs["added"][era], obs["noise"][era]
        print(
            f"observability {era}: added p50 tracing off {row['off']['added_p50_ms']:.3f} ms "
            f"({row['off']['added_p50_rtt']:.2f} RTT), on {row['on']['added_p50_ms']:.3f} ms "
            f"({row['on']['added_p50_rtt']:.2f} RTT), on-off {row['on_minus_off_p50_ms']:+.3f} ms "
            f"({row['on_minus_off_p50_rtt']:+.2f} RTT) p50, {row['on_minus_off_p99_rtt']:+.2f} RTT p99; "
            f"off's added p50 across {noise['rounds']} rounds: {noise['off_added_p50_min_ms']:.3f}.."
            f"{noise['off_added_p50_max_ms']:.3f} ms (stdev {noise['off_added_p50_stdev_ms']:.3f} ms)"
        )
    spans = obs["spans"]
    names = ", ".join(f"{n} {c:g}" for n, c in spans["per_call_by_name"].items())
    print(
        f"observability spans: sink received {spans['received']} in {spans['exports']} exports, "
        f"{spans['per_call']} per traced call ({spans['calls_traced']} of {spans['calls_sent_on']} calls: {names}); "
        f"from the off plane {spans['from_off_plane']}"
    )
    off = obs["off_path_us_per_call"]
    print(
        f"observability off path: {off['total']:.2f} us per call (tracing no-ops {off['tracing']:.2f} us, "
        f"metrics + observer {off['metrics_and_observer']:.2f} us) = {obs['off_path_rtt_fraction']['total']:.4f} RTT; "
        f"{obs['off_path_over_noise']} of the added p50's round-to-round stdev; "
        f"data-plane CPU per call off {obs['cpu_ms_per_call']['off']:.3f} ms, on {obs['cpu_ms_per_call']['on']:.3f} ms"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description="The OTLP/HTTP traces sink of `make bench` (observability).")
    parser.add_argument("--sink-port", type=int, required=True)
    args = parser.parse_args()
    serve_sink(args.sink_port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
