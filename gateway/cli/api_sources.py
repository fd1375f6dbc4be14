"""``gatewayctl api-sources list|show|register|approve``: REST APIs described by OpenAPI (``/v1/api-sources``).

``register --file`` uploads the document's text (JSON or YAML) as it is on disk; the control
plane parses and checks it (the CLI never interprets it), so what is reviewed is what was sent.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from gateway.cli.common import OutputOpt, RecordOutputOpt, admin_client, diff_summary, handle_errors, note, seg
from gateway.cli.errors import CliError, ExitCode
from gateway.cli.output import Output, render_list, render_record

__all__ = ["app"]

app = typer.Typer(
    help="API sources (REST APIs described by OpenAPI, served as MCP tools): list, show, register, approve.",
    no_args_is_help=True,
)

MAX_FILE_BYTES = 4 * 1024 * 1024
"""Largest document file read (the control plane's own limit)."""
LIST_COLUMNS = ("name", "status", "base_url", "openapi_version", "internal", "tools", "approved_at")
SHOW_FIELDS = (
    "name",
    "status",
    "base_url",
    "openapi_version",
    "document_sha256",
    "internal",
    "description",
    "requires_credential",
    "selection",
    "options",
    "created_at",
    "approved_at",
    "registered_by",
    "approved_by",
    "approval_comment",
    "projection_version",
)


def _operation_rows(record: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per tool: its name, the HTTP operation it is bound to, its read-only/destructive hints."""
    ops = {op.get("tool"): op for op in record.get("operations") or [] if isinstance(op, dict)}
    rows = []
    for tool in record.get("tools") or []:
        if not isinstance(tool, dict):
            continue
        op = ops.get(tool.get("name"), {})
        hints = tool.get("annotations") or {}
        flags = [k.removesuffix("Hint") for k in ("readOnlyHint", "destructiveHint") if hints.get(k) is True]
        rows.append(
            {
                "tool": tool.get("name"),
                "operation": f"{op.get('method', '?')} {op.get('path', '?')}",
                "hints": ",".join(flags),
                "description": (tool.get("description") or "").split("\n", 1)[0],
            }
        )
    return rows


def _show(record: dict[str, Any], output: Output) -> None:
    render_record(record, output, SHOW_FIELDS)
    if output is Output.table:
        title = "pinned tools" if record.get("status") == "approved" else "tools approval would pin"
        render_list(_operation_rows(record), Output.table, ("tool", "operation", "hints", "description"), title=title)


def _read_json_option(value: str | None, option: str) -> Any:
    """A JSON option given inline or as ``@file``."""
    if value is None:
        return None
    text = value
    if value.startswith("@"):
        try:
            text = Path(value[1:]).read_text(encoding="utf-8")
        except OSError as exc:
            raise CliError(f"{option}: cannot read {value[1:]}: {exc.strerror}", ExitCode.USAGE) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CliError(f"{option}: not JSON ({exc.msg} at line {exc.lineno})", ExitCode.USAGE) from None


def _filter(operation_ids: list[str] | None, tags: list[str] | None, paths: list[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, values in (("operation_ids", operation_ids), ("tags", tags), ("paths", paths)):
        if values:
            out[key] = list(values)
    return out


@app.command("list")
@handle_errors
def list_sources(ctx: typer.Context, output: OutputOpt = Output.table) -> None:
    """List the registered API sources (GET /v1/api-sources)."""
    items = admin_client(ctx).get("/v1/api-sources")["items"]
    if output is Output.table:
        items = [{**i, "tools": len(i.get("tools") or [])} for i in items]
    render_list(items, output, LIST_COLUMNS)


@app.command("show")
@handle_errors
def show(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="API source name.")],
    output: RecordOutputOpt = Output.table,
) -> None:
    """Show one API source with its tools and the operations they call (GET /v1/api-sources/NAME)."""
    _show(admin_client(ctx).get(f"/v1/api-sources/{seg(name)}"), output)


@app.command("register")
@handle_errors
def register(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="API source name: [a-z0-9_-], 1-63, alphanumeric at both ends.")],
    file: Annotated[Path, typer.Option("--file", "-f", help="The OpenAPI 3.0/3.1 document (JSON or YAML).")],
    base_url: Annotated[str, typer.Option(help="Absolute http(s) URL every request starts with.")],
    include_operation: Annotated[
        list[str] | None, typer.Option("--include-operation", help="Select this operationId (repeat).")
    ] = None,
    include_tag: Annotated[list[str] | None, typer.Option("--include-tag", help="Select this tag (repeat).")] = None,
    include_path: Annotated[
        list[str] | None, typer.Option("--include-path", help="Select paths matching this glob (repeat).")
    ] = None,
    exclude_operation: Annotated[
        list[str] | None, typer.Option("--exclude-operation", help="Leave out this operationId (repeat).")
    ] = None,
    exclude_tag: Annotated[list[str] | None, typer.Option("--exclude-tag", help="Leave out this tag (repeat).")] = None,
    exclude_path: Annotated[
        list[str] | None, typer.Option("--exclude-path", help="Leave out paths matching this glob (repeat).")
    ] = None,
    overrides: Annotated[
        str | None, typer.Option(help='Tool overrides as JSON or @file: {"<operationId>": {"name", "annotations"}}.')
    ] = None,
    follow_redirects: Annotated[
        bool, typer.Option("--follow-redirects", help="Follow same-origin redirects (at most 5).")
    ] = False,
    timeout: Annotated[float | None, typer.Option(help="Seconds one call may take.")] = None,
    max_response_bytes: Annotated[int | None, typer.Option(help="Largest response body read.")] = None,
    description: Annotated[str | None, typer.Option(help="Free text shown to reviewers.")] = None,
    requires_credential: Annotated[
        bool, typer.Option("--requires-credential", help="Every call needs a credential binding.")
    ] = False,
    output: RecordOutputOpt = Output.table,
) -> None:
    """Register an API source; it stays pending_approval until approved (POST /v1/api-sources)."""
    try:
        with file.open("rb") as fh:
            raw = fh.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise CliError(f"--file: cannot read {file}: {exc.strerror}", ExitCode.USAGE) from None
    if len(raw) > MAX_FILE_BYTES:
        raise CliError(f"--file: {file} is larger than {MAX_FILE_BYTES} bytes", ExitCode.USAGE)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise CliError(f"--file: {file} is not UTF-8", ExitCode.USAGE) from None
    body: dict[str, Any] = {"name": name, "base_url": base_url, "document": text}
    selection: dict[str, Any] = {}
    if include := _filter(include_operation, include_tag, include_path):
        selection["include"] = include
    if exclude := _filter(exclude_operation, exclude_tag, exclude_path):
        selection["exclude"] = exclude
    if selection:
        body["selection"] = selection
    if (parsed := _read_json_option(overrides, "--overrides")) is not None:
        body["overrides"] = parsed
    options: dict[str, Any] = {}
    if follow_redirects:
        options["follow_redirects"] = True
    if timeout is not None:
        options["timeout"] = timeout
    if max_response_bytes is not None:
        options["max_response_bytes"] = max_response_bytes
    if options:
        body["options"] = options
    if description is not None:
        body["description"] = description
    if requires_credential:
        body["requires_credential"] = True
    record = admin_client(ctx).post("/v1/api-sources", body)
    if output is Output.table:
        note(
            f"registered {record['name']} ({record['status']}, {len(record.get('tools') or [])} tools); "
            f"approve it with `gatewayctl api-sources approve {name} -m ...`"
        )
    _show(record, output)


@app.command("approve")
@handle_errors
def approve(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="API source name.")],
    comment: Annotated[str, typer.Option("--comment", "-m", help="Why (required; recorded with the approval).")],
    internal: Annotated[
        bool,
        typer.Option(
            "--internal", help="The API is internal: loopback, link-local and private addresses may be reached."
        ),
    ] = False,
    output: RecordOutputOpt = Output.table,
) -> None:
    """Pin the source's tools and operations, approve it, compile a projection (POST /v1/api-sources/NAME/approve)."""
    if not comment.strip():
        raise CliError("--comment must not be empty", ExitCode.USAGE)
    body: dict[str, Any] = {"comment": comment}
    if internal:
        body["internal"] = True
    record = admin_client(ctx).post(f"/v1/api-sources/{seg(name)}/approve", body)
    if output is Output.table:
        marked = " (internal)" if record.get("internal") else ""
        note(f"approved {record['name']}{marked}: projection {record.get('projection_version')}{diff_summary(record)}")
    _show(record, output)
