"""Rendering of ``gatewayctl`` answers: rich tables for people, JSON / NDJSON / CSV for programs.

Formats (``--output``):

* ``table``: a rich table of the chosen columns (lists joined with ``, ``, objects as compact JSON);
* ``json``: the items as one indented JSON array (a single record as one JSON object);
* ``ndjson``: one compact JSON object per line;
* ``csv``: RFC 4180 with a header row of every field seen (in first-seen order); lists and
  objects are cells of compact JSON, null is an empty cell.

Data goes to stdout; notes (next page cursor, warnings) go to stderr.
"""

from __future__ import annotations

import csv
import enum
import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

__all__ = ["Output", "cell", "console", "err_console", "print_json", "render_list", "render_record", "say", "warn"]


def console() -> Console:
    """A rich console on stdout (data), made per use so ``COLUMNS`` and redirections apply."""
    return Console()


def err_console() -> Console:
    """A rich console on stderr (notes, progress, errors)."""
    return Console(stderr=True)


def warn(text: str) -> None:
    """One plain line on stderr (never wrapped: an error stays one line)."""
    sys.stderr.write(text + "\n")


def say(text: str) -> None:
    """One plain line on stdout (no markup, no colour)."""
    sys.stdout.write(text + "\n")


class Output(enum.StrEnum):
    """The ``--output`` formats."""

    table = "table"
    json = "json"
    ndjson = "ndjson"
    csv = "csv"


def cell(value: Any) -> str:
    """One value as text for a table or CSV cell: '' for null, JSON for objects, ``, ``-joined lists of scalars."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list) and all(isinstance(v, str | int | float) and not isinstance(v, bool) for v in value):
        return ", ".join(str(v) for v in value)
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, sort_keys=True)
    return str(value)


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, sort_keys=True)
    return str(value)


def print_json(value: Any) -> None:
    """Indented JSON on stdout (plain text: no colour codes, safe to pipe)."""
    sys.stdout.write(json.dumps(value, indent=2, ensure_ascii=False) + "\n")


def _fields(items: Sequence[Mapping[str, Any]]) -> list[str]:
    seen: dict[str, None] = {}
    for item in items:
        for key in item:
            seen.setdefault(key, None)
    return list(seen)


def render_list(
    items: Sequence[Mapping[str, Any]], fmt: Output, columns: Sequence[str], *, title: str | None = None
) -> None:
    """Print ``items`` in ``fmt``; ``columns`` are the table's (json/ndjson/csv carry every field).

    A table column missing from every item is left out; an empty list prints an empty JSON
    array, nothing for ndjson, the header only for csv, and ``(none)`` on stderr for a table.
    """
    if fmt is Output.json:
        print_json(list(items))
    elif fmt is Output.ndjson:
        for item in items:
            sys.stdout.write(json.dumps(item, separators=(",", ":"), ensure_ascii=False) + "\n")
    elif fmt is Output.csv:
        fields = _fields(items) or list(columns)
        writer = csv.writer(sys.stdout, lineterminator="\r\n")
        writer.writerow(fields)
        for item in items:
            writer.writerow([_csv_cell(item.get(f)) for f in fields])
    else:
        if not items:
            warn(f"({title}: none)" if title else "(none)")
            return
        present = [c for c in columns if any(c in item for item in items)]
        table = Table(title=title, show_lines=False)
        for c in present:
            table.add_column(c, overflow="fold")
        for item in items:
            table.add_row(*(Text(cell(item.get(c))) for c in present))
        console().print(table)


def render_record(record: Mapping[str, Any], fmt: Output, fields: Iterable[str] | None = None) -> None:
    """Print one record: a two-column field/value table (``fields`` only, when given) or JSON.

    ``ndjson`` prints it as one compact line, ``csv`` as a header and one row.
    """
    if fmt is Output.table:
        table = Table(show_header=False, box=None, pad_edge=False)
        table.add_column("field", style="bold")
        table.add_column("value", overflow="fold")
        for key in fields if fields is not None else record:
            if key in record:
                table.add_row(Text(key), Text(cell(record[key])))
        console().print(table)
    elif fmt is Output.json:
        print_json(record)
    else:
        render_list([record], fmt, list(record))
