"""`deploy/bench/bench.py --quick` runs against a real stack and writes every section of its JSON.

Not a timed test: it never asserts on a latency or a rate, only that each number was measured
(a positive count, a positive latency, a finite added latency -- that one may be negative on a
noisy machine), and, for ``observability``, that the OTLP sink received a trace for every call
through the tracing-on data plane and nothing from the tracing-off one; for ``api_adapter``, that
the adapter tool was decided by OPA and audited like an MCP call.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import pg

pytestmark = [pytest.mark.db, pytest.mark.integration]

REPO_ROOT = Path(__file__).resolve().parents[2]
BENCH = REPO_ROOT / "deploy" / "bench" / "bench.py"
ERAS = ("2026-07-28", "2025-11-25")
CLIENTS = ("raw", "sdk")


@pytest.fixture
def bench_database(pg_admin_url: str) -> Iterator[str]:
    """A database name for the bench to (re)create; dropped afterwards."""
    name = f"gwtest_bench_{uuid.uuid4().hex[:10]}"
    yield name
    pg.drop_database(pg_admin_url, name)


def _positive(value: Any, where: str) -> None:
    assert isinstance(value, int | float) and value > 0, f"{where}: {value!r}"


def _finite(value: Any, where: str) -> None:
    assert isinstance(value, int | float) and math.isfinite(value), f"{where}: {value!r}"


def _latency(res: dict[str, Any], where: str) -> None:
    for key in ("p50_ms", "p99_ms", "mean_ms", "n"):
        _positive(res[key], f"{where}.{key}")


def _added(res: dict[str, Any], where: str) -> None:
    for key in ("added_p50_ms", "added_p99_ms", "added_p50_rtt", "added_p99_rtt"):
        _finite(res[key], f"{where}.{key}")


@pytest.mark.timeout(400)
def test_quick_bench_writes_every_section(tmp_path: Path, pg_admin_url: str, bench_database: str) -> None:
    env = {**os.environ, "DATABASE_URL": pg_admin_url}
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--run-dir", str(tmp_path), "--database", bench_database],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=380,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((tmp_path / "results.json").read_text())
    assert len(summary["machine"]["loadavg_start"]) == 3
    assert list(summary["runs"]) == ["sidecar/uvicorn"]
    run = summary["runs"]["sidecar/uvicorn"]
    assert "error" not in run, run.get("traceback", run.get("error"))

    _positive(run["rtt_ms"]["p50"], "rtt_ms.p50")
    cases = ["rtt", "opa", f"raw/{ERAS[0]}/brokered"]
    cases += [f"{k}/{e}/{t}" for e in ERAS for k in CLIENTS for t in ("direct", "gateway")]
    assert sorted(run["latency"]) == sorted(cases)
    for case in cases:
        _latency(run["latency"][case], f"latency[{case}]")
    for case in [c for c in cases if c.endswith(("/gateway", "/brokered"))]:
        _added(run["added"][case], f"added[{case}]")

    for era in ERAS:
        for kind in CLIENTS:
            tput = run["throughput_c8"][f"{kind}/{era}"]
            for key in ("direct_rps", "gateway_rps", "ratio"):
                _positive(tput[key], f"throughput_c8[{kind}/{era}].{key}")
            rec = run["reconciliation"][era][kind]
            _positive(rec["gateway_over_direct_p50"], f"reconciliation[{era}][{kind}]")
        _finite(run["reconciliation"][era]["sdk_client_cost_p50_ms"], f"reconciliation[{era}]")

    assert sorted(run["arg_sizes"]) == ["100B", "10KB", "1MB"]
    for label, res in run["arg_sizes"].items():
        _positive(res["bytes"], f"arg_sizes[{label}].bytes")
        _latency(res["direct"], f"arg_sizes[{label}].direct")
        _latency(res["gateway"], f"arg_sizes[{label}].gateway")
        _added(res, f"arg_sizes[{label}]")

    _api_adapter(run["api_adapter"])

    assert sorted(run["tools_list"], key=int) == ["10", "100"]
    for n, res in run["tools_list"].items():
        _latency(res["direct"], f"tools_list[{n}].direct")
        _latency(res["gateway"], f"tools_list[{n}].gateway")
        _added(res, f"tools_list[{n}]")
        _positive(res["policy_queries_per_list"], f"tools_list[{n}].policy_queries_per_list")

    steps = run["saturation"]["steps"]
    assert steps and all(s["rps"] > 0 for s in steps)
    peak = run["saturation"]["peak"]
    for key in ("rps", "gateway_plus_opa_cores", "rps_per_core", "concurrency"):
        _positive(peak[key], f"saturation.peak.{key}")

    assert run["stage_cpu"] == {"skipped": "--quick"}
    _positive(run["peak_rss_kib"]["gateway"], "peak_rss_kib.gateway")
    _positive(run["peak_rss_kib"]["opa"], "peak_rss_kib.opa")
    reload = run["reload"]
    assert reload["n"] == len(reload["samples_ms"]) == 2
    for i, sample in enumerate(reload["samples_ms"]):
        _positive(sample, f"reload.samples_ms[{i}]")

    _observability(run["observability"])


def _observability(obs: dict[str, Any]) -> None:
    """Tracing off vs on (two data planes, an OTLP sink) and the off path's hooks timed in process."""
    assert "error" not in obs, obs.get("traceback", obs.get("error"))
    assert obs["planes"]["off"]["otlp_endpoint"] is None
    assert obs["planes"]["on"]["otlp_endpoint"].startswith("http://127.0.0.1:")
    cases = [f"{e}/{t}" for e in ERAS for t in ("direct", "off", "on")]
    assert sorted(obs["latency"]) == sorted(cases)
    for case in cases:
        _latency(obs["latency"][case], f"observability.latency[{case}]")
    for era in ERAS:
        row = obs["added"][era]
        for plane in ("off", "on"):
            _added(row[plane], f"observability.added[{era}][{plane}]")
        for key in ("on_minus_off_p50_ms", "on_minus_off_p50_rtt", "on_minus_off_p99_ms", "on_minus_off_p99_rtt"):
            _finite(row[key], f"observability.added[{era}].{key}")
        noise = obs["noise"][era]
        assert noise["rounds"] >= 2
        rounds = obs["round_added_p50_ms"][era]
        assert len(rounds["off"]) == len(rounds["on"]) == noise["rounds"]
        for key in ("off_added_p50_range_ms", "off_added_p50_stdev_ms", "off_added_p50_stdev_rtt"):
            assert isinstance(noise[key], int | float) and noise[key] >= 0, f"observability.noise[{era}].{key}"

    # The sink really received the on plane's spans, one trace per call; the off plane sent none.
    spans = obs["spans"]
    assert spans["calls_sent_on"] > 0
    assert spans["calls_traced"] == spans["calls_sent_on"], spans
    assert spans["from_off_plane"] == 0, spans
    _positive(spans["from_on_plane"], "observability.spans.from_on_plane")
    assert spans["per_call"] >= 2, spans
    assert any(name.startswith("gateway.") for name in spans["per_call_by_name"]), spans

    hooks = obs["hooks_per_call"]
    assert hooks["tracing_span"] and all(c > 0 for c in hooks["tracing_span"].values()), hooks
    for key in ("observe_request", "observe_decision", "observe_upstream"):
        _positive(hooks[key], f"observability.hooks_per_call.{key}")
    for key, value in obs["hook_us"].items():
        _positive(value, f"observability.hook_us.{key}")
    for key in ("tracing", "metrics_and_observer", "total"):
        _positive(obs["off_path_us_per_call"][key], f"observability.off_path_us_per_call.{key}")
    _positive(obs["off_path_rtt_fraction"]["total"], "observability.off_path_rtt_fraction.total")
    assert obs["off_path_over_noise"] is None or math.isfinite(obs["off_path_over_noise"])
    for plane in ("off", "on"):
        _positive(obs["cpu_ms_per_call"][plane], f"observability.cpu_ms_per_call.{plane}")


def _api_adapter(res: dict[str, Any]) -> None:
    """A REST endpoint directly vs its API-adapter tool through the gateway, next to the MCP pair."""
    assert "error" not in res, res.get("traceback", res.get("error"))
    assert res["source"]["tool"] == "benchrest__getItem"
    cases = ["rest/direct", *(f"adapter/{e}/gateway" for e in ERAS), f"mcp/{ERAS[0]}/direct", f"mcp/{ERAS[0]}/gateway"]
    assert sorted(res["latency"]) == sorted(cases)
    for case in cases:
        _latency(res["latency"][case], f"api_adapter.latency[{case}]")
    assert sorted(res["added"]) == sorted([*(f"adapter/{e}" for e in ERAS), f"mcp/{ERAS[0]}"])
    for key, row in res["added"].items():
        _added(row, f"api_adapter.added[{key}]")
        assert len(res["round_added_p50_ms"][key]) == res["noise"][key]["rounds"] >= 2
    for key in ("p50_ms", "p50_rtt", "p99_ms", "p99_rtt"):
        _finite(res["adapter_minus_mcp"][key], f"api_adapter.adapter_minus_mcp.{key}")
    for key in ("direct_rps", "gateway_rps", "ratio", "mcp_gateway_rps", "gateway_over_mcp_gateway"):
        _positive(res["throughput_c8"][key], f"api_adapter.throughput_c8.{key}")
    for key in ("adapter", "mcp"):
        _positive(res["throughput_c8"]["gateway_cpu_ms_per_call"][key], f"api_adapter.gateway_cpu_ms_per_call.{key}")
    # Governed like an MCP call: one OPA decision per call (the sidecar engine), and audited.
    assert res["governed"]["policy_queries_per_call"] >= 1, res["governed"]
    audit = res["governed"]["audit"]
    assert audit is not None and audit["server"] == "benchrest" and audit["tool"] == "getItem", audit
    assert audit["allowed"] is True and audit["status"] == "ok", audit
    client = res["client_in_process"]
    for case in ("aiohttp", "httpx", "adapter"):
        _positive(client["p50_ms"][case], f"api_adapter.client_in_process.p50_ms.{case}")
    for key in ("httpx_minus_aiohttp_ms", "adapter_minus_httpx_ms", "adapter_minus_aiohttp_ms"):
        _finite(client[key], f"api_adapter.client_in_process.{key}")
    _added(res["latency_section_mcp_added"], "api_adapter.latency_section_mcp_added")
