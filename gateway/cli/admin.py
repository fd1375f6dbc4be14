"""``gatewayctl admin whoami``, ``admin roles list|grant|revoke`` and ``audit control-plane``
(docs/admin-identity.md)."""

from __future__ import annotations

from typing import Annotated

import typer

from gateway.cli.common import OutputOpt, RecordOutputOpt, admin_client, drop_none, handle_errors, seg
from gateway.cli.output import Output, render_list, render_record

__all__ = ["admin_app", "control_plane_audit"]

admin_app = typer.Typer(help="Admin identity: who am I, role grants.", no_args_is_help=True)
roles_app = typer.Typer(help="Roles granted by the control plane (besides a JWT's roles claim).", no_args_is_help=True)
admin_app.add_typer(roles_app, name="roles")

GRANT_COLUMNS = ("id", "issuer", "subject", "role", "granted_by", "granted_at", "comment")
TRAIL_COLUMNS = (
    "timestamp",
    "actor",
    "action",
    "status",
    "allowed",
    "decision_id",
    "resource_kind",
    "resource_id",
    "comment",
)


@admin_app.command("whoami")
@handle_errors
def whoami(ctx: typer.Context, output: RecordOutputOpt = Output.table) -> None:
    """The caller as the control plane sees it (GET /v1/admin/whoami)."""
    render_record(admin_client(ctx).get("/v1/admin/whoami"), output)


@roles_app.command("list")
@handle_errors
def roles_list(ctx: typer.Context, output: OutputOpt = Output.table) -> None:
    """Every role grant (GET /v1/admin/roles)."""
    render_list(admin_client(ctx).get("/v1/admin/roles")["items"], output, GRANT_COLUMNS)


@roles_app.command("grant")
@handle_errors
def roles_grant(
    ctx: typer.Context,
    subject: Annotated[str, typer.Argument(help="The admin JWT's sub.")],
    role: Annotated[str, typer.Argument(help="admin, policy_author, approver, registry_editor, auditor or operator.")],
    comment: Annotated[str, typer.Option("--comment", "-m", help="Why (required, recorded in the trail).")],
    issuer: Annotated[str | None, typer.Option(help="The subject's issuer (default: the admin issuer).")] = None,
    output: RecordOutputOpt = Output.table,
) -> None:
    """Grant a role (POST /v1/admin/roles)."""
    body = drop_none(subject=subject, role=role, comment=comment, issuer=issuer)
    render_record(admin_client(ctx).post("/v1/admin/roles", body), output, GRANT_COLUMNS)


@roles_app.command("revoke")
@handle_errors
def roles_revoke(
    ctx: typer.Context,
    grant_id: Annotated[str, typer.Argument(metavar="ID", help="The grant's id (from `admin roles list`).")],
    output: RecordOutputOpt = Output.table,
) -> None:
    """Revoke a role grant (DELETE /v1/admin/roles/ID)."""
    render_record(admin_client(ctx).delete(f"/v1/admin/roles/{seg(grant_id)}"), output, GRANT_COLUMNS)


@handle_errors
def control_plane_audit(
    ctx: typer.Context,
    actor: Annotated[str | None, typer.Option(help="Only this actor.")] = None,
    action: Annotated[str | None, typer.Option(help="Only this action, e.g. policies.approve.")] = None,
    changes: Annotated[bool, typer.Option("--changes", help="Only changes (rows naming a resource).")] = False,
    since: Annotated[str | None, typer.Option(help="RFC 3339, inclusive.")] = None,
    until: Annotated[str | None, typer.Option(help="RFC 3339, exclusive.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="At most this many rows.")] = 100,
    output: OutputOpt = Output.table,
) -> None:
    """The control-plane trail: every admin request with its decision id (GET /v1/audit/control-plane)."""
    params = drop_none(
        actor=actor, action=action, changes="true" if changes else None, since=since, until=until, limit=str(limit)
    )
    answer = admin_client(ctx).get("/v1/audit/control-plane", **params)
    render_list(answer["items"], output, TRAIL_COLUMNS)
