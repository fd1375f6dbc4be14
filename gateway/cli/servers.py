"""``gatewayctl servers list|show|register|approve``: the MCP server registry (``/v1/servers``)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from gateway.cli.common import OutputOpt, RecordOutputOpt, admin_client, diff_summary, handle_errors, note, seg
from gateway.cli.errors import CliError, ExitCode
from gateway.cli.output import Output, render_list, render_record

__all__ = ["app"]

app = typer.Typer(help="The MCP server registry: list, show, register, approve.", no_args_is_help=True)

LIST_COLUMNS = ("name", "transport", "status", "url", "command", "description", "requires_credential", "approved_at")
SHOW_FIELDS = (
    "name",
    "transport",
    "status",
    "url",
    "command",
    "args",
    "cwd",
    "env_keys",
    "description",
    "requires_credential",
    "created_at",
    "approved_at",
    "trusted_at",
    "created_by",
    "approved_by",
    "approval_comment",
    "projection_version",
)


def _tool_rows(record: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for tool in record.get("tools") or []:
        if isinstance(tool, dict):
            inner = tool.get("definition")
            definition: dict[str, Any] = inner if isinstance(inner, dict) else tool
            rows.append({"tool": definition.get("name"), "description": definition.get("description")})
    return rows


def _show(record: dict[str, Any], output: Output) -> None:
    render_record(record, output, SHOW_FIELDS)
    if output is Output.table:
        render_list(_tool_rows(record), Output.table, ("tool", "description"), title="pinned tools")


@app.command("list")
@handle_errors
def list_servers(ctx: typer.Context, output: OutputOpt = Output.table) -> None:
    """List the registered servers (GET /v1/servers)."""
    items = admin_client(ctx).get("/v1/servers")["items"]
    render_list(items, output, LIST_COLUMNS)


@app.command("show")
@handle_errors
def show(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Server name.")],
    output: RecordOutputOpt = Output.table,
) -> None:
    """Show one server with its pinned tools (GET /v1/servers/NAME)."""
    _show(admin_client(ctx).get(f"/v1/servers/{seg(name)}"), output)


@app.command("register")
@handle_errors
def register(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Server name: [a-z0-9_-], 1-63, alphanumeric at both ends.")],
    url: Annotated[str | None, typer.Option(help="The upstream's MCP URL (streamable_http, legacy_sse).")] = None,
    transport: Annotated[
        str | None,
        typer.Option(help="streamable_http (default with --url), legacy_sse, or stdio (default with --command)."),
    ] = None,
    command: Annotated[str | None, typer.Option(help="stdio: the command every data plane runs.")] = None,
    arg: Annotated[list[str] | None, typer.Option("--arg", help="stdio: one argument (repeat).")] = None,
    cwd: Annotated[str | None, typer.Option(help="stdio: absolute working directory.")] = None,
    env: Annotated[list[str] | None, typer.Option("--env", help="stdio: KEY=VALUE (repeat).")] = None,
    description: Annotated[str | None, typer.Option(help="Free text shown to reviewers.")] = None,
    requires_credential: Annotated[
        bool, typer.Option("--requires-credential", help="Every call needs a credential binding.")
    ] = False,
    output: RecordOutputOpt = Output.table,
) -> None:
    """Register a server; it stays pending_approval until approved (POST /v1/servers)."""
    if (url is None) == (command is None):
        raise CliError("give exactly one of --url (HTTP transports) or --command (stdio)", ExitCode.USAGE)
    body: dict[str, Any] = {"name": name, "transport": transport or ("stdio" if command else "streamable_http")}
    if url is not None:
        body["url"] = url
    else:
        body["command"] = command
        body["args"] = list(arg or [])
        if cwd is not None:
            body["cwd"] = cwd
        pairs: dict[str, str] = {}
        for item in env or []:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise CliError(f"--env {item!r}: expected KEY=VALUE", ExitCode.USAGE)
            pairs[key] = value
        body["env"] = pairs
    if description is not None:
        body["description"] = description
    if requires_credential:
        body["requires_credential"] = True
    record = admin_client(ctx).post("/v1/servers", body)
    if output is Output.table:
        note(
            f"registered {record['name']} ({record['status']}); approve it with `gatewayctl servers approve {name} -m ...`"
        )
    _show(record, output)


@app.command("approve")
@handle_errors
def approve(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Server name.")],
    comment: Annotated[str, typer.Option("--comment", "-m", help="Why (required; recorded with the approval).")],
    trust_stdio: Annotated[
        bool, typer.Option("--trust-stdio", help="stdio: confirm the command is trusted and self-hosted.")
    ] = False,
    discovery_credential: Annotated[str | None, typer.Option(help="Credential id to discover the tools with.")] = None,
    output: RecordOutputOpt = Output.table,
) -> None:
    """Discover and pin the server's tools, approve it, compile a projection (POST /v1/servers/NAME/approve)."""
    if not comment.strip():
        raise CliError("--comment must not be empty", ExitCode.USAGE)
    body: dict[str, Any] = {"comment": comment}
    if trust_stdio:
        body["trust_stdio"] = True
    if discovery_credential is not None:
        body["discovery_credential"] = discovery_credential
    record = admin_client(ctx).post(f"/v1/servers/{seg(name)}/approve", body)
    if output is Output.table:
        note(f"approved {record['name']}: projection {record.get('projection_version')}{diff_summary(record)}")
    _show(record, output)
