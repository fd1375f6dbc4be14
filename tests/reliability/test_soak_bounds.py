"""The soak's steadiness check (``deploy/reliability/soak.py``: :func:`steadiness`), a pure function.

Samples are built by hand in the shape :func:`snapshot` records (``t`` seconds since traffic
started; per process ``{"pid", "rss_kb", "fds"}``), every 5 s over a 600 s run, plus the end
sample after the drain.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest

from gateway.config import PROJECT_ROOT


def _load_soak() -> ModuleType:
    path = PROJECT_ROOT / "deploy" / "reliability" / "soak.py"
    spec = importlib.util.spec_from_file_location("soak_under_test", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


soak = _load_soak()
SECONDS = 600.0
MIB = 1024
Series = Callable[[float], tuple[int, int, int]]
"""t (s) -> (pid, RSS KiB, open FDs) of one process."""


def flat(pid: int = 100, rss_mib: float = 100, fds: int = 30) -> Series:
    return lambda t: (pid, int(rss_mib * MIB), fds)


def samples(seconds: float = SECONDS, **series: Series) -> list[dict[str, Any]]:
    """A sample every 5 s from 0 to ``seconds``, then an end sample 12 s later (after the drain)."""
    times = [float(t) for t in range(0, int(seconds) + 1, 5)] + [seconds + 12]
    out = []
    for t in times:
        sample: dict[str, Any] = {"t": t, "spool_bytes": 0}
        for key, f in series.items():
            pid, rss, fds = f(t)
            sample[key.replace("_", " ")] = {"pid": pid, "rss_kb": rss, "fds": fds}
        out.append(sample)
    return out


def judge(series: Series, seconds: float = SECONDS) -> dict[str, Any]:
    result: dict[str, Any] = soak.steadiness(samples(seconds, data_plane=series), seconds, ("data plane",))[
        "data plane"
    ]
    return result


def test_flat_processes_are_steady() -> None:
    result = soak.steadiness(
        samples(control_plane=flat(1), data_plane=flat(2), opa=flat(3, 50, 15)), SECONDS, soak.GATEWAY_PROCESSES
    )
    assert [r["steady"] for r in result.values()] == [True, True, True]
    assert all(r["problems"] == [] and r["rss_growth_kb"] == 0 for r in result.values())
    assert result["data plane"]["baseline_from"] == 120 and result["data plane"]["tail_from"] == 450


def test_a_steady_leak_is_caught() -> None:
    leak = lambda t: (7, int((100 + 0.1 * t) * MIB), 30)  # noqa: E731 - 0.1 MiB/s: 60 MiB over the run
    result = judge(leak)
    assert result["steady"] is False
    assert result["rss_growth_kb"] > result["rss_bound_kb"] == 32 * MIB
    assert "RSS grew" in result["problems"][0]


@pytest.mark.parametrize(("growth_mib", "steady"), [(60, True), (61, False)])
def test_rss_bound_is_the_fraction_when_that_is_larger_than_the_floor(growth_mib: int, steady: bool) -> None:
    step = lambda t: (7, (400 + (growth_mib if t >= 300 else 0)) * MIB, 30)  # noqa: E731 - 15 % of 400 = 60
    result = judge(step)
    assert result["rss_bound_kb"] == 60 * MIB
    assert result["steady"] is steady


@pytest.mark.parametrize(("growth_mib", "steady"), [(32, True), (33, False)])
def test_rss_bound_is_the_floor_for_small_processes(growth_mib: int, steady: bool) -> None:
    step = lambda t: (7, (100 + (growth_mib if t >= 300 else 0)) * MIB, 30)  # noqa: E731
    assert judge(step)["steady"] is steady


@pytest.mark.parametrize(("extra", "steady"), [(16, True), (17, False)])
def test_fd_bound_is_baseline_peak_plus_slack(extra: int, steady: bool) -> None:
    fds = lambda t: (7, 100 * MIB, 30 + (extra if t >= 500 else 0))  # noqa: E731
    result = judge(fds)
    assert (result["baseline_fds"], result["fd_bound"]) == (30, 46)
    assert result["steady"] is steady
    if not steady:
        assert result["problems"] == ["open FDs reached 47, more than 30 + 16"]


def test_an_fd_leak_only_at_the_end_sample_counts() -> None:
    leak_at_end = lambda t: (7, 100 * MIB, 200 if t > SECONDS else 30)  # noqa: E731
    assert judge(leak_at_end)["steady"] is False


def test_growth_during_the_warm_up_and_a_spike_before_the_tail_are_not_counted() -> None:
    def series(t: float) -> tuple[int, int, int]:
        rss = 50 + min(t, 100) if t < 120 else 150  # grows by 100 MiB while warming up
        if 360 <= t < 400:  # the control-plane outage: buffers, released before the last quarter
            rss += 80
        return 7, int(rss * MIB), 10 if t < 60 else 30

    result = judge(series)
    assert result["steady"] is True
    assert (result["baseline_rss_kb"], result["tail_rss_kb"]) == (150 * MIB, 150 * MIB)


def test_a_restarted_process_is_judged_from_its_own_baseline() -> None:
    # A new pid at 50 % that settles at twice the old one's memory: steady (its own baseline) ...
    restarted = lambda t: (8, 200 * MIB, 30) if t >= 300 else (7, 100 * MIB, 30)  # noqa: E731
    result = judge(restarted)
    assert result["steady"] is True and result["restarted"] is True and result["pid"] == 8
    assert result["baseline_from"] == 300
    # ... but one that keeps growing after its restart is not.
    leaking = lambda t: (8, int((100 + 0.3 * (t - 300)) * MIB), 30) if t >= 300 else (7, 100 * MIB, 30)  # noqa: E731
    assert judge(leaking)["steady"] is False


def test_the_tail_waits_for_the_last_fault_to_settle() -> None:
    # A 120 s run: the 30 s control-plane stop (72-102 s) reaches past 75 % (90 s), and what was
    # buffered during it is held until a few seconds after the resume.
    outage = lambda t: (7, (150 if 72 <= t < 105 else 100) * MIB, 30)  # noqa: E731
    assert judge(outage, seconds=120)["steady"] is False  # the tail would start at 90 s
    result = soak.steadiness(samples(120, data_plane=outage), 120, ("data plane",), faults_end=103)["data plane"]
    assert result["tail_from"] == 123 and result["steady"] is True  # only the end sample, after the drain
    leak_after = lambda t: (7, (200 if t > 120 else 100) * MIB, 30)  # noqa: E731
    kept = soak.steadiness(samples(120, data_plane=leak_after), 120, ("data plane",), faults_end=103)
    assert kept["data plane"]["steady"] is False


def test_a_restart_inside_the_tail_cannot_be_judged() -> None:
    late = lambda t: (8, 100 * MIB, 30) if t >= 500 else (7, 100 * MIB, 30)  # noqa: E731
    result = judge(late)
    assert result["steady"] is None and result["note"].startswith("not judged")


def test_a_process_never_sampled_is_not_judged() -> None:
    result = soak.steadiness(samples(data_plane=flat()), SECONDS, ("opa",))["opa"]
    assert result["steady"] is None and result["note"] == "never sampled"
    gone = [{**s, "opa": {"pid": None, "rss_kb": None, "fds": None}} for s in samples(data_plane=flat())]
    assert soak.steadiness(gone, SECONDS, ("opa",))["opa"]["steady"] is None


def test_the_embedded_engine_has_no_opa_process_and_no_opa_kill() -> None:
    assert soak.gateway_processes("embedded") == ("control plane", "data plane")
    assert soak.gateway_processes("sidecar") == ("control plane", "data plane", "opa")
    assert list(soak.fault_plan("embedded")) == ["pg_restart", "control_plane_stop"]
    assert list(soak.fault_plan("sidecar")) == ["opa_kill", "pg_restart", "control_plane_stop"]


def _results(steady: dict[str, Any]) -> dict[str, Any]:
    audit = {
        "lost": 0,
        "duplicated": 0,
        "unanswered_duplicated": 0,
        "unexplained_events": 0,
        "lists": {"lost": 0, "duplicated": 0},
    }
    return {
        "engine": "embedded",
        "audit": audit,
        "upstream": {"refused_reached_upstream": 0},
        "faults": [],
        "steadiness": steady,
    }


def test_a_process_not_steady_fails_the_verdict_and_the_report_says_so() -> None:
    leak = lambda t: (7, int((100 + 0.1 * t) * MIB), 30)  # noqa: E731
    steady = soak.steadiness(samples(control_plane=flat(), data_plane=leak), SECONDS, ("control plane", "data plane"))
    lines, ok = soak.verdict(_results(steady), {"control plane": True, "data plane": True})
    assert ok is False
    assert lines == [f"FAIL: data plane NOT steady: {steady['data plane']['problems'][0]}"]
    report = "\n".join(soak._steadiness_lines({"steadiness": steady}))
    assert "**NOT steady**" in report and "32 MiB" in report

    fine = soak.steadiness(samples(control_plane=flat(), data_plane=flat()), SECONDS, ("control plane", "data plane"))
    lines, ok = soak.verdict(_results(fine), {"control plane": True, "data plane": True})
    assert ok is True and "steady within the bound (control plane, data plane)" in lines[0]
    assert "NOT steady" not in "\n".join(soak._steadiness_lines({"steadiness": fine}))
