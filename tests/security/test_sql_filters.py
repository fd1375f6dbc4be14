"""SQL metacharacters in every filter and name of the admin API (and the data planes' feed).

The query parameters are read from the OpenAPI document (:func:`openapi_document`): every
parameter of every ``GET /v1/audit/*`` operation, so a filter documented later is covered
without touching this file. A free-text parameter gets quotes, a tautology, a statement
separator and comment, the ``LIKE`` wildcards (``%``, ``_``), a backslash, NUL, unicode (a
fullwidth apostrophe) and values at and past the documented ``maxLength`` (:data:`CORE`; the
substring filters :data:`MORE` too); a parameter with a syntax gets fewer (:data:`TYPED`: its
parser refuses whatever does not fit). Each answer is never 5xx, and is either

* 400 naming the parameter: when the value breaks the documented schema (type, enum, format,
  pattern, length), holds NUL, or is no valid ``cursor`` / ``q``; or
* 200 with exactly the rows the literal value matches. The expectation comes from PostgreSQL
  directly (a parameterised query of this file: equality with the column for the exact-match
  filters, a case-insensitive substring of a reason for ``reason`` and every word of ``q``), run
  before and after the request (rows only ever arrive): ``before <= answer <= after``. Runtime
  events are planted whose every text field *is* one of the payloads, so the literal value
  matches a row and a tautology would match many (the victim's calls, the other plants); on
the control-plane trail, where nothing can be planted, a stored value is the control.

Path parameters and the internal projection feed's parameters are checked as well. Afterwards
every table is still there with its rows.
"""

from __future__ import annotations

import asyncio
import base64
import re
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import asyncpg
import httpx
import orjson
import pytest

from gateway.controlplane.audit import MAX_TERM, MAX_TERMS
from gateway.controlplane.openapi import openapi_document
from gateway.devtools.stack import LocalStack
from tests.security.helpers import (
    admin_get,
    assert_bad_request_naming,
    internal_headers,
    post_call,
    raw_request,
    wait_audited,
)

pytestmark = [pytest.mark.integration, pytest.mark.db]

CORE = [
    "' OR '1'='1",
    "'; DROP TABLE audit_decisions; --",
    "%",
    "_",
    "\\'",
    "x\x00y",
    "ünïcødé ＇ OR ＇1＇=＇1 漢字 😀",
]
"""Sent as every free-text query parameter of every audit operation, with two long values
(:func:`_long_values`): a tautology, a statement separator and comment, the ``LIKE`` wildcards,
an escaped quote, NUL and unicode (a fullwidth apostrophe, which a normaliser could turn into
a quote)."""
TYPED = ["' OR '1'='1", "x\x00y", "ünïcødé ＇ OR ＇1＇=＇1 %_\\"]
"""Sent as every parameter with a syntax (integer, boolean, enum, date-time, pattern, cursor),
with a long value and a valid value followed by a tautology: each one a 400 naming it."""
MORE = [
    "'",
    "''",
    "' OR 1=1 --",
    '" OR ""="',
    "1; DELETE FROM policy_versions",
    "') OR ('x'='x",
    ";--",
    "$1",
    "$$ OR $$a$$=$$a",
    "%%",
    "\\",
    "\\%",
    "İ",
    "\u202e'--\u200b",
    "a\nb' --",
]
"""Sent as well to the substring filters (``reason``, ``q``) and, all exact filters at once, to
the pages, the stats and the export."""
PAYLOADS = [*CORE, *MORE]
PATH_PAYLOADS = [
    "' OR 1=1 --",
    "' OR '1'='1",
    '" OR ""="',
    '"; DROP TABLE audit_decisions; --',
    "'; DROP TABLE mcp_servers; --",
    "1; DELETE FROM policy_versions",
    "') OR ('x'='x",
    "$1",
    "%",
    "_",
    "%%",
    "\\",
    "\\'",
    "x\x00y",
    "ünïcødé ＇ 漢字 😀",
]
"""Sent as path segments, the feed's parameters and inside a well-formed cursor."""
WORKERS = 4
"""Requests of one case in flight at once (the admin pipeline, not the query, is the slow part)."""
TABLES = ("mcp_servers", "mcp_server_tools", "policy_versions", "projections", "data_planes", "opa_instances")
GROWING_TABLES = ("audit_decisions", "opa_decision_logs", "control_plane_audit")
"""Rows only arrive here while the suite runs (events of earlier modules, this module's requests)."""

DECISIONS, CONTROL_PLANE = "/v1/audit/decisions", "/v1/audit/control-plane"
"""The two trails' pages; the export takes either trail's filters, the stats the decisions'."""
DECISION_COLUMNS = (
    "subject",
    "client_id",
    "server",
    "tool",
    "action",
    "status",
    "error_category",
    "policy_revision",
    "protocol_version",
    "dataplane_id",
)
"""Runtime trail filters that are the exact value of the ``audit_decisions`` column of that name."""
CONTROL_PLANE_COLUMNS = ("actor", "action", "resource_kind", "resource_id")
"""Control-plane trail filters that are the exact value of the ``control_plane_audit`` column."""
REQUIRED = {
    DECISIONS: {
        *("subject", "server", "tool", "action", "allowed", "since", "until", "limit", "cursor"),
        *("client_id", "outcome", "status", "error_category", "policy_revision", "projection_version"),
        *("protocol_version", "dataplane_id", "min_latency_ms", "reason", "q", "order"),
    },
    "/v1/audit/stats": {"subject", "server", "reason", "q", "min_latency_ms", "since", "until", "top"},
    "/v1/audit/export": {"format", "trail", "order", "subject", "reason", "q", "actor", "resource_kind", "resource_id"},
    CONTROL_PLANE: {
        *("actor", "action", "allowed", "status", "resource_kind", "resource_id", "changes"),
        *("since", "until", "order", "limit", "cursor"),
    },
}
"""What the derivation from the document must at least find (so it cannot shrink to nothing)."""
RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)")


# ------------------------------------------------------------------ the cases, from the document


@dataclass(frozen=True)
class Case:
    """One query parameter of one audit operation, sent on ``trail`` (the export's ``trail=``)."""

    path: str
    param: str
    schema: dict[str, Any] = field(hash=False, compare=False)
    trail: str | None
    """:data:`DECISIONS`, :data:`CONTROL_PLANE` (whose rows an answer holds) or None."""
    fixed: tuple[tuple[str, str], ...] = ()
    """Parameters sent along: ``trail`` for the export, the largest ``limit`` for the pages."""

    @property
    def id(self) -> str:
        return f"{self.path}?{self.param}" + (f"[trail={self.trail.rsplit('/', 1)[1]}]" if self.trail else "")


def _query_params(op: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["name"]: p["schema"] for p in op.get("parameters", []) if p["in"] == "query"}


def audit_operations() -> dict[str, dict[str, dict[str, Any]]]:
    """``{path: {parameter: schema}}`` of every admin ``GET /v1/audit/*`` with query parameters."""
    paths = openapi_document()["paths"]
    return {
        path: params
        for path, item in paths.items()
        if path.startswith("/v1/audit/") and "get" in item and not item["get"].get("x-internal")
        if (params := _query_params(item["get"]))
    }


def audit_cases() -> list[Case]:
    """Every (operation, query parameter), the export's once per trail that takes the parameter
    (with that trail's page's schema: ``status`` is text on one trail and an integer on the other)."""
    ops = audit_operations()
    pages = {DECISIONS: ops[DECISIONS], CONTROL_PLANE: ops[CONTROL_PLANE]}
    cases = []
    for path, params in ops.items():
        limit = params.get("limit")
        for name, schema in params.items():
            fixed = (("limit", str(limit["maximum"])),) if limit is not None and name != "limit" else ()
            if path == "/v1/audit/export":
                trails = [t for t, page in pages.items() if name in page] or [DECISIONS]
                for trail in trails:
                    spelt = trail.rsplit("/", 1)[1]  # decisions | control-plane
                    sent = () if name == "trail" else (("trail", spelt),)
                    cases.append(Case(path, name, pages[trail].get(name, schema), trail, sent))
            else:
                rows = path if path in pages else DECISIONS if path == "/v1/audit/stats" else None
                cases.append(Case(path, name, schema, rows, fixed))
    return cases


CASES = audit_cases()


def test_every_audit_filter_is_derived_from_the_document() -> None:
    ops = audit_operations()
    for path, names in REQUIRED.items():
        assert names <= set(ops[path]), (path, names - set(ops[path]))
    assert {"/v1/audit/verify", "/v1/audit/checkpoints"} <= set(ops)
    assert len(CASES) >= sum(len(p) for p in ops.values())
    covered = {(c.path, c.param) for c in CASES}
    assert covered == {(path, name) for path, params in ops.items() for name in params}


# ------------------------------------------------------------------ what an answer must be


def _pattern(pattern: str) -> re.Pattern[str]:
    # ECMA-262 ``$`` is the end of the text; Python's also matches before a final newline.
    return re.compile(pattern[:-1] + r"\Z" if pattern.endswith("$") and not pattern.endswith("\\$") else pattern)


def breaks_schema(schema: dict[str, Any], value: str) -> bool:
    """Whether the query value ``value`` is outside the documented ``schema``."""
    kind = schema.get("type", "string")
    if "enum" in schema:
        return value not in [str(v).lower() if isinstance(v, bool) else str(v) for v in schema["enum"]]
    if kind == "boolean":
        return value not in ("true", "false")
    if kind == "integer":
        if not re.fullmatch(r"[0-9]{1,19}", value):
            return True
        return not schema.get("minimum", 0) <= int(value) <= schema.get("maximum", 2**63 - 1)
    if schema.get("format") == "date-time" and not RFC3339.fullmatch(value):
        return True
    if "pattern" in schema and not _pattern(schema["pattern"]).search(value):
        return True
    return not schema.get("minLength", 0) <= len(value) <= schema.get("maxLength", len(value))


def refused(case: Case, value: str) -> bool:
    """Whether ``value`` must be a 400 naming ``case.param`` (else a 200 with the literal's rows)."""
    if "\x00" in value or case.param == "cursor" or breaks_schema(case.schema, value):
        return True  # (a cursor is base64url JSON: none of the payloads is one)
    if case.param == "q":
        words = value.split()
        return not 1 <= len(words) <= MAX_TERMS or any(len(w) > MAX_TERM for w in words)
    return False


def valid_value(schema: dict[str, Any]) -> str | None:
    """A value the schema admits that is not free text (to append a payload to), or None."""
    if schema.get("type", "string") == "string" and not ({"enum", "format"} & set(schema)):
        if "pattern" not in schema or _pattern(schema["pattern"]).search("' OR '1'='1"):
            return None  # free text
    for candidate in ("true", "1", "100", "2020-01-01T00:00:00Z", *map(str, schema.get("enum", ()))):
        if not breaks_schema(schema, candidate):
            return candidate
    return None


def _long_values(schema: dict[str, Any]) -> list[str]:
    """A tautology repeated up to the documented ``maxLength`` and one character past it."""
    n = schema.get("maxLength", 1024)
    text = ("' OR '1'='1' -- " * (n // 8 + 2))[: n + 1]
    return [text[:n], text]


_REASON_HAS = (
    "EXISTS (SELECT 1 FROM jsonb_array_elements_text(CASE WHEN jsonb_typeof(a.reasons) = 'array'"
    " THEN a.reasons ELSE '[]'::jsonb END) AS r(x) WHERE strpos(lower(r.x), lower({t})) > 0)"
)


def oracle_condition(trail: str | None, param: str, value: str, n: int = 1) -> tuple[str, list[Any]] | None:
    """SQL (alias ``a``, one argument: ``$n``) selecting the rows the literal ``value`` of
    ``param`` matches, as documented; None when this file does not know the filter's meaning."""
    if trail == DECISIONS and param in DECISION_COLUMNS:
        return f"a.{param} = ${n}", [value]
    if trail == CONTROL_PLANE and param in CONTROL_PLANE_COLUMNS:
        return f"a.{param} = ${n}", [value]
    if trail == DECISIONS and param == "reason":
        return _REASON_HAS.format(t=f"${n}"), [value]
    if trail == DECISIONS and param == "q":  # every word a substring of one of the reasons
        return f"(SELECT bool_and({_REASON_HAS.format(t='w')}) FROM unnest(${n}::text[]) AS w)", [value.split()]
    return None


def all_of(trail: str, params: dict[str, str]) -> tuple[str, list[Any]]:
    """The conjunction of :func:`oracle_condition` of each parameter."""
    parts = [oracle_condition(trail, name, value, i) for i, (name, value) in enumerate(params.items(), 1)]
    assert all(p is not None for p in parts)
    return " AND ".join(p[0] for p in parts if p), [p[1][0] for p in parts if p]


class Database:
    """A connection of this module's own to the stack's database (the expectations' source)."""

    def __init__(self, url: str) -> None:
        self._loop = asyncio.new_event_loop()
        self._conn: asyncpg.Connection = self._loop.run_until_complete(asyncpg.connect(url))

    def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        return self._loop.run_until_complete(self._conn.fetch(sql, *args))

    def close(self) -> None:
        self._loop.run_until_complete(self._conn.close())
        self._loop.close()

    def matching(
        self, trail: str, condition: tuple[str, list[Any]], window: tuple[datetime, datetime] | None
    ) -> set[Any]:
        """Keys (``decision_id`` / ``id``) of the rows ``condition`` selects (in ``[since, until)``)."""
        sql, args = condition
        table, key = ("audit_decisions", "decision_id") if trail == DECISIONS else ("control_plane_audit", "id")
        if window is not None:
            sql += f' AND a."timestamp" >= ${len(args) + 1} AND a."timestamp" < ${len(args) + 2}'
            args = [*args, *window]
        return {r[0] for r in self.fetch(f"SELECT a.{key} FROM {table} a WHERE {sql}", *args)}

    def snapshot(self) -> dict[str, Any]:
        tables = {r[0] for r in self.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        counts = {t: self.fetch(f"SELECT count(*) FROM {t}")[0][0] for t in (*TABLES, *GROWING_TABLES)}
        return {"tables": tables, "counts": counts}


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


@dataclass
class Answer:
    """The rows (keys, items) of a 200, or the stats' ``total`` and window."""

    keys: set[Any] | None = None
    items: list[dict[str, Any]] = field(default_factory=list)
    total: int | None = None
    window: tuple[datetime, datetime] | None = None


def read_answer(case: Case, resp: httpx.Response) -> Answer:
    if case.path == "/v1/audit/export":
        items = [orjson.loads(line) for line in resp.content.splitlines() if line]
    elif case.path == "/v1/audit/stats":
        body = resp.json()
        window = (datetime.fromisoformat(body["since"]), datetime.fromisoformat(body["until"]))
        return Answer(total=body["total"], window=window)
    elif case.trail is not None:
        items = resp.json()["items"]
    else:
        return Answer()
    key = "decision_id" if case.trail == DECISIONS else "id"
    return Answer(keys={i[key] for i in items}, items=items)


def send(http: httpx.Client, stack: LocalStack, case: Case, value: str) -> httpx.Response:
    return admin_get(http, stack, case.path, {**dict(case.fixed), case.param: value})


def check_values(
    http: httpx.Client, stack: LocalStack, db: Database, pool: ThreadPoolExecutor, case: Case, values: list[str]
) -> dict[str, Answer]:
    """Send each value (:data:`WORKERS` at a time); assert each answer (module docstring).

    The expectation of a 200 is read from PostgreSQL before the first request and after the
    last: rows only arrive, so the answer lies between the two.
    """
    conditions = {v: None if refused(case, v) else oracle_condition(case.trail, case.param, v) for v in values}

    def expected() -> dict[str, set[Any]]:
        return {v: db.matching(case.trail, c, None) for v, c in conditions.items() if case.trail and c}

    before = expected()
    responses = dict(zip(values, pool.map(lambda v: send(http, stack, case, v), values), strict=True))
    after = expected()
    return {v: judge(db, case, v, responses[v], conditions[v], before.get(v), after.get(v)) for v in values}


def judge(
    db: Database,
    case: Case,
    value: str,
    resp: httpx.Response,
    condition: tuple[str, list[Any]] | None,
    before: set[Any] | None,
    after: set[Any] | None,
) -> Answer:
    what = (case.id, ascii(value[:80]))
    assert resp.status_code < 500, (what, resp.status_code, resp.text[:500])
    if refused(case, value):
        assert_bad_request_naming(resp, case.param)
        return Answer()
    assert resp.status_code == 200, (what, resp.text[:500])
    answer = read_answer(case, resp)
    if case.trail is None:
        return answer
    if condition is None:  # a filter this file does not know the meaning of: at least a literal one
        folded = value.casefold()
        stray = [i for i in answer.items if not any(folded in s.casefold() for s in _strings(i))]
        assert stray == [], (what, "rows without the value", stray[:3])
        return answer
    assert before is not None and after is not None
    if answer.total is not None:  # the stats: a count in the window the answer states
        assert answer.window is not None
        high = db.matching(case.trail, condition, answer.window)
        assert len(high & before) <= answer.total <= len(high), (what, len(high & before), answer.total, len(high))
        return answer
    assert answer.keys is not None
    limit = dict(case.fixed).get("limit")
    if limit is not None and len(before) >= int(limit):  # a full page of matching rows
        assert len(answer.keys) == int(limit) and answer.keys <= after, what
    else:
        assert before <= answer.keys <= after, (what, before - answer.keys, answer.keys - after)
    return answer


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def db(stack: LocalStack) -> Iterator[Database]:
    database = Database(stack.database_url)
    yield database
    database.close()


@pytest.fixture(scope="module")
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(WORKERS) as executor:
        yield executor


@pytest.fixture(scope="module")
def victim(http: httpx.Client, stack: LocalStack, db: Database) -> dict[str, Any]:
    """A subject with audited calls (so a filter that matched too much would return rows),
    and the database as it was before any payload was sent."""
    subject = f"victim{uuid.uuid4().hex[:12]}"
    token = stack.idp.mint(subject, ["viewer"], stack.audience)
    for _ in range(2):
        assert post_call(http, stack, token, "demo__echo", {"text": "seed"}).status_code == 200
    items = wait_audited(http, stack, subject, 2)
    return {"subject": subject, "items": items, "before": db.snapshot()}


def _plantable() -> list[str]:
    values = [p for p in PAYLOADS if "\x00" not in p]
    return values + [v for v in _long_values({"maxLength": 1024}) if len(v) <= 1024]


@pytest.fixture(scope="module")
def planted(http: httpx.Client, stack: LocalStack, victim: dict[str, Any]) -> dict[str, str]:
    """Runtime events (as a data plane sends them) whose every text field and only reason is
    one of the payloads: ``{payload: decision_id}``."""
    scope = admin_get(http, stack, "/v1/control-plane/scope").json()
    now = datetime.now(UTC).isoformat()
    events = {value: f"sqlplant-{uuid.uuid4().hex}" for value in _plantable()}
    body = [
        {
            "decision_id": decision_id,
            "timestamp": now,
            "tenant": scope["tenant"],
            "environment": scope["environment"],
            **dict.fromkeys(DECISION_COLUMNS, value),
            "allowed": False,
            "reasons": [value],
            "latency_ms": 1.5,
        }
        for value, decision_id in events.items()
    ]
    resp = http.post(f"{stack.control_url}/v1/audit/events", json=body, headers=internal_headers(stack))
    assert resp.status_code == 202 and resp.json() == {"accepted": len(body)}, resp.text
    return events


# ------------------------------------------------------------------ every documented parameter


def values_for(case: Case) -> list[str]:
    """What :func:`test_every_audit_parameter_takes_metacharacters_literally_or_refuses_them_by_name`
    sends as ``case.param``."""
    valid = valid_value(case.schema)
    if valid is not None or case.param == "cursor":
        return [*TYPED, _long_values(case.schema)[1], *([valid + "' OR '1'='1"] if valid else [])]
    more = MORE if case.path == DECISIONS and case.param in ("reason", "q") else []
    return [*CORE, *more, *_long_values(case.schema)]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_every_audit_parameter_takes_metacharacters_literally_or_refuses_them_by_name(
    http: httpx.Client,
    stack: LocalStack,
    db: Database,
    pool: ThreadPoolExecutor,
    planted: dict[str, str],
    case: Case,
) -> None:
    """Each payload, and each long value: 400 naming the parameter, or exactly the literal's rows."""
    answers = check_values(http, stack, db, pool, case, values_for(case))
    for value, answer in answers.items():
        exact = oracle_condition(case.trail, case.param, value) is not None
        if exact and value in planted and not refused(case, value) and case.trail == DECISIONS:
            # not vacuous: the event planted with this very value is found
            assert answer.keys is None or planted[value] in answer.keys, (case.id, ascii(value))
            assert answer.total is None or answer.total >= 1, (case.id, ascii(value))


CONTROL_PLANE_CASES = [c for c in CASES if c.trail == CONTROL_PLANE and c.param in CONTROL_PLANE_COLUMNS]


@pytest.mark.parametrize("case", CONTROL_PLANE_CASES, ids=[c.id for c in CONTROL_PLANE_CASES])
def test_a_control_plane_filter_finds_the_rows_of_a_value_that_exists(
    http: httpx.Client, stack: LocalStack, db: Database, pool: ThreadPoolExecutor, victim: dict[str, Any], case: Case
) -> None:
    """The control for the control-plane trail, where nothing is planted: its rarest stored
    value (e.g. the registration of ``demo``) finds rows, the ones PostgreSQL has."""
    rows = db.fetch(
        f"SELECT {case.param} FROM control_plane_audit WHERE {case.param} IS NOT NULL"
        " GROUP BY 1 ORDER BY count(*), 1 LIMIT 1"
    )
    assert rows, (case.id, "no stored value")
    answer = check_values(http, stack, db, pool, case, [rows[0][0]])[rows[0][0]]
    assert answer.keys, case.id


AT_ONCE = [
    Case(DECISIONS, ",".join(DECISION_COLUMNS), {}, DECISIONS, (("limit", "500"),)),
    Case("/v1/audit/stats", ",".join(DECISION_COLUMNS), {}, DECISIONS),
    Case("/v1/audit/export", ",".join(DECISION_COLUMNS), {}, DECISIONS, (("trail", "decisions"),)),
    Case(CONTROL_PLANE, ",".join(CONTROL_PLANE_COLUMNS), {}, CONTROL_PLANE, (("limit", "1000"),)),
    Case("/v1/audit/export", ",".join(CONTROL_PLANE_COLUMNS), {}, CONTROL_PLANE, (("trail", "control-plane"),)),
]


@pytest.mark.parametrize("case", AT_ONCE, ids=[c.id for c in AT_ONCE])
def test_every_exact_filter_at_once_with_each_payload(
    http: httpx.Client, stack: LocalStack, db: Database, planted: dict[str, str], case: Case
) -> None:
    """Every exact filter of a trail with the same payload (each of :data:`PAYLOADS`): exactly
    the rows PostgreSQL has for the conjunction; on the runtime trail, the planted event."""
    for payload in PAYLOADS:
        if "\x00" in payload:
            continue
        assert case.trail is not None
        params = dict.fromkeys(case.param.split(","), payload)
        condition = all_of(case.trail, params)
        before = db.matching(case.trail, condition, None)
        resp = admin_get(http, stack, case.path, {**dict(case.fixed), **params})
        assert resp.status_code == 200, (case.id, ascii(payload), resp.text[:500])
        answer = read_answer(case, resp)
        after = db.matching(case.trail, condition, None)
        if answer.total is not None:
            assert answer.window is not None
            assert answer.total == len(db.matching(case.trail, condition, answer.window)) == 1, ascii(payload)
        else:
            assert answer.keys is not None and before <= answer.keys <= after, (case.id, ascii(payload))
        if case.trail == DECISIONS:
            assert before == {planted[payload]}, ascii(payload)


# ------------------------------------------------------------------ the runtime trail in more depth


def _decisions(http: httpx.Client, stack: LocalStack, params: dict[str, str]) -> httpx.Response:
    return admin_get(http, stack, DECISIONS, params)


TEXT_FILTERS = ("subject", "server", "tool", "action")


@pytest.mark.parametrize("name", TEXT_FILTERS)
def test_like_wildcards_next_to_a_real_value_match_nothing(
    http: httpx.Client, stack: LocalStack, victim: dict[str, Any], name: str
) -> None:
    value = {"subject": victim["subject"], "server": "demo", "tool": "echo", "action": "tools/call"}[name]
    for pattern in (value[:-1] + "%", value[:-1] + "_", "%" + value[1:], "_" + value[1:], value + "%", value.upper()):
        resp = _decisions(
            http, stack, {name: pattern, "subject": victim["subject"]} if name != "subject" else {name: pattern}
        )
        assert resp.status_code == 200 and resp.json()["items"] == [], (name, pattern, resp.text)


def test_reason_wildcards_match_only_literally(
    http: httpx.Client, stack: LocalStack, db: Database, planted: dict[str, str]
) -> None:
    """``%`` and ``_`` are ``LIKE`` wildcards inside the substring search: as a reason they find
    the events whose reason holds that very character, not every event."""
    everything = {r[0] for r in db.fetch("SELECT decision_id FROM audit_decisions")}
    for value in ("%", "_", "\\", "%%"):
        found = {i["decision_id"] for i in _decisions(http, stack, {"reason": value, "limit": "500"}).json()["items"]}
        assert planted[value] in found and found < everything, value


@pytest.mark.parametrize("payload", PATH_PAYLOADS, ids=[ascii(p) for p in PATH_PAYLOADS])
def test_a_well_formed_cursor_carrying_metacharacters_is_a_plain_keyset_position(
    http: httpx.Client, stack: LocalStack, victim: dict[str, Any], payload: str
) -> None:
    """A cursor that decodes to ``["2000-01-01T00:00:00+00:00", <payload>]`` names a position
    before every event: 200 with no rows (or 400 ``cursor`` for NUL)."""
    raw = orjson.dumps(["2000-01-01T00:00:00+00:00", payload])
    cursor = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    resp = _decisions(http, stack, {"cursor": cursor})
    if "\x00" in payload:
        assert_bad_request_naming(resp, "cursor")
    else:
        assert resp.status_code == 200 and resp.json() == {"items": [], "next_cursor": None}, resp.text


# ------------------------------------------------------------------ path parameters and the feed


@pytest.mark.parametrize("payload", PATH_PAYLOADS, ids=[ascii(p) for p in PATH_PAYLOADS])
def test_path_parameters_refuse_or_miss_metacharacters(stack: LocalStack, victim: dict[str, Any], payload: str) -> None:
    segment = quote(payload, safe="")
    status, body = raw_request(stack.control_port, "GET", f"/v1/audit/decisions/{segment}", stack.admin_headers)
    # A control character anywhere in the path is refused before routing (400 naming it).
    control = any(ord(c) < 0x20 or ord(c) == 0x7F for c in payload)
    if control:
        assert_bad_request_naming((status, body), "control characters")
    else:
        assert status == 404 and orjson.loads(body)["error"] == "not_found", (status, body)
    for method, target, name in (
        ("GET", f"/v1/servers/{segment}", "name"),
        ("POST", f"/v1/servers/{segment}/approve", "name"),
        ("GET", f"/v1/policies/{segment}", "version"),
        ("POST", f"/v1/policies/{segment}/approve", "version"),
    ):
        answer = raw_request(stack.control_port, method, target, stack.admin_headers)
        assert_bad_request_naming(answer, "control characters" if control else name)


FEED_PAYLOADS = [p for p in PATH_PAYLOADS if p != "_"]


@pytest.mark.parametrize("payload", FEED_PAYLOADS, ids=[ascii(p) for p in FEED_PAYLOADS])
def test_the_data_planes_feed_refuses_metacharacters_before_recording_anything(
    http: httpx.Client, stack: LocalStack, victim: dict[str, Any], payload: str
) -> None:
    """``GET /v1/dataplane/projection`` writes its query parameters into ``data_planes`` and
    ``opa_instances``: each is checked first (``_`` is a legitimate id character, so not sent)."""
    url = f"{stack.control_url}/v1/dataplane/projection"
    for params, name in (
        ({"dataplane_id": payload}, "dataplane_id"),
        ({"dataplane_id": "dp-local", "active_version": payload}, "active_version"),
        ({"dataplane_id": "dp-local", "error": payload}, "error"),
        ({"dataplane_id": "dp-local", "opa_instance": payload}, "opa_instance"),
    ):
        assert_bad_request_naming(http.get(url, params=params, headers=internal_headers(stack)), name)


def test_the_tables_and_their_rows_are_intact_afterwards(
    http: httpx.Client, stack: LocalStack, db: Database, victim: dict[str, Any], planted: dict[str, str]
) -> None:
    """Runs last in this module: after every payload above, nothing was dropped or deleted."""
    before, after = victim["before"], db.snapshot()
    assert after["tables"] == before["tables"]
    for table in TABLES:
        assert after["counts"][table] == before["counts"][table], table
    for table in GROWING_TABLES:  # events of earlier modules may still arrive; none may go
        assert after["counts"][table] >= before["counts"][table], table
    assert after["counts"]["audit_decisions"] >= before["counts"]["audit_decisions"] + len(planted)
    again = admin_get(http, stack, DECISIONS, {"subject": victim["subject"], "action": "tools/call"})
    assert again.json()["items"] == victim["items"]
