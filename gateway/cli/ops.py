"""``gatewayctl projection status``, ``audit query`` and ``keys create|list|revoke``."""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer

from gateway.cli.common import OutputOpt, RecordOutputOpt, admin_client, drop_none, handle_errors, note, seg
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


def _bool_text(value: bool | None) -> str | None:
    return None if value is None else ("true" if value else "false")


@audit_app.command("query")
@handle_errors
def audit_query(
    ctx: typer.Context,
    subject: Annotated[str | None, typer.Option(help="Only this subject.")] = None,
    server: Annotated[str | None, typer.Option(help="Only this server.")] = None,
    tool: Annotated[str | None, typer.Option(help="Only this tool.")] = None,
    action: Annotated[str | None, typer.Option(help="Only this action (e.g. tools/call).")] = None,
    allowed: Annotated[
        bool | None, typer.Option("--allowed/--denied", help="Only allowed (or only denied) decisions.")
    ] = None,
    since: Annotated[str | None, typer.Option(help="RFC 3339, inclusive.")] = None,
    until: Annotated[str | None, typer.Option(help="RFC 3339, exclusive.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=500, help="Decisions per page (1-500).")] = 50,
    cursor: Annotated[str | None, typer.Option(help="Page cursor printed by the previous page.")] = None,
    all_pages: Annotated[bool, typer.Option("--all", help="Follow the cursor to the last page.")] = False,
    output: OutputOpt = Output.table,
) -> None:
    """Query recorded decisions, newest first (GET /v1/audit/decisions).

    The next page's cursor is printed on stderr (stdout stays pure data).
    """
    client = admin_client(ctx)
    params = drop_none(
        subject=subject,
        server=server,
        tool=tool,
        action=action,
        allowed=_bool_text(allowed),
        since=since,
        until=until,
        limit=limit,
        cursor=cursor,
    )
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
