"""Glue shared by the ``gatewayctl`` command modules: the admin client of the current run,
error reporting (one line on stderr, exit code from :class:`~gateway.cli.errors.ExitCode`),
and the ``--output`` option."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Annotated, Any, ParamSpec, TypeVar
from urllib.parse import quote

import typer

from gateway.cli.client import AdminClient
from gateway.cli.errors import CliError, ExitCode
from gateway.cli.output import Output, warn
from gateway.cli.settings import Settings

__all__ = [
    "diff_summary",
    "OutputOpt",
    "RecordOutputOpt",
    "admin_client",
    "drop_none",
    "fail",
    "handle_errors",
    "note",
    "seg",
    "settings_of",
]

P = ParamSpec("P")
R = TypeVar("R")

OutputOpt = Annotated[
    Output, typer.Option("--output", "-o", help="table (default), json, ndjson or csv.", case_sensitive=False)
]
RecordOutputOpt = Annotated[
    Output, typer.Option("--output", "-o", help="table (default) or json (ndjson, csv: one row).", case_sensitive=False)
]


def settings_of(ctx: typer.Context) -> Settings:
    """The :class:`Settings` the root callback resolved for this run."""
    root = ctx.find_root()
    if not isinstance(root.obj, Settings):  # pragma: no cover - the root callback always sets it
        raise CliError("internal: settings not resolved", ExitCode.USAGE)
    return root.obj


def admin_client(ctx: typer.Context) -> AdminClient:
    """An :class:`AdminClient` for the resolved URL and token (closed when the command ends).

    Raises:
        CliError: (usage) no URL or token configured.
    """
    settings = settings_of(ctx)
    url, token = settings.require()
    client = AdminClient(url, token, timeout=settings.timeout)
    ctx.call_on_close(client.close)
    return client


def note(message: str) -> None:
    """A line for people on stderr (never parsed: stdout carries the data)."""
    warn(message)


def fail(error: CliError) -> typer.Exit:
    """Print ``error: <message>`` (plus detail lines) on stderr; return the Exit to raise."""
    warn(f"error: {error}")
    for line in error.details:
        warn(f"  {line}")
    return typer.Exit(int(error.code))


def handle_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn a :class:`CliError` raised by a command into its one-line report and exit code."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except CliError as e:
            raise fail(e) from None

    return wrapper


def drop_none(**values: Any) -> dict[str, Any]:
    """``values`` without the keys whose value is None."""
    return {k: v for k, v in values.items() if v is not None}


def diff_summary(record: dict[str, Any]) -> str:
    """``"; tools 2 added, 0 removed, 1 changed"`` from an approval answer's ``diff`` (``""`` without one)."""
    diff = record.get("diff") or {}
    parts = [f"{len(diff.get(k) or [])} {k}" for k in ("added", "removed", "changed") if isinstance(diff.get(k), list)]
    return f"; tools {', '.join(parts)}" if parts else ""


def seg(value: str | int) -> str:
    """``value`` as one URL path segment (``/`` and every reserved character percent-encoded)."""
    return quote(str(value), safe="")
