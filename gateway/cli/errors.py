"""``gatewayctl``'s exit codes and the one error type its commands raise."""

from __future__ import annotations

from enum import IntEnum

__all__ = ["CliError", "ExitCode"]


class ExitCode(IntEnum):
    """Process exit codes of ``gatewayctl`` (documented in the README)."""

    OK = 0
    API = 1
    """The control plane answered 4xx or 5xx (the message is its ``error: message``)."""
    USAGE = 2
    """Bad flags or arguments, no URL/token configured, an unreadable file or directory."""
    CONNECTION = 3
    """The control plane could not be reached: refused, DNS, TLS, or the request timed out."""
    TIMEOUT = 4
    """A ``--wait`` (projection status, policy replay) ran out of time."""
    CHECKS_FAILED = 5
    """``policies test``: a test failed or errored, or coverage is below ``--min-coverage``."""
    TAMPERED = 6
    """``audit verify``: a broken link, or the checkpoint is not signed by the pinned key."""


class CliError(Exception):
    """A failure reported as one line ``error: <message>`` on stderr, exiting with ``code``.

    The message never contains the admin token.
    """

    def __init__(self, message: str, code: ExitCode = ExitCode.API, details: list[str] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.details = details or []
        """Extra lines printed after the message (for example ``file:line: message`` of a rejected policy)."""
