"""What changes from one policy version to another (pure, no I/O): per-file unified diffs of the
modules and tests, and the ``data`` diff as an RFC 6902 JSON Patch with a readable text form.

Sources: ``difflib.unified_diff`` (the ``diff -u`` format, with git's ``a/`` ``b/`` prefixes and
``/dev/null`` for an added or removed file); RFC 6902 "JavaScript Object Notation (JSON) Patch"
via the ``jsonpatch`` package (``make_patch``), RFC 6901 JSON Pointer paths.
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Mapping
from typing import Any

import jsonpatch
import jsonpointer
import orjson

__all__ = ["MAX_VALUE_TEXT", "data_diff", "diff_versions", "unified_diff"]

MAX_VALUE_TEXT = 200
"""Characters of one JSON value shown in the data diff's text form."""
_NO_NEWLINE = "\\ No newline at end of file\n"


def unified_diff(name: str, old: str | None, new: str | None) -> str:
    """The unified diff of one file, ``---``/``+++`` headers ``a/<name>`` and ``b/<name>``
    (``/dev/null`` for the side where the file does not exist); empty when equal."""
    lines = difflib.unified_diff(
        (old or "").splitlines(keepends=True),
        (new or "").splitlines(keepends=True),
        fromfile=f"a/{name}" if old is not None else "/dev/null",
        tofile=f"b/{name}" if new is not None else "/dev/null",
    )
    out = []
    for line in lines:
        out.append(line if line.endswith("\n") else f"{line}\n{_NO_NEWLINE}")
    return "".join(out)


def diff_versions(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """Compare two policy-version records (with ``modules``, ``tests`` and ``data``).

    Returns:
        ``{"from": a, "to": b,
        "modules": [{"file", "test": bool, "status": "added" | "removed" | "changed", "diff": text}, ...],
        "unchanged": [file, ...],
        "data": {"changed": bool, "patch": [RFC 6902 operation, ...], "text": one line per operation},
        "summary": {"added", "removed", "changed", "unchanged": int, "data_operations": int}}``.
        Files are sorted by name; a ``data`` of null compares as ``{}``. Applying ``data.patch``
        to version a's data gives version b's.
    """
    a_files = {**old["modules"], **old.get("tests", {})}
    b_files = {**new["modules"], **new.get("tests", {})}
    modules: list[dict[str, Any]] = []
    unchanged: list[str] = []
    for name in sorted(a_files.keys() | b_files.keys()):
        before, after = a_files.get(name), b_files.get(name)
        if before == after:
            unchanged.append(name)
            continue
        status = "added" if before is None else "removed" if after is None else "changed"
        is_test = name in old.get("tests", {}) or name in new.get("tests", {})
        modules.append({"file": name, "test": is_test, "status": status, "diff": unified_diff(name, before, after)})
    patch, text = data_diff(old.get("data"), new.get("data"))
    counts = {s: sum(1 for m in modules if m["status"] == s) for s in ("added", "removed", "changed")}
    return {
        "from": old["version"],
        "to": new["version"],
        "modules": modules,
        "unchanged": unchanged,
        "data": {"changed": bool(patch), "patch": patch, "text": text},
        "summary": {**counts, "unchanged": len(unchanged), "data_operations": len(patch)},
    }


def data_diff(old: Any, new: Any) -> tuple[list[dict[str, Any]], str]:
    """The RFC 6902 patch from ``old`` to ``new`` (None counts as ``{}``) and its text form.

    The text has one line per operation, each value as compact JSON cut at
    :data:`MAX_VALUE_TEXT` characters::

        add /limits/max = 5
        remove /blocked/0 (was "rm")
        replace /mode: "strict" -> "lenient"
        move /old -> /new
    """
    before = {} if old is None else old
    after = {} if new is None else new
    patch: list[dict[str, Any]] = jsonpatch.make_patch(before, after).patch
    doc = copy.deepcopy(before)
    lines = []
    for op in patch:
        path, kind = op["path"], op["op"]
        if kind == "add":
            lines.append(f"add {path} = {_value(op['value'])}")
        elif kind == "remove":
            lines.append(f"remove {path} (was {_value(jsonpointer.resolve_pointer(doc, path))})")
        elif kind == "replace":
            was = _value(jsonpointer.resolve_pointer(doc, path))
            lines.append(f"replace {path}: {was} -> {_value(op['value'])}")
        else:  # move, copy
            lines.append(f"{kind} {op['from']} -> {path}")
        doc = jsonpatch.JsonPatch([op]).apply(doc, in_place=True)
    return patch, "".join(f"{line}\n" for line in lines)


def _value(value: Any) -> str:
    text = orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    return text if len(text) <= MAX_VALUE_TEXT else text[: MAX_VALUE_TEXT - 1] + "…"
