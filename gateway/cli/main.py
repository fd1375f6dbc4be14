"""The ``gatewayctl`` typer app: global options, ``login``, and the command groups.

Exit codes (:class:`~gateway.cli.errors.ExitCode`): 0 ok, 1 the control plane answered
4xx/5xx, 2 usage (bad flags, no URL/token, unreadable input), 3 connection (refused, DNS,
TLS, request timeout), 4 a ``--wait`` timed out, 5 ``policies test`` checks failed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gateway.cli import admin, api_sources, audit_integrity, ops, policies, servers
from gateway.cli.client import AdminClient
from gateway.cli.common import fail, handle_errors, note, settings_of
from gateway.cli.errors import CliError, ExitCode
from gateway.cli.settings import CONFIG_ENV, TOKEN_ENV, URL_ENV, Settings, write_config

__all__ = ["app", "main"]

app = typer.Typer(
    name="gatewayctl",
    help="Command-line client of the MCP OPA gateway's control plane (admin API).",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # a local may hold the admin token
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(servers.app, name="servers")
app.add_typer(api_sources.app, name="api-sources")
app.add_typer(policies.app, name="policies")
app.add_typer(ops.projection_app, name="projection")
app.add_typer(ops.audit_app, name="audit")
app.add_typer(ops.keys_app, name="keys")
app.add_typer(admin.admin_app, name="admin")
ops.audit_app.command("control-plane")(admin.control_plane_audit)
ops.audit_app.command("verify")(audit_integrity.verify)
ops.audit_app.command("checkpoint")(audit_integrity.checkpoint)


@app.callback()
def root(
    ctx: typer.Context,
    url: Annotated[
        str | None, typer.Option("--url", help=f"Control plane base URL (else ${URL_ENV}, else the config file).")
    ] = None,
    token: Annotated[
        str | None,
        typer.Option("--token", help=f"Admin bearer token (else ${TOKEN_ENV}, else the config file). Never printed."),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help=f"Config file (else ${CONFIG_ENV}, else ~/.config/gatewayctl/config.toml).",
            dir_okay=False,
        ),
    ] = None,
    timeout: Annotated[float, typer.Option("--timeout", min=0.1, help="Seconds each HTTP request may take.")] = 30.0,
) -> None:
    """Command-line client of the MCP OPA gateway's control plane (admin API)."""
    try:
        ctx.obj = Settings.resolve(url=url, token=token, config=config, timeout=timeout)
    except CliError as e:
        raise fail(e) from None


@app.command("login")
@handle_errors
def login(
    ctx: typer.Context,
    url: Annotated[str | None, typer.Option("--url", help="Control plane base URL.")] = None,
    token: Annotated[
        str | None, typer.Option("--token", help="Admin bearer token (prompted, hidden, when not given).")
    ] = None,
) -> None:
    """Check a URL and token (GET /v1/control-plane/scope) and save both to the config file (mode 0600)."""
    settings = settings_of(ctx)
    url = (url or settings.url or "").rstrip("/") or None
    token = token or settings.token
    if url is None:
        raise CliError(f"no control plane URL: pass --url or set {URL_ENV}", ExitCode.USAGE)
    if token is None:
        token = typer.prompt("Admin token", hide_input=True)
    with AdminClient(url, token, timeout=settings.timeout) as client:
        scope = client.get("/v1/control-plane/scope")
    write_config(settings.config_path, url, token)
    note(
        f"logged in to {url} (tenant {scope.get('tenant')}, environment {scope.get('environment')}); "
        f"saved to {settings.config_path}"
    )


def main() -> None:
    """Console-script entry point (``gatewayctl``)."""
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
