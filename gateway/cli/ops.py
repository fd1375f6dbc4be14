"""``gatewayctl projection status``, ``audit query|export|forward`` and ``keys create|list|revoke``."""

from __future__ import annotations

import enum
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from gateway.cli import forward
from gateway.cli.common import (
    OutputOpt,
    RecordOutputOpt,
    admin_client,
    drop_none,
    handle_errors,
    note,
    seg,
    settings_of,
)
from gateway.cli.errors import CliError, ExitCode
from gateway.cli.output import Output, err_console, render_list, render_record, say

__all__ = ["audit_app", "keys_app", "projection_app", "rolled_out"]

projection_app = typer.Typer(help="The rollout of compiled projections to data planes and OPA.", no_args_is_help=True)
audit_app = typer.Typer(help="The runtime decision audit trail.", no_args_is_help=True)
keys_app = typer.Typer(help="API keys for machine agents: create, list, revoke.", no_args_is_help=True)

DATA_PLANE_COLUMNS = ("id", "active_version", "state", "live", "last_seen", "error_category")
OPA_COLUMNS = (
    "id",
    "dataplane_id",
    "active_version",
    "active_revision",
    "state",
    "live",
    "last_seen",
    "code",
    "message",
)
AUDIT_COLUMNS = ("timestamp", "decision_id", "subject", "action", "server", "tool", "allowed", "reasons", "status")
KEY_COLUMNS = (
    "id",
    "prefix",
    "subject",
    "roles",
    "description",
    "created_at",
    "expires_at",
    "revoked_at",
    "created_by",
)


def rolled_out(state: dict[str, Any]) -> bool:
    """True when every live data plane and OPA runs the newest compiled projection.

    ``active_version`` of ``GET /v1/projection`` is the minimum over the live instances (null
    when there is none or one has activated nothing), so equality with ``desired_version``
    means all of them have it.
    """
    desired = state.get("desired_version")
    return desired is not None and state.get("active_version") == desired


def _render_projection(state: dict[str, Any]) -> None:
    summary = {k: state.get(k) for k in ("desired_version", "active_version", "policy_version")}
    summary["rolled_out"] = rolled_out(state)
    render_record(summary, Output.table)
    render_list(state.get("data_planes") or [], Output.table, DATA_PLANE_COLUMNS, title="data planes")
    render_list(state.get("opa") or [], Output.table, OPA_COLUMNS, title="OPA")


@projection_app.command("status")
@handle_errors
def projection_status(
    ctx: typer.Context,
    wait: Annotated[
        bool, typer.Option("--wait", help="Wait until every live data plane and OPA runs the newest version.")
    ] = False,
    timeout: Annotated[float, typer.Option(min=0, help="Seconds --wait may take (exit 4 after).")] = 120.0,
    interval: Annotated[float, typer.Option(min=0.05, help="Seconds between polls.")] = 0.5,
    output: RecordOutputOpt = Output.table,
) -> None:
    """Desired and active projection versions per data plane and OPA (GET /v1/projection)."""
    client = admin_client(ctx)
    state = client.get("/v1/projection")
    if wait and not rolled_out(state):
        deadline = time.monotonic() + timeout
        with err_console().status("waiting for the rollout") as spinner:
            while not rolled_out(state):
                if time.monotonic() >= deadline:
                    if output is Output.table:
                        _render_projection(state)
                    else:
                        render_record(state, output)
                    raise CliError(
                        f"projection {state.get('desired_version')} not active everywhere after {timeout:g}s "
                        f"(active: {state.get('active_version')})",
                        ExitCode.TIMEOUT,
                    )
                spinner.update(
                    f"waiting for projection {state.get('desired_version')} (active: {state.get('active_version')})"
                )
                time.sleep(interval)
                state = client.get("/v1/projection")
    if output is Output.table:
        _render_projection(state)
    else:
        render_record(state, output)


SubjectOpt = Annotated[str | None, typer.Option(help="Only this subject.")]
ServerOpt = Annotated[str | None, typer.Option(help="Only this server.")]
ToolOpt = Annotated[str | None, typer.Option(help="Only this tool.")]
ActionOpt = Annotated[str | None, typer.Option(help="Only this action (e.g. tools/call).")]
AllowedOpt = Annotated[
    bool | None, typer.Option("--allowed/--denied", help="Only allowed (or only refused) decisions.")
]
ClientOpt = Annotated[str | None, typer.Option("--client-id", help="Only this client (agent).")]
OutcomeOpt = Annotated[str | None, typer.Option(help="allowed, denied, rejected or error.")]
StatusOpt = Annotated[str | None, typer.Option(help="Only this status (ok, tool_error, denied, rejected, error).")]
CategoryOpt = Annotated[str | None, typer.Option("--error-category", help="Only this error category.")]
RevisionOpt = Annotated[str | None, typer.Option("--policy-revision", help="Only this policy revision.")]
ProjectionOpt = Annotated[int | None, typer.Option("--projection-version", min=0, help="Only this projection.")]
ProtocolOpt = Annotated[str | None, typer.Option("--protocol-version", help="Only this MCP protocol version.")]
DataPlaneOpt = Annotated[str | None, typer.Option("--dataplane-id", help="Only this data plane.")]
LatencyOpt = Annotated[float | None, typer.Option("--min-latency-ms", min=0, help="Only slower than this (ms).")]
ReasonOpt = Annotated[str | None, typer.Option(help="A reason contains this (case-insensitive).")]
SearchOpt = Annotated[str | None, typer.Option("--search", "-q", help="Free text over the reasons (every word).")]
SinceOpt = Annotated[str | None, typer.Option(help="RFC 3339, inclusive.")]
UntilOpt = Annotated[str | None, typer.Option(help="RFC 3339, exclusive.")]


def _bool_text(value: bool | None) -> str | None:
    return None if value is None else ("true" if value else "false")


def trail_filters(**options: Any) -> dict[str, Any]:
    """Query parameters of the runtime trail's filters from the command's options (None left out)."""
    search = options.pop("search", None)
    if options.get("allowed") is not None:
        options["allowed"] = _bool_text(options["allowed"])
    if options.get("min_latency_ms") is not None:
        options["min_latency_ms"] = f"{options['min_latency_ms']:.6f}".rstrip("0").rstrip(".")
    return drop_none(**options, q=search)


@audit_app.command("query")
@handle_errors
def audit_query(
    ctx: typer.Context,
    subject: SubjectOpt = None,
    server: ServerOpt = None,
    tool: ToolOpt = None,
    action: ActionOpt = None,
    allowed: AllowedOpt = None,
    client_id: ClientOpt = None,
    outcome: OutcomeOpt = None,
    status: StatusOpt = None,
    error_category: CategoryOpt = None,
    policy_revision: RevisionOpt = None,
    projection_version: ProjectionOpt = None,
    protocol_version: ProtocolOpt = None,
    dataplane_id: DataPlaneOpt = None,
    min_latency_ms: LatencyOpt = None,
    reason: ReasonOpt = None,
    search: SearchOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    limit: Annotated[int, typer.Option(min=1, max=500, help="Decisions per page (1-500).")] = 50,
    cursor: Annotated[str | None, typer.Option(help="Page cursor printed by the previous page.")] = None,
    all_pages: Annotated[bool, typer.Option("--all", help="Follow the cursor to the last page.")] = False,
    output: OutputOpt = Output.table,
) -> None:
    """Query recorded decisions, newest first (GET /v1/audit/decisions).

    The next page's cursor is printed on stderr (stdout stays pure data).
    """
    client = admin_client(ctx)
    params = trail_filters(
        subject=subject,
        server=server,
        tool=tool,
        action=action,
        allowed=allowed,
        client_id=client_id,
        outcome=outcome,
        status=status,
        error_category=error_category,
        policy_revision=policy_revision,
        projection_version=projection_version,
        protocol_version=protocol_version,
        dataplane_id=dataplane_id,
        min_latency_ms=min_latency_ms,
        reason=reason,
        search=search,
        since=since,
        until=until,
    )
    params.update(drop_none(limit=limit, cursor=cursor))
    items: list[dict[str, Any]] = []
    while True:
        page = client.get("/v1/audit/decisions", **params)
        items.extend(page["items"])
        next_cursor = page.get("next_cursor")
        if not (all_pages and next_cursor):
            break
        params["cursor"] = next_cursor
    render_list(items, output, AUDIT_COLUMNS)
    if next_cursor:
        note(f"more: --cursor {next_cursor}")


class ExportFormat(enum.StrEnum):
    """``audit export --format``."""

    ndjson = "ndjson"
    csv = "csv"


class Trail(enum.StrEnum):
    """Which trail to export or forward."""

    decisions = "decisions"
    control_plane = "control-plane"


class Order(enum.StrEnum):
    """Export order."""

    asc = "asc"
    desc = "desc"


TrailOpt = Annotated[
    Trail, typer.Option(help="decisions (the runtime trail) or control-plane (admin requests and changes).")
]
CpActorOpt = Annotated[str | None, typer.Option(help="control-plane: only this actor.")]
CpKindOpt = Annotated[str | None, typer.Option("--resource-kind", help="control-plane: only this resource kind.")]
CpIdOpt = Annotated[str | None, typer.Option("--resource-id", help="control-plane: only this resource.")]
CpChangesOpt = Annotated[bool, typer.Option("--changes", help="control-plane: only changes.")]


def _export_params(trail: Trail, decision_filters: dict[str, Any], control_plane: dict[str, Any]) -> dict[str, Any]:
    """The export's filter parameters: the trail's own; a filter of the other trail is a usage error."""
    if trail is Trail.decisions:
        if control_plane:
            raise CliError(f"--{next(iter(control_plane)).replace('_', '-')} is a control-plane filter", ExitCode.USAGE)
        return decision_filters
    allowed = {"action", "allowed", "status", "since", "until"}
    stray = set(decision_filters) - allowed
    if stray:
        raise CliError(f"--{sorted(stray)[0].replace('_', '-')} is a decisions filter", ExitCode.USAGE)
    return {**decision_filters, **control_plane}


@audit_app.command("export")
@handle_errors
def audit_export(
    ctx: typer.Context,
    fmt: Annotated[ExportFormat, typer.Option("--format", "-f", help="ndjson (default) or csv.")] = ExportFormat.ndjson,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", dir_okay=False, help="Write here (default: stdout).")
    ] = None,
    trail: TrailOpt = Trail.decisions,
    order: Annotated[Order, typer.Option(help="asc (oldest first, default) or desc.")] = Order.asc,
    subject: SubjectOpt = None,
    server: ServerOpt = None,
    tool: ToolOpt = None,
    action: ActionOpt = None,
    allowed: AllowedOpt = None,
    client_id: ClientOpt = None,
    outcome: OutcomeOpt = None,
    status: StatusOpt = None,
    error_category: CategoryOpt = None,
    policy_revision: RevisionOpt = None,
    projection_version: ProjectionOpt = None,
    protocol_version: ProtocolOpt = None,
    dataplane_id: DataPlaneOpt = None,
    min_latency_ms: LatencyOpt = None,
    reason: ReasonOpt = None,
    search: SearchOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    actor: CpActorOpt = None,
    resource_kind: CpKindOpt = None,
    resource_id: CpIdOpt = None,
    changes: CpChangesOpt = False,
) -> None:
    """Stream a trail to a file or stdout (GET /v1/audit/export), as it arrives: any size.

    The filters are those of `audit query` (decisions) or of `audit control-plane`
    (with --trail control-plane: --actor, --action, --allowed/--denied, --status, --resource-kind,
    --resource-id, --changes, --since, --until).
    """
    settings = settings_of(ctx)
    url, token = settings.require()
    params = _export_params(
        trail,
        trail_filters(
            subject=subject,
            server=server,
            tool=tool,
            action=action,
            allowed=allowed,
            client_id=client_id,
            outcome=outcome,
            status=status,
            error_category=error_category,
            policy_revision=policy_revision,
            projection_version=projection_version,
            protocol_version=protocol_version,
            dataplane_id=dataplane_id,
            min_latency_ms=min_latency_ms,
            reason=reason,
            search=search,
            since=since,
            until=until,
        ),
        drop_none(
            actor=actor, resource_kind=resource_kind, resource_id=resource_id, changes="true" if changes else None
        ),
    )
    params.update(format=fmt.value, trail=trail.value, order=order.value)
    chunks = forward.export_chunks(url, token, params, timeout=settings.timeout)
    if out is None:
        forward.copy_export(chunks, sys.stdout.buffer)
        return
    partial = out.with_name(out.name + ".partial")
    try:
        with partial.open("wb") as f:
            written = forward.copy_export(chunks, f)
        partial.replace(out)
    except OSError as e:
        raise CliError(f"cannot write {out}: {e.strerror}", ExitCode.USAGE) from None
    finally:
        partial.unlink(missing_ok=True)
    note(f"wrote {written} bytes to {out}")


@audit_app.command("forward")
@handle_errors
def audit_forward(
    ctx: typer.Context,
    syslog: Annotated[str, typer.Option("--syslog", help="udp://host[:514] or tcp://host[:514] (RFC 5424).")],
    trail: TrailOpt = Trail.decisions,
    since: SinceOpt = None,
    follow: Annotated[bool, typer.Option("--follow", help="Keep polling for new events.")] = False,
    interval: Annotated[float, typer.Option(min=0.05, help="--follow: seconds between polls.")] = 5.0,
    lag: Annotated[
        float, typer.Option(min=0, help="--follow: re-read this many seconds back (late arrivals; no duplicates).")
    ] = 60.0,
    count: Annotated[int, typer.Option(min=0, help="Stop after this many events (0: no limit).")] = 0,
    hostname: Annotated[
        str | None, typer.Option(help="HOSTNAME field of the messages (default: this host's name).")
    ] = None,
    subject: SubjectOpt = None,
    server: ServerOpt = None,
    tool: ToolOpt = None,
    allowed: AllowedOpt = None,
    outcome: OutcomeOpt = None,
) -> None:
    """Forward a trail to a SIEM as RFC 5424 syslog: one message per event, oldest first.

    Each message carries the event's JSON (metadata and hashes, never raw arguments) with
    facility 13 (log audit) and a severity from the outcome; see docs/audit.md.
    """
    settings = settings_of(ctx)
    url, token = settings.require()
    base = drop_none(subject=subject, server=server, tool=tool, allowed=_bool_text(allowed), outcome=outcome)
    if trail is Trail.control_plane:
        base = _export_params(trail, drop_none(allowed=_bool_text(allowed)), {})
        if subject or server or tool or outcome:
            raise CliError("--subject, --server, --tool and --outcome filter the decisions trail", ExitCode.USAGE)
    base.update(format="ndjson", trail=trail.value, order="asc")
    sender = forward.SyslogSender(syslog)
    host = hostname or socket.gethostname()

    def fetch(cursor: str | None) -> Iterator[bytes]:
        return forward.lines_of(
            forward.export_chunks(url, token, {**base, **drop_none(since=cursor)}, timeout=settings.timeout)
        )

    def deliver(event: dict[str, Any]) -> None:
        sender.send(forward.syslog_message(event, trail=trail.value, hostname=host))

    try:
        sent = forward.follow(
            fetch,
            deliver,
            since=since,
            key="decision_id" if trail is Trail.decisions else "id",
            keep_following=follow,
            interval=interval,
            lag=lag,
            count=count,
        )
    except KeyboardInterrupt:  # pragma: no cover - interactive stop of --follow
        return
    finally:
        sender.close()
    note(f"forwarded {sent} events to {syslog}")


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_ttl(text: str) -> int:
    """``30d``, ``12h``, ``90m``, ``45s`` or plain seconds -> seconds.

    Raises:
        CliError: (usage) anything else, or not positive.
    """
    raw = text.strip().lower()
    unit = raw[-1:] if raw[-1:] in _UNITS else "s"
    number = raw[:-1] if raw[-1:] in _UNITS else raw
    if not number.isdigit() or not number.isascii() or int(number) <= 0:
        raise CliError(f"--ttl {text!r}: expected a positive number with an optional unit s, m, h or d", ExitCode.USAGE)
    return int(number) * _UNITS[unit]


@keys_app.command("create")
@handle_errors
def keys_create(
    ctx: typer.Context,
    subject: Annotated[str, typer.Option(help="The machine agent's subject, as policies see it.")],
    role: Annotated[list[str] | None, typer.Option("--role", help="A role (repeat).")] = None,
    ttl: Annotated[
        str | None, typer.Option(help="Lifetime: 30d, 12h, 90m, 3600 (seconds); the server's default when neither.")
    ] = None,
    expires_at: Annotated[str | None, typer.Option(help="RFC 3339 expiry (instead of --ttl).")] = None,
    description: Annotated[str | None, typer.Option(help="Free text.")] = None,
    output: RecordOutputOpt = Output.table,
) -> None:
    """Create an API key (POST /v1/api-keys); the key is shown once, here."""
    if ttl is not None and expires_at is not None:
        raise CliError("give --ttl or --expires-at, not both", ExitCode.USAGE)
    seconds = parse_ttl(ttl) if ttl is not None else None
    body = drop_none(
        subject=subject, roles=list(role) if role else None, ttl=seconds, expires_at=expires_at, description=description
    )
    record = admin_client(ctx).post("/v1/api-keys", body)
    if output is Output.table:
        key = record.get("key")
        rest = {k: v for k, v in record.items() if k != "key"}
        render_record(
            rest, Output.table, [c for c in KEY_COLUMNS if c in rest] + [c for c in rest if c not in KEY_COLUMNS]
        )
        if key:
            say(f"key: {key}")
            note("store the key now: it is not shown again")
    else:
        render_record(record, output)


@keys_app.command("list")
@handle_errors
def keys_list(ctx: typer.Context, output: OutputOpt = Output.table) -> None:
    """List API keys (GET /v1/api-keys; never the keys themselves)."""
    answer = admin_client(ctx).get("/v1/api-keys")
    items = answer["items"] if isinstance(answer, dict) else answer
    render_list(items, output, KEY_COLUMNS)


@keys_app.command("revoke")
@handle_errors
def keys_revoke(
    ctx: typer.Context,
    key_id: Annotated[str, typer.Argument(metavar="ID", help="The key's id (from `keys list`).")],
    output: RecordOutputOpt = Output.table,
) -> None:
    """Revoke an API key (DELETE /v1/api-keys/ID); calls with it fail from then on."""
    record = admin_client(ctx).delete(f"/v1/api-keys/{seg(key_id)}")
    if output is Output.table:
        pv = record.get("projection_version") if isinstance(record, dict) else None
        note(f"revoked {key_id}" + (f"; data planes refuse it from projection {pv} on" if pv is not None else ""))
        if isinstance(record, dict):
            render_record(record, Output.table, [c for c in KEY_COLUMNS if c in record] + ["projection_version"])
    elif record is not None:
        render_record(record, output)
    else:
        render_record({"id": key_id, "revoked": True}, output)
