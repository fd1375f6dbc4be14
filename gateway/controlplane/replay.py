"""Decision replay: re-evaluate recorded decisions against a candidate policy version with a real OPA.

``POST /v1/policies/{version}/replay`` starts a background replay and answers 202; progress and
the result are read with ``GET /v1/policies/{version}/replays/{id}`` and listed with
``GET /v1/policies/{version}/replays``. Rows live in PostgreSQL (``policy_replays``, migration
0010), so results survive a restart.

How one replay runs:

1. The inputs are this scope's OPA decision logs (``opa_decision_logs``, uploaded by the
   sidecars to ``/v1/opa/logs``) at :data:`DECISION_PATH`, the path the data plane queries
   for every governed request, newest first, within ``since``/``until``, at most ``limit``,
   received before the replay started. Discovery (``gateway_runtime/main/list``) decisions are
   not replayed.
2. The candidate bundle is built exactly as the projection compiler builds the real one
   (:func:`gateway.controlplane.bundle.bundle_data` and :func:`~gateway.controlplane.bundle.build_bundle`):
   the candidate's modules and data, the gateway's reserved modules, and the *current* approved
   registry. It is checked with ``opa check --bundle`` against the restricted capabilities.
3. A scratch ``opa run --server`` loads it, listening on a Unix socket in a private (0700)
   temporary directory, with decision logging off, the sidecar's minimal environment
   (:func:`gateway.policy.sidecar.sidecar_environment`) and no configuration. A second,
   replay-only bundle (:data:`BATCH_MODULE`, root ``gateway_replay``) evaluates
   ``data.gateway_runtime.main.call``, the document the data plane queries, once per logged
   input of a batch (``with input as``): :data:`BATCH_SIZE` inputs per query, at most
   :data:`CONCURRENCY` queries in flight over keep-alive HTTP (aiohttp: httpx was 6x slower per
   request here). A batch OPA cannot evaluate is re-run one input per request at
   ``/v1/data/gateway_runtime/main/call``. The scratch OPA is always stopped (also on errors and
   cancellation) and dies with the control plane (``PR_SET_PDEATHSIG``).
4. The original outcome is the logged ``result``; both it and the candidate's answer are read
   with the data plane's own parser (:func:`gateway.policy.decision.parse_call_result`): an
   undefined or malformed decision is a deny with reason ``policy_decision_invalid``, as at run
   time. An input OPA cannot evaluate (HTTP 500, e.g. ``eval_conflict_error``) is an *error*,
   counted apart from flips.

What a policy can use in replay: the decision logs are masked by the reserved
``system.log.mask`` policy (``gateway/policy/rego/system/log/log.rego``), which erases
:data:`MASKED_INPUT_FIELDS`. Those fields are absent (undefined) in replay, so a rule that reads
them behaves as if they were missing: a deny that needs one never fires (it cannot flip a
decision), an allow that needs one never holds. Everything else in the input is replayed as
logged: ``tenant``, ``environment``, ``action``, ``subject`` (``sub``, ``issuer``, ``roles``,
``scopes``, ``client_id``, ``groups``, ``agent``, ``delegation``, ``credential_kind``, ``key_id``),
``server``, ``tool`` (name and annotations), ``resource``,
``prompt.name``, ``credential``, ``session``, ``projection.version`` (of the original
decision). ``data.gateway_runtime.registry`` is today's registry, not the one at decision time.

Concurrency: at most one running replay per scope (tenant, environment), across control-plane
processes (a partial unique index): a second POST answers 409 ``conflict`` naming the running one.
A running replay writes a heartbeat every :data:`HEARTBEAT` seconds; one whose heartbeat is older
than :data:`STALE_AFTER` (its control plane died), or that belongs to this process but has no
task any more, is marked ``failed`` whenever replays are started or read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import subprocess
import tempfile
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import asyncpg
import orjson
from starlette.requests import Request
from starlette.responses import Response

from gateway.config import SECONDS, Config
from gateway.controlplane._deps import deps
from gateway.controlplane._http import (
    MAX_BIGINT,
    JSONResponse,
    check_text,
    parse_int,
    parse_rfc3339,
    read_json,
)
from gateway.controlplane.actor import actor_of
from gateway.controlplane.bundle import build_bundle, bundle_data
from gateway.controlplane.projection import revision_of
from gateway.db import policies as db_policies
from gateway.db import projections as db_projections
from gateway.db import replays as db_replays
from gateway.db import servers as db_servers
from gateway.db.replays import LoggedDecision, ReplayWindow
from gateway.errors import GatewayError, PolicyDecisionInvalid, RequestRejected
from gateway.policy.decision import parse_call_result
from gateway.policy.reserved import CAPABILITIES_FILE, load_capabilities, load_reserved_modules
from gateway.policy.sidecar import die_with_parent, sidecar_environment, stop_process

__all__ = [
    "CONCURRENCY",
    "DECISION_PATH",
    "DEFAULT_LIMIT",
    "MASKED_INPUT_FIELDS",
    "MAX_LIMIT",
    "ReplayTally",
    "Verdict",
    "get_replay",
    "list_replays",
    "replay_for_approval",
    "scratch_opa",
    "start_replay",
]

log = logging.getLogger(__name__)

DECISION_PATH = "gateway_runtime/main/call"
"""The data plane's decision path (``gateway.policy.opa``): the logs replayed and the path evaluated."""
MASKED_INPUT_FIELDS = ("/input/arguments", "/input/prompt/arguments", "/input/subject/claims")
"""JSON pointers the reserved ``system.log.mask`` erases from every decision log: absent in replay
(``tests/controlplane/test_replay.py`` evaluates the mask with OPA and compares)."""
DEFAULT_LIMIT = 10_000
"""Decisions replayed when the request names no ``limit``."""
MAX_LIMIT = 100_000
"""Largest ``limit`` a request may ask for."""
CONCURRENCY = 2
"""OPA requests in flight at once (one per core of the 2-core reference machine, ``make bench-replay``)."""
BATCH_SIZE = 100
"""Inputs evaluated per OPA query (:meth:`ScratchOpa.evaluate_batch`); 1 sends each input alone to
:data:`DECISION_PATH`. Batches cut the per-request cost (HTTP, scheduling) that dominates on 2 cores."""
BATCH_PATH = "gateway_replay/results"
"""The replay-only document evaluating ``data.gateway_runtime.main.call`` once per input of a batch."""
BATCH_MODULE = """package gateway_replay

# One result per input of input.inputs, in order: the document the data plane queries
# (POST /v1/data/gateway_runtime/main/call), evaluated with that input.
results := [result |
	some logged in input.inputs
	result := data.gateway_runtime.main.call with input as logged
]
"""
"""The module of the scratch OPA's second bundle (root ``gateway_replay``); the candidate bundle
itself is byte for byte what the projection compiler would build."""
PAGE_SIZE = 500
"""Decision logs read from PostgreSQL per page (no connection is held while OPA evaluates)."""
MAX_FLIPS_LISTED = 1000
"""Flips listed one by one in the summary (newest first); the counts cover all of them."""
MAX_ERRORS_LISTED = 100
"""Errors listed one by one in the summary."""
MAX_GROUPS = 1000
"""Entries kept per grouping (``by_tool``, ``by_subject``, ``by_reason``), the largest first."""
HEARTBEAT = 1 * SECONDS
"""How often a running replay records its progress and heartbeat."""
STALE_AFTER = 15 * SECONDS
"""A running replay without a heartbeat for this long is failed (its control plane died)."""
EVAL_TIMEOUT = 10 * SECONDS
"""Bound on one OPA evaluation."""
START_TIMEOUT = 15 * SECONDS
"""Bound on the scratch OPA loading the bundle and answering ``/health?bundles``."""
REPLAY_TIMEOUT = 600 * SECONDS
"""Bound on one whole replay."""
NONE = "(none)"
"""Group key of a flip without a tool, subject or reason."""

OWNER = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
"""This process, as recorded in the replays it runs."""
_LIVE: dict[str, asyncio.Task[None] | None] = {}
"""Replays this process is running, by id (None between the insert and the task's creation)."""
_JSON = {"content-type": "application/json"}
_BODY_KEYS = frozenset({"since", "until", "limit"})


# ---------------------------------------------------------------- verdicts and the tally
@dataclass(frozen=True, slots=True)
class Verdict:
    """One decision's outcome as the data plane would enforce it.

    Attributes:
        allow: True only for a well-formed decision with ``allow: true``.
        reasons: The decision's reasons; ``("policy_decision_invalid",)`` for an undefined or
            malformed decision.
        error: Set when OPA could not evaluate the input (then ``allow`` means nothing).
    """

    allow: bool
    reasons: tuple[str, ...] = ()
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"allow": self.allow, "reasons": list(self.reasons)}


def judge(document: Any) -> Verdict:
    """Read an OPA Data API answer of :data:`DECISION_PATH` (``{"result": {...}}``) as the data plane does."""
    try:
        decision = parse_call_result(document)
    except PolicyDecisionInvalid:
        return Verdict(False, (PolicyDecisionInvalid.category,))
    return Verdict(decision.allow, decision.reasons)


def _error(message: str) -> Verdict:
    return Verdict(False, (), message[:300])


@dataclass
class _Groups:
    """Flip counts per key and direction."""

    counts: dict[str, Counter[str]] = field(default_factory=dict)

    def add(self, key: str | None, direction: str) -> None:
        self.counts.setdefault(key or NONE, Counter())[direction] += 1

    def distinct(self, direction: str) -> int:
        return sum(1 for c in self.counts.values() if c[direction])

    def view(self) -> dict[str, dict[str, int]]:
        ranked = sorted(self.counts.items(), key=lambda kv: (-sum(kv[1].values()), kv[0]))[:MAX_GROUPS]
        return {k: {"allow_to_deny": c["allow_to_deny"], "deny_to_allow": c["deny_to_allow"]} for k, c in ranked}


@dataclass
class ReplayTally:
    """Accumulates replayed decisions into the summary (:meth:`summary`)."""

    total: int = 0
    errors: int = 0
    unchanged: int = 0
    invalid: int = 0
    flips: Counter[str] = field(default_factory=Counter)
    by_tool: _Groups = field(default_factory=_Groups)
    by_subject: _Groups = field(default_factory=_Groups)
    by_reason: _Groups = field(default_factory=_Groups)
    flipped: list[dict[str, Any]] = field(default_factory=list)
    error_samples: list[dict[str, Any]] = field(default_factory=list)
    revisions: Counter[str] = field(default_factory=Counter)
    erased: set[str] = field(default_factory=set)

    def add(self, row: LoggedDecision, candidate: Verdict) -> None:
        """Count one decision: ``row`` as logged, ``candidate`` as the candidate decided it."""
        self.total += 1
        self.revisions[row.revision or NONE] += 1
        self.erased.update(row.erased)
        if candidate.error is not None:
            self.errors += 1
            if len(self.error_samples) < MAX_ERRORS_LISTED:
                self.error_samples.append({"decision_id": row.decision_id, "message": candidate.error})
            return
        if candidate.reasons == (PolicyDecisionInvalid.category,) and not candidate.allow:
            self.invalid += 1
        original = judge({"result": row.result})
        if original.allow == candidate.allow:
            self.unchanged += 1
            return
        direction = "allow_to_deny" if original.allow else "deny_to_allow"
        self.flips[direction] += 1
        self.by_tool.add(row.tool, direction)
        self.by_subject.add(row.subject, direction)
        # Why it differs: the candidate's reasons for a new deny, the original's for a lifted one.
        for reason in (candidate if direction == "allow_to_deny" else original).reasons or (NONE,):
            self.by_reason.add(reason, direction)
        if len(self.flipped) < MAX_FLIPS_LISTED:
            self.flipped.append(
                {
                    "decision_id": row.decision_id,
                    "timestamp": row.timestamp.isoformat(),
                    "direction": direction,
                    "action": row.action,
                    "subject": row.subject,
                    "server": row.server,
                    "tool": row.tool,
                    "original": original.as_dict(),
                    "candidate": candidate.as_dict(),
                }
            )

    def summary(self) -> dict[str, Any]:
        """The replay's result document (``ReplaySummary`` in the OpenAPI description)."""
        a2d, d2a = self.flips["allow_to_deny"], self.flips["deny_to_allow"]
        subjects = {d: self.by_subject.distinct(d) for d in ("allow_to_deny", "deny_to_allow")}
        tools = {d: self.by_tool.distinct(d) for d in ("allow_to_deny", "deny_to_allow")}
        return {
            "total": self.total,
            "evaluated": self.total - self.errors,
            "unchanged": self.unchanged,
            "flips": {"allow_to_deny": a2d, "deny_to_allow": d2a},
            "subjects": subjects,
            "tools": tools,
            "by_tool": self.by_tool.view(),
            "by_subject": self.by_subject.view(),
            "by_reason": self.by_reason.view(),
            "flipped": self.flipped,
            "flipped_truncated": a2d + d2a > len(self.flipped),
            "invalid_decisions": self.invalid,
            "errors": {"count": self.errors, "items": self.error_samples},
            "original_revisions": dict(self.revisions.most_common(MAX_GROUPS)),
            "erased_fields": sorted(self.erased),
            "sentence": _sentence(self.total, self.errors, a2d, d2a, subjects, tools),
        }


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _sentence(
    total: int, errors: int, a2d: int, d2a: int, subjects: Mapping[str, int], tools: Mapping[str, int]
) -> str:
    """``"this version would deny 14 calls that were allowed (3 subjects, 2 tools) and allow ..."``."""
    deny = f"deny {_plural(a2d, 'call')} that {'was' if a2d == 1 else 'were'} allowed"
    if a2d:
        deny += f" ({_plural(subjects['allow_to_deny'], 'subject')}, {_plural(tools['allow_to_deny'], 'tool')})"
    allow = f"allow {_plural(d2a, 'call')} that {'was' if d2a == 1 else 'were'} denied"
    if d2a:
        allow += f" ({_plural(subjects['deny_to_allow'], 'subject')}, {_plural(tools['deny_to_allow'], 'tool')})"
    tail = f"{_plural(total, 'recorded decision')} replayed"
    if errors:
        tail += f", {errors} could not be evaluated"
    return f"this version would {deny} and {allow}; {tail}"


# ---------------------------------------------------------------- the scratch OPA
class ScratchOpa:
    """A running scratch OPA (see :func:`scratch_opa`)."""

    def __init__(self, proc: subprocess.Popen[bytes], session: aiohttp.ClientSession) -> None:
        self.proc = proc
        self._session = session

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def _post(self, path: str, body: bytes) -> tuple[Any, str | None]:
        """POST ``body`` to ``/v1/data/<path>``: ``(decoded 200 answer, None)`` or ``(None, error)``."""
        try:
            async with self._session.post(
                f"http://opa/v1/data/{path}",
                data=body,
                headers=_JSON,
                timeout=aiohttp.ClientTimeout(total=EVAL_TIMEOUT),
            ) as resp:
                status, raw = resp.status, await resp.read()
        except TimeoutError:
            return None, f"OPA did not answer within {EVAL_TIMEOUT} s"
        except aiohttp.ClientError as exc:
            return None, f"OPA unreachable ({type(exc).__name__})"
        try:
            document = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None, f"OPA answered HTTP {status} with invalid JSON"
        if status != 200:
            return None, f"OPA answered HTTP {status}: {_opa_error(document)}"
        return document, None

    async def evaluate(self, input_json: str | None) -> Verdict:
        """Evaluate one logged input (JSON text) at :data:`DECISION_PATH`, as the data plane asks;
        never raises for OPA's answer (an error is a :class:`Verdict` with ``error``)."""
        if input_json is None:
            return _error("no input was logged for this decision")
        document, error = await self._post(DECISION_PATH, b'{"input":' + input_json.encode() + b"}")
        return _error(error) if error is not None else judge(document)

    async def evaluate_batch(self, inputs: Sequence[str | None]) -> list[Verdict]:
        """Evaluate several logged inputs in one query of :data:`BATCH_PATH`.

        Each input is evaluated as ``data.gateway_runtime.main.call with input as <it>``: the
        document the data plane queries, in one OPA query instead of one HTTP round trip each.
        When OPA cannot evaluate the batch (one input fails, e.g. ``eval_conflict_error``), every
        input of it is evaluated alone with :meth:`evaluate`, so each error names its decision.
        """
        present = [i for i, text in enumerate(inputs) if text is not None]
        verdicts = [_error("no input was logged for this decision")] * len(inputs)
        if not present:
            return verdicts
        body = b'{"input":{"inputs":[' + b",".join(str(inputs[i]).encode() for i in present) + b"]}}"
        document, error = await self._post(BATCH_PATH, body)
        results = document.get("result") if isinstance(document, dict) else None
        if error is None and isinstance(results, list) and len(results) == len(present):
            for i, result in zip(present, results, strict=True):
                verdicts[i] = judge({"result": result})
            return verdicts
        for i in present:
            verdicts[i] = await self.evaluate(inputs[i])
        return verdicts

    async def evaluate_all(self, rows: Sequence[LoggedDecision]) -> list[Verdict]:
        """Evaluate ``rows`` in batches of :data:`BATCH_SIZE` (1: one request per input at
        :data:`DECISION_PATH`) with at most :data:`CONCURRENCY` requests in flight; verdicts in row order."""
        verdicts: list[Verdict] = [Verdict(False)] * len(rows)
        size = max(1, BATCH_SIZE)
        queue = iter(range(0, len(rows), size))

        async def worker() -> None:
            for start in queue:
                chunk = [row.input_json for row in rows[start : start + size]]
                if size == 1:
                    verdicts[start] = await self.evaluate(chunk[0])
                else:
                    verdicts[start : start + len(chunk)] = await self.evaluate_batch(chunk)

        async with anyio.create_task_group() as tg:
            for _ in range(min(CONCURRENCY, -(-len(rows) // size))):
                tg.start_soon(worker)
        return verdicts

    def alive(self) -> bool:
        return self.proc.poll() is None


def _opa_error(document: Any) -> str:
    """``code: message (file:row)`` of OPA's first detailed error (OPA REST API error body), else its message."""
    if not isinstance(document, dict):
        return "no error document"
    details = document.get("errors")
    first = details[0] if isinstance(details, list) and details and isinstance(details[0], dict) else document
    text = f"{first.get('code', 'error')}: {first.get('message', '')}"
    where = first.get("location")
    if isinstance(where, dict) and where.get("file"):
        text += f" ({where['file']}:{where.get('row', 0)})"
    return text


def _bundles(work: Path) -> list[str]:
    """The scratch OPA's two bundles: the candidate (roots of :data:`~gateway.controlplane.bundle.BUNDLE_ROOTS`)
    and the batch module (root ``gateway_replay``)."""
    return [str(work / "bundle.tar.gz"), str(work / "replay")]


async def _opa_check_bundle(opa_bin: str, work: Path) -> None:
    load_capabilities()  # ConfigError rather than an unrestricted check when the file is missing
    argv = [opa_bin, "check", "--capabilities", str(CAPABILITIES_FILE), "--bundle", *_bundles(work)]
    try:
        with anyio.fail_after(START_TIMEOUT):
            res = await anyio.run_process(argv, check=False, stdin=subprocess.DEVNULL)
    except (OSError, TimeoutError) as exc:
        log.error("opa check of a replay bundle could not run", exc_info=exc)
        raise GatewayError("the opa binary could not run") from None
    if res.returncode != 0:
        log.warning("a replay bundle failed opa check: %s", res.stderr[-2000:].decode(errors="replace"))
        raise GatewayError("the candidate bundle does not compile against the restricted capabilities")


@contextlib.asynccontextmanager
async def scratch_opa(opa_bin: str, bundle: bytes) -> AsyncIterator[ScratchOpa]:
    """Run ``opa run --server`` with ``bundle`` on a private Unix socket until the block exits.

    Example::

        async with scratch_opa(config.opa.bin, bundle) as opa:
            verdict = await opa.evaluate('{"action": "tools/call", ...}')

    The process gets :func:`gateway.policy.sidecar.sidecar_environment` (nothing of the control
    plane's environment), its own session, and ``PR_SET_PDEATHSIG``; it is stopped (SIGTERM, then
    SIGKILL after 5 s) and its directory removed when the block exits, however it exits.

    Raises:
        GatewayError: The bundle fails ``opa check`` against the restricted capabilities, or OPA
            did not start or load it within :data:`START_TIMEOUT` (details in the log).
    """
    with tempfile.TemporaryDirectory(prefix="gw-replay-") as tmp:
        work = Path(tmp)  # mode 0700: only this user reaches the socket
        (work / "bundle.tar.gz").write_bytes(bundle)
        (work / "replay").mkdir()
        (work / "replay" / ".manifest").write_bytes(orjson.dumps({"roots": ["gateway_replay"]}))
        (work / "replay" / "replay.rego").write_text(BATCH_MODULE)
        await _opa_check_bundle(opa_bin, work)
        sock = work / "opa.sock"
        argv = [
            opa_bin,
            "run",
            "--server",
            "--addr",
            f"unix://{sock}",
            "--unix-socket-perm",
            "600",
            "--bundle",
            *_bundles(work),
            "--log-level",
            "error",
            "--skip-version-check",
        ]
        with open(work / "opa.log", "wb") as logf:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                env=sidecar_environment(tmp),
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
        try:
            connector = aiohttp.UnixConnector(path=str(sock), limit=CONCURRENCY)
            async with aiohttp.ClientSession(
                connector=connector, cookie_jar=aiohttp.DummyCookieJar(), skip_auto_headers=("User-Agent",)
            ) as session:
                await _wait_ready(proc, session, work / "opa.log")
                log.info("replay: scratch opa pid=%s ready", proc.pid)
                yield ScratchOpa(proc, session)
        finally:
            stop_process(proc)


async def _wait_ready(proc: subprocess.Popen[bytes], session: aiohttp.ClientSession, log_path: Path) -> None:
    with anyio.move_on_after(START_TIMEOUT):
        while proc.poll() is None:
            with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                async with session.get("http://opa/health?bundles", timeout=aiohttp.ClientTimeout(total=2)) as r:
                    if r.status == 200:
                        return
            await anyio.sleep(0.02)
    tail = log_path.read_bytes()[-2000:].decode(errors="replace") if log_path.exists() else ""
    log.error("replay: the scratch opa did not become ready (exit %s): %s", proc.poll(), tail)
    raise GatewayError("the scratch OPA did not start with the candidate bundle")


# ---------------------------------------------------------------- one replay
@dataclass
class _Progress:
    total: int | None = None
    done: int = 0


async def candidate_bundle(pool: asyncpg.Pool, config: Config, version: int) -> tuple[bytes, int]:
    """Build the bundle the projection compiler would build if ``version`` were approved now.

    Returns:
        ``(gzipped bundle, current projection version)``.

    Raises:
        NotFound: No such policy version.
    """
    tenant, env = config.tenant, config.environment
    reserved = await anyio.to_thread.run_sync(load_reserved_modules)
    async with pool.acquire() as conn:
        candidate = await db_policies.get_policy(conn, tenant, env, version)
        approved = await db_servers.approved_servers_with_tools(conn, tenant, env)
        projection = await db_projections.latest_version(conn, tenant, env)
    revision = revision_of(projection, version)
    data = bundle_data(
        version=projection, policy_version=version, revision=revision, servers=approved, policy_data=candidate["data"]
    )
    blob = build_bundle(
        revision=revision,
        version=projection,
        policy_version=version,
        policy_modules=candidate["modules"],
        reserved_modules=reserved,
        data=data,
    )
    return blob, projection


async def _replay(
    pool: asyncpg.Pool, config: Config, version: int, window: ReplayWindow, progress: _Progress
) -> dict[str, Any]:
    tenant, env = config.tenant, config.environment
    progress.total = await db_replays.count_inputs(pool, tenant, env, window)
    tally = ReplayTally()
    if progress.total:
        bundle, _ = await candidate_bundle(pool, config, version)
        async with scratch_opa(config.opa.bin, bundle) as opa:
            after: tuple[datetime, str] | None = None
            while progress.done < progress.total:
                size = min(PAGE_SIZE, progress.total - progress.done)
                page = await db_replays.fetch_inputs(pool, tenant, env, window, after=after, size=size)
                if not page:
                    break
                verdicts = await opa.evaluate_all(page)
                if not opa.alive():
                    raise GatewayError("the scratch OPA exited during the replay")
                for row, verdict in zip(page, verdicts, strict=True):
                    tally.add(row, verdict)
                progress.done += len(page)
                after = (page[-1].timestamp, page[-1].decision_id)
    return tally.summary()


async def _heartbeat(pool: asyncpg.Pool, replay_id: str, progress: _Progress) -> None:
    while True:
        await anyio.sleep(HEARTBEAT)
        try:
            running = await db_replays.update_progress(pool, replay_id, total=progress.total, done=progress.done)
        except Exception as exc:  # a database blip: the next beat retries; a long outage makes it stale
            log.warning("replay %s: heartbeat failed (%s)", replay_id, type(exc).__name__)
            continue
        if not running:
            raise GatewayError("the replay was marked failed while running (its heartbeat stalled)")


def _unwrap(exc: BaseException) -> BaseException:
    """The one exception inside (nested) single-member exception groups of task groups."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


async def _run(pool: asyncpg.Pool, config: Config, replay_id: str, version: int, window: ReplayWindow) -> None:
    """The background task of one replay: run it, record the outcome, whatever happens."""
    progress = _Progress()
    status = "failed"
    summary: dict[str, Any] | None = None
    error: str | None = "internal error (see the control plane's log)"
    try:
        with anyio.fail_after(REPLAY_TIMEOUT):
            async with anyio.create_task_group() as tg:
                tg.start_soon(_heartbeat, pool, replay_id, progress)
                result = await _replay(pool, config, version, window, progress)
                tg.cancel_scope.cancel()
        status, summary, error = "done", result, None
        log.info("replay %s of policy version %s: %s", replay_id, version, result["sentence"])
    except BaseException as raised:
        exc = _unwrap(raised)
        if isinstance(exc, TimeoutError):
            error = f"the replay did not finish within {REPLAY_TIMEOUT:.0f} s"
            log.warning("replay %s: %s", replay_id, error)
        elif isinstance(exc, GatewayError):
            error = str(exc)
            log.warning("replay %s failed: %s", replay_id, error)
        elif isinstance(exc, Exception):
            log.error("replay %s failed", replay_id, exc_info=exc)
        else:
            error = "the control plane stopped during the replay"
            raise
    finally:
        try:
            with anyio.CancelScope(shield=True), anyio.fail_after(10):
                await db_replays.finish_replay(
                    pool,
                    replay_id,
                    status=status,
                    total=progress.total,
                    done=progress.done,
                    summary=summary,
                    error=error,
                )
        except Exception as exc:  # it stays running, is stale after STALE_AFTER and then failed when read
            log.error("replay %s: recording its outcome failed", replay_id, exc_info=exc)
        _LIVE.pop(replay_id, None)


# ---------------------------------------------------------------- the admin API
def _version(request: Request) -> int:
    return parse_int(request.path_params["version"], "version", minimum=1, maximum=MAX_BIGINT)


def _replay_id(request: Request) -> str:
    raw = check_text(request.path_params["id"], "id")
    try:
        return str(uuid.UUID(raw))
    except ValueError:
        raise RequestRejected("id must be a replay id (a UUID)") from None


async def _sweep(conn: asyncpg.Connection, config: Config) -> None:
    alive = list(_LIVE)
    await db_replays.fail_orphans(
        conn, config.tenant, config.environment, stale_after=STALE_AFTER, owner=OWNER, alive=alive
    )


def _window_of(body: Any) -> tuple[datetime | None, datetime | None, int]:
    if body is None:
        body = {}
    if not isinstance(body, dict) or set(body) - _BODY_KEYS:
        raise RequestRejected('body must be {"since"?: RFC 3339, "until"?: RFC 3339, "limit"?: integer}')
    since = parse_rfc3339(body["since"], field="since") if body.get("since") is not None else None
    until = parse_rfc3339(body["until"], field="until") if body.get("until") is not None else None
    if since is not None and until is not None and since >= until:
        raise RequestRejected("since must be before until")
    limit = body.get("limit", DEFAULT_LIMIT)
    if limit is None:
        limit = DEFAULT_LIMIT
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_LIMIT:
        raise RequestRejected(f"limit must be an integer between 1 and {MAX_LIMIT}")
    return since, until, limit


async def start_replay(request: Request) -> Response:
    """``POST /v1/policies/{version}/replay`` ``{"since"?, "until"?, "limit"?}`` -> 202.

    Starts replaying the scope's recorded decisions (``since`` inclusive, ``until`` exclusive,
    RFC 3339; ``limit`` 1..:data:`MAX_LIMIT`, default :data:`DEFAULT_LIMIT`, the newest first)
    against policy version ``{version}`` in the background. The body may be empty.

    Returns:
        202 ``{"replay_id", "status": "running", "policy_version", "baseline_version",
        "since", "until", "limit", "created_by", "created_at", ...}`` with ``Location`` of
        ``GET /v1/policies/{version}/replays/{replay_id}``.

    Raises:
        RequestRejected: Bad version or body (400).
        NotFound: No such policy version (404).
        ConflictError: A replay is already running in this scope (409).
    """
    d = deps(request)
    tenant, env = d.config.tenant, d.config.environment
    version = _version(request)
    body = None if request.headers.get("content-length") == "0" else await read_json(request)
    since, until, limit = _window_of(body)
    replay_id = str(uuid.uuid4())
    _LIVE[replay_id] = None  # before the row exists, so no sweep of this process fails it
    try:
        async with d.pool.acquire() as conn:
            await _sweep(conn, d.config)
            await db_policies.get_policy(conn, tenant, env, version)
            active = await db_policies.active_policy(conn, tenant, env)
            record = await db_replays.create_replay(
                conn,
                tenant,
                env,
                replay_id=replay_id,
                policy_version=version,
                baseline_version=active["version"] if active else None,
                since=since,
                until=until,
                limit=limit,
                created_by=actor_of(request).name,
                owner=OWNER,
            )
    except BaseException:
        _LIVE.pop(replay_id, None)
        raise
    as_of = datetime.fromisoformat(record["created_at"])
    window = ReplayWindow(path=DECISION_PATH, as_of=as_of, since=since, until=until, limit=limit)
    _LIVE[replay_id] = asyncio.get_running_loop().create_task(_run(d.pool, d.config, replay_id, version, window))
    location = f"/v1/policies/{version}/replays/{replay_id}"
    return JSONResponse(record, status_code=202, headers={"Location": location})


async def get_replay(request: Request) -> Response:
    """``GET /v1/policies/{version}/replays/{id}`` -> the replay: ``status`` (``running``, ``done``,
    ``failed``), ``total`` (null until counted), ``done``, ``summary`` (when done), ``error`` (when failed).

    Raises:
        RequestRejected: Bad version or id (400).
        NotFound: No such replay of that version (404).
    """
    d = deps(request)
    version, replay_id = _version(request), _replay_id(request)
    async with d.pool.acquire() as conn:
        await _sweep(conn, d.config)
        record = await db_replays.get_replay(conn, d.config.tenant, d.config.environment, version, replay_id)
    return JSONResponse(record)


async def list_replays(request: Request) -> Response:
    """``GET /v1/policies/{version}/replays`` -> ``{"items": [...]}``, the newest 100 first, each with
    ``flips`` and ``sentence`` (null until done) instead of the whole summary."""
    d = deps(request)
    version = _version(request)
    async with d.pool.acquire() as conn:
        await _sweep(conn, d.config)
        items = await db_replays.list_replays(conn, d.config.tenant, d.config.environment, version)
    return JSONResponse({"items": items})


async def replay_for_approval(
    conn: asyncpg.Connection, tenant: str, environment: str, version: int
) -> dict[str, Any] | None:
    """The latest finished replay of ``version``, for the approval view (``GET /v1/policies/{version}``).

    Returns:
        None when the version was never replayed to the end, else ``{"replay_id", "finished_at",
        "created_by", "baseline_version", "total", "flips", "subjects", "tools", "errors"
        (a count), "sentence"}``, e.g. sentence ``"this version would deny 14 calls that were
        allowed (3 subjects, 2 tools) and allow 0 calls that were denied; 10000 recorded
        decisions replayed"``.
    """
    record = await db_replays.latest_finished(conn, tenant, environment, version)
    if record is None or not isinstance(record.get("summary"), dict):
        return None
    summary = record["summary"]
    return {
        "replay_id": record["replay_id"],
        "finished_at": record["finished_at"],
        "created_by": record["created_by"],
        "baseline_version": record["baseline_version"],
        "since": record["since"],
        "until": record["until"],
        "total": summary.get("total"),
        "flips": summary.get("flips"),
        "subjects": summary.get("subjects"),
        "tools": summary.get("tools"),
        "errors": (summary.get("errors") or {}).get("count"),
        "sentence": summary.get("sentence"),
    }
