"""``GATEWAY_LOG_FORMAT=json``: one JSON object per log record, one record per line.

Fields: ``ts`` (RFC 3339, UTC, milliseconds), ``level``, ``logger``, ``msg``; ``exc`` when
the record carries an exception (its rendered traceback); and, on an access line
(:mod:`gateway.observability.asgi`), that line's fields at the top level. Every handler
keeps its :class:`~gateway.logredact.RedactingFilter`, which runs before the formatter: the
message and exception text are already redacted; the access fields are bounded by
construction (route templates, bounded labels, ids the gateway made) and are passed
through :func:`~gateway.logredact.redact` once more anyway.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import orjson

from gateway.logredact import redact

__all__ = ["LOG_FORMATS", "JsonFormatter", "use_json"]

LOG_FORMATS = ("text", "json")
"""Values of ``GATEWAY_LOG_FORMAT``."""


class JsonFormatter(logging.Formatter):
    """Render a record as one line of JSON (see the module doc for the fields)."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as a JSON object without newlines (``orjson`` escapes them in strings)."""
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out["exc"] = record.exc_text
        if record.stack_info:
            out["stack"] = record.stack_info
        access = getattr(record, "access", None)
        if isinstance(access, dict):
            for key, value in access.items():
                if key not in out:
                    out[key] = redact(value) if isinstance(value, str) else value
        return orjson.dumps(out, default=str).decode()


def use_json(logger: logging.Logger | None = None) -> None:
    """Give every handler of ``logger`` (default: the root logger) a :class:`JsonFormatter`."""
    for handler in (logger or logging.getLogger()).handlers:
        handler.setFormatter(JsonFormatter())
