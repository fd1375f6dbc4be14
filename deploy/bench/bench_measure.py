"""Measurement primitives of `make bench`: interleaved latency, closed-loop throughput, /proc
CPU and peak RSS, and the py-spy stage table that splits the gateway's CPU per call.

All times are milliseconds unless a name says otherwise; CPU is read from
``/proc/<pid>/stat`` (``utime + stime``, clock ticks) and peak RSS from ``/proc/<pid>/status``
(``VmHWM``, KiB). Linux only.
"""

from __future__ import annotations

import asyncio
import os
import re
import statistics
import subprocess
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "FALLBACK",
    "STAGES",
    "Case",
    "CpuMeter",
    "bucket_profile",
    "closed_loop",
    "cpu_seconds",
    "added_vs_direct",
    "interleaved_latencies",
    "pct",
    "vm_hwm_kib",
]

Case = Callable[[], Awaitable[Any]]
_TICK = os.sysconf("SC_CLK_TCK")


def pct(samples: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``samples`` by nearest rank (no interpolation)."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(samples: Sequence[float]) -> dict[str, float]:
    """``{"p50_ms", "p99_ms", "mean_ms", "n"}`` of latency samples in ms."""
    return {
        "p50_ms": round(pct(samples, 0.50), 4),
        "p99_ms": round(pct(samples, 0.99), 4),
        "mean_ms": round(statistics.fmean(samples), 4),
        "n": len(samples),
    }


def added_vs_direct(gw: dict[str, float], direct: dict[str, float], rtt: float) -> dict[str, float]:
    """What the gateway adds to ``direct``'s p50/p99 (:func:`summary` dicts): ms and RTT units."""
    p50, p99 = gw["p50_ms"] - direct["p50_ms"], gw["p99_ms"] - direct["p99_ms"]
    return {
        "added_p50_ms": round(p50, 4),
        "added_p99_ms": round(p99, 4),
        "added_p50_rtt": round(p50 / rtt, 3),
        "added_p99_rtt": round(p99 / rtt, 3),
    }


async def interleaved_latencies(
    cases: dict[str, Case], n: int, warmup: int, rounds: int
) -> dict[str, dict[str, float]]:
    """Sequential latency per case, the cases interleaved in ``rounds`` rounds of ``n // rounds``.

    Interleaving exposes every case to the same background conditions (CPU steal, GC, the
    other helper's benchmark on a shared machine), so a difference between two cases is not an
    artefact of when each ran. Returns :func:`summary` per case.
    """
    for fn in cases.values():
        for _ in range(warmup):
            await fn()
    samples: dict[str, list[float]] = {name: [] for name in cases}
    per_round = max(1, n // rounds)
    for _ in range(rounds):
        for name, fn in cases.items():
            out = samples[name]
            for _ in range(per_round):
                t0 = time.perf_counter()
                await fn()
                out.append((time.perf_counter() - t0) * 1000)
    return {name: summary(s) for name, s in samples.items()}


async def closed_loop(fns: Sequence[Case], seconds: float) -> tuple[int, float]:
    """One worker per element of ``fns``, each calling its function back to back for ``seconds``.

    Returns ``(completed calls, wall seconds)``; req/s = calls / wall.
    """
    done = 0
    stop = time.perf_counter() + seconds

    async def worker(fn: Case) -> None:
        nonlocal done
        while time.perf_counter() < stop:
            await fn()
            done += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(fn) for fn in fns))
    return done, time.perf_counter() - t0


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds of ``pid`` so far (0.0 when it is gone or None)."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK


def vm_hwm_kib(pid: int | None) -> int | None:
    """Peak resident set size (``VmHWM``) of ``pid`` in KiB, or None."""
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


class CpuMeter:
    """CPU seconds per wall second (cores busy) of named processes over an interval.

    Example::

        meter = CpuMeter({"gateway": gw_pid, "opa": opa_pid})
        ...  # the load
        cores = meter.stop()   # {"gateway": 0.93, "opa": 0.41, "wall_s": 3.0}
    """

    def __init__(self, pids: dict[str, int | None]) -> None:
        self._pids = pids
        self._t0 = time.perf_counter()
        self._cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}

    def stop(self) -> dict[str, float]:
        wall = time.perf_counter() - self._t0
        out = {name: round((cpu_seconds(pid) - self._cpu0[name]) / wall, 4) for name, pid in self._pids.items()}
        out["wall_s"] = round(wall, 3)
        return out


# --------------------------------------------------------------------------- py-spy stages
STAGES: tuple[tuple[str, str, frozenset[str] | None], ...] = (
    # (stage, source file as py-spy prints it (suffix match), functions (qualified) or None = any)
    ("auth", "gateway/dataplane/endpoint.py", frozenset({"authenticate"})),
    ("auth", "gateway/dataplane/auth.py", None),
    ("auth", "gateway/dataplane/api_keys.py", None),
    ("auth", "gateway/jwtauth.py", None),
    (
        "audit",
        "gateway/dataplane/governance.py",
        frozenset({"Governor._emit", "Governor._event", "_sha256", "_relay_sha256"}),
    ),
    ("audit", "gateway/dataplane/audit.py", None),
    ("decision", "gateway/dataplane/governance.py", frozenset({"Governor._decide", "Governor._current"})),
    ("decision", "gateway/dataplane/governance.py", frozenset({"Governor.list_tools"})),
    ("decision", "gateway/policy/", None),
    (
        "upstream",
        "gateway/dataplane/governance.py",
        frozenset({"Governor.relay", "Governor.channel", "Governor._credential", "relayed_params"}),
    ),
    ("upstream", "gateway/dataplane/relay.py", None),
    ("upstream", "gateway/dataplane/credentials.py", None),
    ("upstream", "gateway/mcp/upstream.py", None),
    ("upstream", "gateway/mcp/_common.py", None),
    ("upstream", "gateway/mcp/channel.py", None),
    ("validation", "gateway/dataplane/governance.py", None),
    ("validation", "gateway/mcp/messages.py", None),
    ("validation", "jsonschema/", None),
    ("validation", "jsonschema_specifications/", None),
    ("validation", "referencing/", None),
    ("validation", "gateway/dataplane/projection.py", None),
    ("endpoint", "gateway/dataplane/", None),
    ("control_plane", "gateway/controlplane/", None),
    ("control_plane", "gateway/db/", None),
    ("control_plane", "asyncpg/", None),
)
"""How a py-spy sample of the gateway process is given a stage: walk its stack from the
innermost frame outwards; the first frame matching a row (its file ends with / contains the
path, and its function is listed, or the row lists None) names the stage. A sample no row
matches is given one by :data:`FALLBACK` (``client_io``, ``asgi_server``) or is ``event_loop``.

The stages follow :mod:`gateway.dataplane.governance` (``Governor._call_tool``):

* ``auth`` -- bearer JWT / API-key verification (``endpoint.authenticate``, ``dataplane/auth.py``,
  ``jwtauth.py``);
* ``validation`` -- JSON-RPC parse and size limits (``mcp/messages.py``), the params checks and
  tool resolution in ``Governor._call_tool``'s own code, ``inputSchema`` validation (jsonschema);
* ``decision`` -- ``Governor._decide``/``_current``, the input builder and the PDP client
  (``gateway/policy/``: ``build_input``, ``OpaPolicyEngine``; in-process evaluation for the
  embedded engine);
* ``upstream`` -- ``Governor.relay``/``channel``/``_credential`` and the upstream pool
  (``mcp/upstream.py``), relaying and the credential choice;
* ``audit`` -- ``Governor._emit``/``_event``, the arguments and result hashes (``_sha256``,
  ``_relay_sha256``), the audit shipper (``dataplane/audit.py``);
* ``endpoint`` -- the rest of the data plane (request/response handling in ``endpoint.py``,
  sessions, host checks);
* ``control_plane`` -- the control plane in the same process (audit and decision-log ingest,
  PostgreSQL).
"""

FALLBACK: tuple[tuple[str, str], ...] = (
    ("client_io", "aiohttp/"),
    ("client_io", "httpcore/"),
    ("client_io", "httpx/"),
    ("asgi_server", "uvicorn/"),
    ("asgi_server", "hypercorn/"),
    ("asgi_server", "h11/"),
    ("asgi_server", "httptools/"),
    ("asgi_server", "starlette/"),
    ("asgi_server", "gateway/serving.py"),
    ("asgi_server", "gateway/app.py"),
)
"""Second pass, for a sample no :data:`STAGES` row claims (innermost frame first):
``client_io`` -- the hot-path HTTP client's own tasks and callbacks (aiohttp writes a request
body in a task of its own, so its socket writes to OPA and to upstreams have no gateway frame
above them); ``asgi_server`` -- HTTP parsing and the ASGI stack in front of the data plane.
What neither table claims is ``event_loop`` (uvloop/asyncio: epoll, reads, scheduling, GC)."""

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def _stage_of(frames: list[str]) -> str:
    for frame in reversed(frames):
        m = _FRAME.match(frame)
        if m is None:
            continue
        func, file = m.group("func"), m.group("file")
        for stage, path, funcs in STAGES:
            if (file.endswith(path) or path in file) and (funcs is None or func in funcs):
                return stage
    for frame in reversed(frames):
        m = _FRAME.match(frame)
        if m is None:
            continue
        for stage, path in FALLBACK:
            if path in m.group("file"):
                return stage
    return "event_loop"


def bucket_profile(raw: str) -> dict[str, int]:
    """Samples per stage of a ``py-spy record --format raw`` output (collapsed stacks:
    ``frame;frame;... <count>`` per line, outermost frame first)."""
    counts: Counter[str] = Counter()
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        counts[_stage_of(stack.split(";"))] += int(count)
    return dict(counts)


def start_py_spy(py_spy: str, pid: int, seconds: float, out: Path, rate: int) -> subprocess.Popen[bytes]:
    """Start ``py-spy record --format raw --nonblocking`` on ``pid`` for ``seconds``.

    ``--nonblocking`` reads the target's memory without pausing it, so the profiled run's
    throughput stays close to an unprofiled one (a sample may rarely be torn).
    """
    argv = [
        py_spy,
        "record",
        "--format",
        "raw",
        "--nonblocking",
        "--rate",
        str(rate),
        "--duration",
        str(max(1, round(seconds))),
        "--pid",
        str(pid),
        "--output",
        str(out),
    ]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


class Phases:
    """Wall-clock seconds of a run's consecutive phases: ``lap(name)`` closes the phase begun at
    the previous lap (or at creation); :attr:`seconds` maps each name to its duration (2 dp)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._t = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = round(now - self._t, 2)
        self._t = now
