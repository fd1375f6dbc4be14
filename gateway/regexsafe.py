"""JSON Schema regular expressions matched in linear time, so no argument can stall the event loop.

``pattern``, ``patternProperties`` and ``additionalProperties`` (next to ``patternProperties``)
run a schema's regular expression against values and property names an agent chooses. The
regular expressions come from pinned tool schemas (an MCP server's ``inputSchema``, an API
source's OpenAPI document), and jsonschema matches them with Python's ``re``, a backtracking
engine that holds the GIL. A pattern such as ``^(a+)+$`` takes time exponential in the argument's
length: 26 characters stalled a data plane for 7 s. Here those three keywords match with
**RE2** (``google-re2``), which guarantees time linear in the input (RE2 "Syntax" wiki; JSON
Schema 2020-12 validation section 6.3.3 specifies ECMA-262 regular expressions, whose common
subset RE2 implements).

A pattern RE2 does not accept (lookaround, backreferences: no linear-time engine can run them)
falls back to ``re`` for that pattern only: the schema's meaning is kept, and such patterns are
rare. :func:`linear_time` extends a jsonschema validator class with the three keywords; the rest
of the class is unchanged.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import re2
from jsonschema import validators
from jsonschema.exceptions import ValidationError

__all__ = ["linear_time", "search", "uses_backtracking"]

_OPTIONS = re2.Options()
_OPTIONS.log_errors = False  # RE2 would print every refused pattern to stderr


@functools.lru_cache(maxsize=4096)
def _matcher(pattern: str) -> tuple[Callable[[str], Any], bool]:
    """``(search, backtracking)`` for ``pattern``: RE2's search, or ``re``'s when RE2 refuses it."""
    try:
        return re2.compile(pattern, _OPTIONS).search, False
    except re2.error:
        return re.compile(pattern).search, True


def search(pattern: str, text: str) -> bool:
    """True when ``pattern`` matches somewhere in ``text`` (``re.search`` semantics, RE2 engine).

    Raises:
        re.error: ``pattern`` is valid for neither RE2 nor ``re``.
    """
    return _matcher(pattern)[0](text) is not None


def uses_backtracking(pattern: str) -> bool:
    """True when ``pattern`` needs the backtracking fallback (RE2 does not accept it)."""
    return _matcher(pattern)[1]


def _pattern(validator: Any, patrn: str, instance: Any, schema: Mapping[str, Any]) -> Iterator[ValidationError]:
    if validator.is_type(instance, "string") and not search(patrn, instance):
        yield ValidationError(f"{instance!r} does not match {patrn!r}")


def _pattern_properties(
    validator: Any, patterns: Mapping[str, Any], instance: Any, schema: Mapping[str, Any]
) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        for key, value in instance.items():
            if search(pattern, key):
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


def _additional_properties(
    validator: Any, extra_schema: Any, instance: Any, schema: Mapping[str, Any]
) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    properties = schema.get("properties", {})
    patterns = list(schema.get("patternProperties", {}))
    extras = {k for k in instance if k not in properties and not any(search(p, k) for p in patterns)}
    if validator.is_type(extra_schema, "object"):
        for extra in extras:
            yield from validator.descend(instance[extra], extra_schema, path=extra)
    elif not extra_schema and extras:
        listed = ", ".join(repr(each) for each in sorted(extras, key=str))
        if patterns:
            verb = "does" if len(extras) == 1 else "do"
            yield ValidationError(
                f"{listed} {verb} not match any of the regexes: {', '.join(map(repr, sorted(patterns)))}"
            )
        else:
            verb = "was" if len(extras) == 1 else "were"
            yield ValidationError(f"Additional properties are not allowed ({listed} {verb} unexpected)")


@functools.lru_cache(maxsize=16)
def linear_time(cls: Any) -> Any:
    """``cls`` (a jsonschema validator class, e.g. ``Draft202012Validator``) with ``pattern``,
    ``patternProperties`` and ``additionalProperties`` matched by RE2. Cached per class."""
    return validators.extend(
        cls,
        {"pattern": _pattern, "patternProperties": _pattern_properties, "additionalProperties": _additional_properties},
    )
