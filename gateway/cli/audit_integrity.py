"""``gatewayctl audit verify`` and ``audit checkpoint`` (docs/audit-integrity.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway.cli.common import RecordOutputOpt, admin_client, drop_none, handle_errors, note
from gateway.cli.errors import CliError, ExitCode
from gateway.cli.output import Output, print_json, render_record, say

__all__ = ["checkpoint", "verify"]

CHECKPOINT_COLUMNS = ("id", "created_at", "key_id", "signature")


def _pinned(path: Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise CliError(f"cannot read the public key {path}: {exc}", ExitCode.USAGE) from None
    if not isinstance(key, Ed25519PublicKey):
        raise CliError(f"{path} is not an Ed25519 public key", ExitCode.USAGE)
    return key


def _check_signature(ctx: typer.Context, key: Ed25519PublicKey) -> str:
    """Verify the newest checkpoint's signature here, with the pinned key; return a note."""
    items = admin_client(ctx).get("/v1/audit/checkpoints", limit="1")["items"]
    if not items:
        raise CliError("no checkpoint to check against the pinned key yet", ExitCode.TAMPERED)
    newest = items[0]
    try:
        key.verify(bytes.fromhex(newest["signature"]), newest["body"].encode())
    except (InvalidSignature, ValueError):
        raise CliError(
            f"checkpoint {newest['id']} is not signed by the pinned key (key id {newest['key_id']})",
            ExitCode.TAMPERED,
        ) from None
    return f"checkpoint {newest['id']} ({newest['created_at']}) verified here with the pinned key"


@handle_errors
def verify(
    ctx: typer.Context,
    since: Annotated[str | None, typer.Option(help="RFC 3339: partitions ending after this.")] = None,
    until: Annotated[str | None, typer.Option(help="RFC 3339: partitions starting before this.")] = None,
    public_key: Annotated[
        Path | None,
        typer.Option(
            "--public-key",
            help="Ed25519 public key (PEM) the newest checkpoint must be signed with; checked here, offline.",
            dir_okay=False,
        ),
    ] = None,
    output: RecordOutputOpt = Output.table,
) -> None:
    """Verify the audit hash chains and signed checkpoints (GET /v1/audit/verify).

    Prints "intact, N records" or the first broken link; exits 6 when broken.
    """
    pinned = _pinned(public_key) if public_key is not None else None
    report = admin_client(ctx).get("/v1/audit/verify", **drop_none(since=since, until=until))
    if output is Output.json:
        print_json(report)
    else:
        say(report["message"])
        if report["intact"]:
            cp = report.get("checkpoint")
            note(
                f"{report['partitions']} partition(s), {report['dropped_partitions']} dropped by retention (signed); "
                f"{report['unprotected_records']} record(s) after the newest checkpoint"
                + (f" ({cp['id']}, {cp['created_at']}, key {cp['key_id']})" if cp else " (no checkpoint yet)")
            )
    if not report["intact"]:
        raise CliError("the audit trail is not intact", ExitCode.TAMPERED)
    if pinned is not None:
        note(_check_signature(ctx, pinned))


@handle_errors
def checkpoint(ctx: typer.Context, output: RecordOutputOpt = Output.table) -> None:
    """Sign a checkpoint of the chain heads now (POST /v1/audit/checkpoints)."""
    render_record(admin_client(ctx).post("/v1/audit/checkpoints", {}), output, CHECKPOINT_COLUMNS)
