"""OpenAPI documents: parsed within bounds, then checked before anything else looks at them.

:func:`load_document` turns what an admin sent (JSON or YAML text, or an already-parsed JSON
object) into a plain ``dict`` of JSON values, refusing anything too large, too deep or not
JSON-shaped. :func:`check_document` makes sure it is an OpenAPI 3.0.x or 3.1.x document the
adapter can use *without ever leaving the process*: every ``$ref`` must be a local JSON
pointer to something that exists (``openapi-spec-validator``'s default resolver would fetch
``http:``, ``https:`` and ``file:`` references, so this scan runs first), then the document is
validated with ``openapi-spec-validator`` (``OpenAPIV30SpecValidator`` /
``OpenAPIV31SpecValidator``), except that ``default`` values are not validated against their
schemas: that would run the document's own ``pattern`` s (Python ``re``, backtracking, holding
the GIL) and ``oneOf`` s on values of the document's choosing, which can take time exponential in
a few dozen characters. No regular expression of the document ever runs here: ``pattern`` s are
only compiled (3.1: the ``regex`` format of the JSON Schema meta-schema).

Every refusal is :class:`~gateway.errors.InvalidApiDocument` (400) with a ``location``: a
dotted path into the document (``paths./pet/{petId}.get.parameters[0]``) or ``document`` for
the document as a whole. Messages never quote the document's text: they name the rule broken
(a keyword of the OpenAPI or JSON Schema meta-schema, with that rule's value, or what an
``openapi-spec-validator`` check requires), never the offending value; a member that is not
allowed is named by the location; a parse error names its line and column.

Sources: OpenAPI 3.0.3 section 4.7.23 (Reference Object, JSON pointers per RFC 6901), 3.1.1
section 4.8.23 (Reference Object) and 4.8.24.1 (Schema Object dialect); YAML 1.2.2 section
10.3 (the core schema the YAML reader resolves plain scalars with).
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any
from urllib.parse import unquote

import yaml
from jsonschema.exceptions import ValidationError
from jsonschema_path import SchemaPath
from jsonschema_path.handlers.protocols import SupportsRead
from jsonschema_path.handlers.urllib import UrllibHandler
from openapi_spec_validator import OpenAPIV30SpecValidator, OpenAPIV31SpecValidator
from openapi_spec_validator.validation import keywords
from openapi_spec_validator.validation.exceptions import (
    DuplicateOperationIDError,
    ExtraParametersError,
    ParameterDuplicateError,
    UnresolvableParameterError,
)
from openapi_spec_validator.validation.registries import KeywordValidatorRegistry

from gateway.errors import InvalidApiDocument

__all__ = [
    "MAX_DEPTH",
    "MAX_DOCUMENT_BYTES",
    "MAX_OPERATIONS",
    "MAX_PATTERN_CHARS",
    "VALIDATION_TIME_BUDGET",
    "check_document",
    "dotted",
    "load_document",
    "resolve_pointer",
]

MAX_DOCUMENT_BYTES = 4 * 1024 * 1024
"""Largest document accepted (bytes): of the text as sent, or of a parsed object's canonical JSON."""
MAX_DEPTH = 64
"""Deepest nesting of objects and arrays accepted (the document itself is depth 1)."""
MAX_OPERATIONS = 1000
"""Most operations one API source may select (:mod:`gateway.apiadapter.operations`)."""
MAX_PATTERN_CHARS = 8192
"""Longest regular expression (``pattern``, a ``patternProperties`` name) a schema may hold: the
validator compiles each with Python ``re`` (about 6 µs per character, parts of it holding the GIL;
a 2 MB pattern took 22 s and stalled other threads for 2 s)."""
VALIDATION_TIME_BUDGET = 30.0
"""Seconds :func:`check_document` may spend in ``openapi-spec-validator`` before it gives up
(a 4 MiB document of ordinary operations takes about 10 s; see :func:`check_document`)."""

_MAX_MESSAGE = 300
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1  # what orjson (routing table, stored records) can write
_SCHEMA_ID_KEYWORDS = ("$id", "$anchor", "$dynamicRef", "$dynamicAnchor")
_REF_HOPS = 32
_SURROGATE = "the document holds a lone UTF-16 surrogate, which is not Unicode text"
_ESCAPED_SURROGATE = re.compile(r"\\u[dD][89abcdefABCDEF][0-9a-fA-F]{2}")

# --------------------------------------------------------------------------------------------
# locations and pointers


def dotted(parts: Sequence[str | int]) -> str:
    """A location as :class:`~gateway.errors.InvalidApiDocument` names it.

    ``["paths", "/pet/{petId}", "get", "parameters", 0]`` -> ``paths./pet/{petId}.get.parameters[0]``;
    ``[]`` -> ``document``.
    """
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out or "document"


def _pointer_parts(ref: str) -> list[str] | None:
    """The reference tokens of a local reference ``#/a/b~1c`` (RFC 6901 section 4 and 6), or None."""
    if not ref.startswith("#"):
        return None
    fragment = unquote(ref[1:])
    if fragment == "":
        return []
    if not fragment.startswith("/"):
        return None  # a plain-name fragment: an $anchor reference
    return [token.replace("~1", "/").replace("~0", "~") for token in fragment[1:].split("/")]


def resolve_pointer(doc: Any, ref: str) -> tuple[Any, list[str | int]]:
    """Resolve a local reference (``#/components/schemas/Pet``) in ``doc``.

    Returns:
        ``(target, parts)``: the value it points to and its path (list indices as ``int``).

    Raises:
        KeyError: ``ref`` is not a local JSON pointer, or points to nothing.
    """
    tokens = _pointer_parts(ref)
    if tokens is None:
        raise KeyError(ref)
    node: Any = doc
    parts: list[str | int] = []
    for token in tokens:
        part: str | int
        if isinstance(node, Mapping) and token in node:
            node, part = node[token], token
        elif isinstance(node, list) and token.isdigit() and (token == "0" or not token.startswith("0")):
            index = int(token)
            if index >= len(node):
                raise KeyError(ref)
            node, part = node[index], index
        else:
            raise KeyError(ref)
        parts.append(part)
    return node, parts


def _refuse(message: str, location: Sequence[str | int] | str = "document") -> InvalidApiDocument:
    where = location if isinstance(location, str) else dotted(location)
    return InvalidApiDocument(message, location=where)


# --------------------------------------------------------------------------------------------
# load_document


def load_document(
    raw: bytes | str | Mapping[str, Any],
    *,
    max_bytes: int = MAX_DOCUMENT_BYTES,
    max_depth: int = MAX_DEPTH,
) -> dict[str, Any]:
    """Parse an OpenAPI document within bounds.

    Args:
        raw: JSON or YAML text (``bytes`` must be UTF-8; a UTF-8 BOM is ignored), or an
            already-parsed JSON object. Text whose first non-blank character is ``{`` or ``[``
            is read as JSON (RFC 8259), anything else as one YAML document. YAML is read by an
            event parser that refuses anchors and aliases (no "billion laughs"), refuses every
            tag outside the YAML 1.2 core schema (``!!str``, ``!!int``, ``!!float``,
            ``!!bool``, ``!!null``, ``!!seq``, ``!!map``) and resolves plain scalars with the
            core schema (``yes`` stays a string, ``2024-01-01`` stays a string). A mapping key
            is always its text: ``200:`` is the key ``"200"``; a key that is a mapping or a
            sequence is refused.
        max_bytes: Largest size (bytes) of the text, or of a parsed object's canonical JSON.
        max_depth: Deepest nesting of objects and arrays (the document itself is depth 1).

    Returns:
        A fresh ``dict`` holding only ``dict``, ``list``, ``str``, ``int`` (64-bit), finite
        ``float``, ``bool`` and ``None``.

    Raises:
        InvalidApiDocument: (location ``document``) too large, too deep, not UTF-8, not JSON or
            YAML (with line and column), a duplicate key, an anchor, alias or non-core tag, a
            value JSON cannot hold (NaN, infinity, an integer beyond 64 bits), or not an object.
    """
    if isinstance(raw, bytes | bytearray):
        if len(raw) > max_bytes:
            raise _refuse(f"the document is {len(raw)} bytes, more than {max_bytes}")
        try:
            text = bytes(raw).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _refuse(f"the document is not UTF-8 (byte {exc.start})") from None
        return _load_text(text, max_depth)
    if isinstance(raw, str):
        try:
            size = len(raw.encode("utf-8"))
        except UnicodeEncodeError:
            raise _refuse(_SURROGATE) from None
        if size > max_bytes:
            raise _refuse(f"the document is {size} bytes, more than {max_bytes}")
        return _load_text(raw, max_depth)
    if isinstance(raw, Mapping):
        doc = _plain(raw, 1, max_depth, [0, max_bytes])
        try:
            size = len(json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))
        except UnicodeEncodeError:
            raise _refuse(_SURROGATE) from None
        if size > max_bytes:
            raise _refuse(f"the document is {size} bytes as JSON, more than {max_bytes}")
        assert isinstance(doc, dict)
        return doc
    raise _refuse("the document must be a JSON object, or its JSON or YAML text")


def _load_text(text: str, max_depth: int) -> dict[str, Any]:
    text = text.removeprefix("\ufeff")
    stripped = text.lstrip(" \t\r\n")
    if stripped[:1] in ("{", "["):
        doc = _load_json(text)
        if _ESCAPED_SURROGATE.search(text):  # json.loads turns a lone "\ud800" into a lone surrogate
            try:
                json.dumps(doc, ensure_ascii=False).encode("utf-8")
            except UnicodeEncodeError:
                raise _refuse(_SURROGATE) from None
    else:
        doc = _load_yaml(text, max_depth)
    if not isinstance(doc, dict):
        raise _refuse("the document must be an object (an OpenAPI Object), not a JSON array or scalar")
    _check_parsed(doc, 1, max_depth)
    return doc


def _check_parsed(node: dict[str, Any] | list[Any], depth: int, max_depth: int) -> None:
    """Depth and number range of what the JSON or YAML reader built (only plain types)."""
    if depth > max_depth:
        raise _refuse(f"the document nests objects and arrays more than {max_depth} deep")
    for value in node.values() if isinstance(node, dict) else node:
        if isinstance(value, dict | list):
            _check_parsed(value, depth + 1, max_depth)
        elif isinstance(value, int):
            if not _INT_MIN <= value <= _INT_MAX:
                raise _refuse("the document holds an integer beyond 64 bits")
        elif isinstance(value, float) and not math.isfinite(value):
            raise _refuse("the document holds NaN or an infinite number, which JSON numbers cannot be")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise _refuse("the document has an object with a duplicate key")
    return out


def _no_constant(name: str) -> Any:
    raise _refuse(f"the document holds {name}, which JSON numbers cannot be")


def _load_json(text: str) -> Any:
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise _refuse(f"not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}") from None
    except RecursionError:
        raise _refuse("the document nests objects and arrays too deeply") from None
    except ValueError:  # e.g. an integer of more digits than int() accepts
        raise _refuse("not valid JSON: a number cannot be read") from None


def _plain(value: Any, depth: int, max_depth: int, budget: list[int] | None) -> Any:
    """A plain-JSON copy of ``value``; refuses what JSON cannot hold.

    ``budget`` is ``[lower bound of the canonical size so far, max_bytes]`` (for parsed
    objects, to stop early on something huge), or None.
    """
    if isinstance(value, str):
        if budget is not None:
            budget[0] += len(value) + 3
            if budget[0] > budget[1]:
                raise _refuse(f"the document is more than {budget[1]} bytes as JSON")
        return value
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        if not _INT_MIN <= value <= _INT_MAX:
            raise _refuse("the document holds an integer beyond 64 bits")
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _refuse("the document holds NaN or an infinite number, which JSON numbers cannot be")
        return value
    if isinstance(value, Mapping | list | tuple):
        if depth > max_depth:
            raise _refuse(f"the document nests objects and arrays more than {max_depth} deep")
        if budget is not None:
            budget[0] += 2 + len(value)
        if isinstance(value, Mapping):
            out: dict[str, Any] = {}
            for key, item in value.items():
                if not isinstance(key, str):
                    raise _refuse("the document has an object key that is not a string")
                out[_plain(key, depth, max_depth, budget)] = _plain(item, depth + 1, max_depth, budget)
            return out
        return [_plain(item, depth + 1, max_depth, budget) for item in value]
    raise _refuse(f"the document holds a {type(value).__name__}, which is not a JSON value")


# YAML -----------------------------------------------------------------------------------------

_YAML_EVENTS: Any = getattr(yaml, "CBaseLoader", yaml.BaseLoader)  # libyaml's parser when present
_CORE = "tag:yaml.org,2002:"
_CORE_TAGS = frozenset(_CORE + t for t in ("str", "int", "float", "bool", "null", "seq", "map"))
_NULL = re.compile(r"(?:null|Null|NULL|~|)")
_BOOL = {"true": True, "True": True, "TRUE": True, "false": False, "False": False, "FALSE": False}
_INT10 = re.compile(r"[-+]?[0-9]+")
_INT8 = re.compile(r"0o[0-7]+")
_INT16 = re.compile(r"0x[0-9a-fA-F]+")
_FLOAT = re.compile(r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?")
_FLOAT_SPECIAL = re.compile(r"[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN)")
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"|`[^`]*`")


def _at(mark: Any) -> str:
    if mark is None:
        return ""
    return f" at line {mark.line + 1}, column {mark.column + 1}"


def _core_scalar(value: str, tag: str | None, plain: bool, mark: Any) -> Any:
    """A YAML 1.2 core schema scalar (section 10.3.2): explicit core tag, else resolved if plain."""
    if tag in (None, "!"):
        if not plain or tag == "!":
            return value
        if _NULL.fullmatch(value):
            return None
        if value in _BOOL:
            return _BOOL[value]
        if _INT10.fullmatch(value) or _INT8.fullmatch(value) or _INT16.fullmatch(value):
            tag = _CORE + "int"
        elif _FLOAT.fullmatch(value) or _FLOAT_SPECIAL.fullmatch(value):
            tag = _CORE + "float"
        else:
            return value
    try:
        if tag == _CORE + "str":
            return value
        if tag == _CORE + "null":
            if not _NULL.fullmatch(value):
                raise ValueError
            return None
        if tag == _CORE + "bool":
            return _BOOL[value]
        if tag == _CORE + "int":
            if _INT8.fullmatch(value):
                return int(value[2:], 8)
            if _INT16.fullmatch(value):
                return int(value[2:], 16)
            if not _INT10.fullmatch(value):
                raise ValueError
            return int(value, 10)
        if tag == _CORE + "float":
            if _FLOAT_SPECIAL.fullmatch(value) or not _FLOAT.fullmatch(value):
                raise _refuse(f"the document holds NaN or an infinite number (JSON cannot){_at(mark)}")
            return float(value)
    except (KeyError, ValueError):
        raise _refuse(f"a YAML scalar does not match its tag{_at(mark)}") from None
    raise _refuse(f"a YAML tag outside the core schema{_at(mark)} (only str, int, float, bool, null, seq, map)")


class _Builder:
    """Builds JSON values from YAML parse events, with the limits of :func:`load_document`."""

    def __init__(self, max_depth: int) -> None:
        self.max_depth = max_depth
        self.stack: list[tuple[dict[str, Any] | list[Any], list[str | None]]] = []
        self.root: Any = None
        self.documents = 0

    def _add(self, value: Any, event: Any) -> None:
        if not self.stack:
            self.root = value
            return
        container, key = self.stack[-1]
        if isinstance(container, list):
            container.append(value)
        elif key[0] is None:
            raise _refuse(f"a YAML mapping key must be a scalar{_at(event.start_mark)}")
        else:
            container[key[0]] = value
            key[0] = None

    def _key_pending(self) -> bool:
        return bool(self.stack) and isinstance(self.stack[-1][0], dict) and self.stack[-1][1][0] is None

    def feed(self, event: Any) -> None:
        mark = getattr(event, "start_mark", None)
        if isinstance(event, yaml.AliasEvent):
            raise _refuse(f"YAML aliases are not allowed{_at(mark)}")
        if isinstance(event, yaml.DocumentStartEvent):
            self.documents += 1
            if self.documents > 1:
                raise _refuse(f"the YAML text holds more than one document{_at(mark)}")
            return
        if not isinstance(event, yaml.NodeEvent):
            if isinstance(event, yaml.CollectionEndEvent):
                container, _ = self.stack.pop()
                self._add(container, event)
            return
        if event.anchor is not None:
            raise _refuse(f"YAML anchors are not allowed{_at(mark)}")
        tag = event.tag
        if tag not in (None, "!") and tag not in _CORE_TAGS:
            raise _refuse(f"a YAML tag outside the core schema{_at(mark)} (only str, int, float, bool, null, seq, map)")
        if isinstance(event, yaml.ScalarEvent):
            if self._key_pending():
                key = event.value
                container = self.stack[-1][0]
                if key in container:
                    raise _refuse(f"a YAML mapping has a duplicate key{_at(mark)}")
                self.stack[-1][1][0] = key
                return
            self._add(_core_scalar(event.value, tag, event.implicit[0], mark), event)
            return
        if self._key_pending():
            raise _refuse(f"a YAML mapping key must be a scalar{_at(mark)}")
        if len(self.stack) + 1 > self.max_depth:
            raise _refuse(f"the document nests objects and arrays more than {self.max_depth} deep{_at(mark)}")
        if isinstance(event, yaml.MappingStartEvent):
            if tag not in (None, "!", _CORE + "map"):
                raise _refuse(f"a YAML mapping with a non-mapping tag{_at(mark)}")
            self.stack.append(({}, [None]))
        elif isinstance(event, yaml.SequenceStartEvent):
            if tag not in (None, "!", _CORE + "seq"):
                raise _refuse(f"a YAML sequence with a non-sequence tag{_at(mark)}")
            self.stack.append(([], [None]))


def _load_yaml(text: str, max_depth: int) -> Any:
    builder = _Builder(max_depth)
    try:
        for event in yaml.parse(text, Loader=_YAML_EVENTS):
            builder.feed(event)
    except yaml.MarkedYAMLError as exc:
        problem = _QUOTED.sub("'…'", exc.problem or "syntax error")
        raise _refuse(f"not valid YAML: {problem}{_at(exc.problem_mark)}") from None
    except yaml.YAMLError:
        raise _refuse("not valid YAML") from None
    return builder.root


# --------------------------------------------------------------------------------------------
# check_document


def check_document(doc: Mapping[str, Any], *, time_budget: float = VALIDATION_TIME_BUDGET) -> str:
    """Check that ``doc`` (from :func:`load_document`) is an OpenAPI 3.0.x or 3.1.x document the
    adapter can use, touching nothing outside the process.

    In order:

    1. ``openapi`` is ``3.0.x`` or ``3.1.x`` (a ``swagger: "2.0"`` document is refused with the
       advice to convert it to OpenAPI 3).
    2. Every ``$ref`` member holding a string, wherever it is (``examples`` included), is a
       local JSON pointer (``#/...``) to a location that exists: anything else is refused at
       the location of the ``$ref``, and nothing is ever fetched.
    3. No schema uses ``$id``, ``$anchor``, ``$dynamicRef`` or ``$dynamicAnchor`` (they change
       how references resolve; OpenAPI 3.1.1 section 4.8.24.1), and no regular expression
       (``pattern``, ``patternProperties`` names) is longer than :data:`MAX_PATTERN_CHARS`.
    4. ``openapi-spec-validator`` finds no error (the best one is reported, at its location,
       naming the rule, never the value). ``default`` values are not checked against their
       schemas (no regular expression or combinator of the document runs on data here; an
       ill-typed ``default`` is copied into the tool schema as the annotation it is).

    Args:
        doc: The parsed document.
        time_budget: Seconds step 4 may take (it is linear in the document, about 2.5 s per
            MiB of ordinary operations and up to about 8 s per MiB of tiny schemas).

    Returns:
        ``"3.0"`` or ``"3.1"``.

    Raises:
        InvalidApiDocument: The first problem found, with its location.
    """
    if not isinstance(doc, Mapping):
        raise _refuse("the document must be an object (an OpenAPI Object)")
    version = doc.get("openapi")
    if "swagger" in doc and version is None:
        raise _refuse(
            "Swagger 2.0 documents are not supported: convert it to OpenAPI 3 first "
            "(for example with swagger2openapi or converter.swagger.io)",
            "swagger",
        )
    if not isinstance(version, str) or not re.fullmatch(r"3\.[01]\.[0-9]+", version):
        raise _refuse("the openapi field must be a 3.0.x or 3.1.x version", "openapi")
    minor = version[:3]
    _scan_refs(doc)
    _validate(doc, minor, time_budget)
    return minor


def _scan_refs(doc: Mapping[str, Any]) -> None:
    """Steps 2 and 3 of :func:`check_document` (iterative: the depth is already bounded)."""
    # (value, path, kind): kind "doc" (OpenAPI structure), "schema", "schemas" (a map of
    # schemas) or "data" (example values, extensions): $id & co. only matter in schemas.
    stack: list[tuple[Any, list[str | int], str]] = [(doc, [], "doc")]
    while stack:
        node, path, kind = stack.pop()
        if isinstance(node, list):
            child_kind = "schema" if kind == "schemalist" else ("data" if kind == "data" else "doc")
            for i, item in enumerate(node):
                stack.append((item, [*path, i], child_kind))
            continue
        if not isinstance(node, Mapping):
            continue
        ref = node.get("$ref")
        if isinstance(ref, str) and kind != "schemas":
            if _pointer_parts(ref) is None:
                raise _refuse(
                    "only local references (#/...) are supported: the adapter never fetches a document",
                    [*path, "$ref"],
                )
            try:
                resolve_pointer(doc, ref)
            except KeyError:
                raise _refuse("this $ref points to nothing in the document", [*path, "$ref"]) from None
        if kind == "schema":
            for keyword in _SCHEMA_ID_KEYWORDS:
                if keyword in node:
                    raise _refuse(
                        f"{keyword} is not supported in schemas (it changes how $ref resolves)", [*path, keyword]
                    )
            pattern = node.get("pattern")
            if isinstance(pattern, str) and len(pattern) > MAX_PATTERN_CHARS:
                raise _refuse(f"a pattern may be at most {MAX_PATTERN_CHARS} characters", [*path, "pattern"])
            names = node.get("patternProperties")
            if isinstance(names, Mapping) and any(len(str(name)) > MAX_PATTERN_CHARS for name in names):
                raise _refuse(
                    f"a patternProperties name (a regular expression) may be at most {MAX_PATTERN_CHARS} characters",
                    [*path, "patternProperties"],
                )
        for key, value in node.items():
            stack.append((value, [*path, key], _child_kind(kind, path, key)))


_SCHEMA_ONE = frozenset(
    (
        "items additionalProperties unevaluatedItems unevaluatedProperties not if "
        "then else contains propertyNames contentSchema additionalItems"
    ).split()
)
_SCHEMA_MAP = frozenset({"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"})
_SCHEMA_LIST = frozenset({"allOf", "anyOf", "oneOf", "prefixItems"})


def _child_kind(kind: str, path: list[str | int], key: str) -> str:
    if kind == "data" or key.startswith("x-"):
        return "data"
    if kind == "schemas":
        return "schema"
    if kind == "schema":
        if key in _SCHEMA_ONE:
            return "schema"
        if key in _SCHEMA_MAP:
            return "schemas"
        if key in _SCHEMA_LIST:
            return "schemalist"
        return "data"
    # OpenAPI structure: Parameter, Header and Media Type objects hold "schema"; Components
    # hold "schemas"; Example objects and "example" members hold data.
    if key == "schema":
        return "schema"
    if key == "schemas" and path == ["components"]:
        return "schemas"
    if key in ("example", "value", "default", "enum"):
        return "data"
    return "doc"


class _Seen(list[Any]):
    """``openapi-spec-validator`` 0.9.0 keeps visited ids in lists (quadratic ``in``): a set."""

    def __init__(self) -> None:
        super().__init__()
        self._set: set[Any] = set()

    def append(self, item: Any) -> None:
        self._set.add(item)

    def __contains__(self, item: object) -> bool:
        return item in self._set


class _TimeBudgetExceeded(Exception):
    pass


_PARTS = "_gateway_parts"


def _located(
    errors: Iterator[ValidationError], parts: Sequence[Any], registry: Any, *, relative: bool = True
) -> Iterator[ValidationError]:
    """Tag errors with their document location (innermost first) and enforce the time budget."""
    deadline = getattr(registry, "deadline", None)
    if deadline is not None and time.monotonic() > deadline:
        raise _TimeBudgetExceeded
    for err in errors:
        if getattr(err, _PARTS, None) is None:
            setattr(err, _PARTS, [*parts, *err.absolute_path] if relative else list(parts))
        yield err


class _LocatedSchema(keywords.SchemaValidator):
    """Set-backed visit tracking and located errors, for both dialects' schema validators below."""

    def __init__(self, registry: KeywordValidatorRegistry) -> None:
        super().__init__(registry)
        self.visited_schema_ids = _Seen()
        self.meta_checked_schema_ids = _Seen()

    def __call__(
        self, schema: SchemaPath, require_properties: bool = True, meta_checked: bool = False
    ) -> Iterator[ValidationError]:
        return _located(super().__call__(schema, require_properties, meta_checked), schema.parts, self.registry)


class _Schema30(_LocatedSchema, keywords.OpenAPIV30SchemaValidator):
    pass


class _Schema31(_LocatedSchema, keywords.OpenAPIV31SchemaValidator):
    pass


class _Operation(keywords.OperationValidator):
    def __init__(self, registry: KeywordValidatorRegistry) -> None:
        super().__init__(registry)
        self.operation_ids_registry = _Seen()

    def __call__(
        self, url: str, name: str, operation: SchemaPath, path_parameters: SchemaPath | None
    ) -> Iterator[ValidationError]:
        return _located(super().__call__(url, name, operation, path_parameters), operation.parts, self.registry)


class _Parameters(keywords.ParametersValidator):
    def __call__(self, parameters: SchemaPath) -> Iterator[ValidationError]:
        return _located(super().__call__(parameters), parameters.parts, self.registry)


class _Tags(keywords.TagsValidator):
    def __call__(self, tags: SchemaPath) -> Iterator[ValidationError]:
        return _located(super().__call__(tags), tags.parts, self.registry)


class _NoDefaults(keywords.KeywordValidator):
    """``default`` values are not validated against their schema (see :func:`check_document`)."""

    def __call__(self, schema: SchemaPath, value: Any) -> Iterator[ValidationError]:
        return iter(())


class _NeverFetch(UrllibHandler):
    def _open(self, uri: str) -> AbstractContextManager[SupportsRead]:
        raise ValueError("the adapter never fetches referenced documents")


_NO_FETCH: dict[str, UrllibHandler] = {
    scheme: _NeverFetch(scheme) for scheme in ("", "http", "https", "file", "ftp", "data", "urn")
}


class _Validator30(OpenAPIV30SpecValidator):
    # Defence in depth: the $ref scan has refused non-local references already.
    resolver_handlers = _NO_FETCH
    keyword_validators = {
        **OpenAPIV30SpecValidator.keyword_validators,
        "schema": _Schema30,
        "default": _NoDefaults,
        "operation": _Operation,
        "parameters": _Parameters,
        "tags": _Tags,
    }


class _Validator31(OpenAPIV31SpecValidator):
    resolver_handlers = _NO_FETCH
    keyword_validators = {
        **OpenAPIV31SpecValidator.keyword_validators,
        "schema": _Schema31,
        "default": _NoDefaults,
        "operation": _Operation,
        "parameters": _Parameters,
        "tags": _Tags,
    }


def _canonical(doc: Any, parts: Sequence[Any], *, follow_last: bool = False) -> list[str | int]:
    """``parts`` as a path in ``doc`` that goes through no ``$ref``: where the problem is written.

    The validator reaches a component through the first operation that references it; the
    admin must be shown the component. Keys are made strings where the node is an object
    (jsonschema-rs reports ``200`` for ``"200"``). ``follow_last``: the problem is in what a
    ``$ref`` at the end of ``parts`` points to (openapi-spec-validator's own checks of a
    schema, which it reads through references), so that ``$ref`` is followed too.
    """
    node: Any = doc
    out: list[str | int] = []
    for part in parts:
        for _ in range(_REF_HOPS):
            ref = node.get("$ref") if isinstance(node, Mapping) else None
            if not isinstance(ref, str) or str(part) in node:
                break
            try:
                node, out = resolve_pointer(doc, ref)
            except KeyError:
                return [*out, *parts[len(out) :]]
        if isinstance(node, Mapping):
            key: str | int = str(part)
            node = node.get(key)
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            key, node = part, node[part]
        else:
            key, node = part, None
        out = [*out, key]
    for _ in range(_REF_HOPS if follow_last else 0):
        ref = node.get("$ref") if isinstance(node, Mapping) else None
        if not isinstance(ref, str):
            break
        try:
            node, out = resolve_pointer(doc, ref)
        except KeyError:
            break
    return out


# What openapi-spec-validator's own checks (errors without a JSON Schema keyword) mean. Their
# messages quote names and values from the document, so they are never shown.
_SEMANTIC: tuple[tuple[type[ValidationError], str], ...] = (
    (DuplicateOperationIDError, "the operationId is not unique: another operation has it too"),
    (
        UnresolvableParameterError,
        "every {name} of the path template needs a path parameter, and every path parameter a {name} "
        "in the template (the path item's and the operation's parameters together)",
    ),
    (ParameterDuplicateError, "two parameters have the same name and location (in)"),
    (ExtraParametersError, "required names properties that neither the schema nor its allOf members define"),
)
_SEMANTIC_PREFIXES = (
    ("Duplicate tag name", "two tags have the same name"),
    ("Unknown JSON Schema dialect", "$schema names a JSON Schema dialect the validator does not know"),
)
_BOUNDS = frozenset(
    (
        "minimum maximum exclusiveMinimum exclusiveMaximum multipleOf minLength maxLength "
        "minItems maxItems minProperties maxProperties minContains maxContains"
    ).split()
)
_UNKNOWN = object()


def _step(node: Any, part: Any) -> Any:
    """One step down a JSON value (``_UNKNOWN`` when there is nothing there)."""
    if isinstance(node, Mapping):
        return node.get(str(part), _UNKNOWN)
    if isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
        return node[part]
    return _UNKNOWN


def _walk(node: Any, parts: Sequence[Any]) -> Any:
    for part in parts:
        node = _step(node, part)
    return node


def _rule(err: ValidationError) -> tuple[str | None, Any, Any, Any]:
    """``(keyword, its value, the schema holding it, the root of that schema)`` of a failed rule.

    Python jsonschema errors carry the keyword; jsonschema-rs errors (openapi-spec-validator's
    structural check) only a keyword location in the OpenAPI meta-schema, walked here.
    """
    if isinstance(err.validator, str):
        return err.validator, err.validator_value, err.schema, None
    path = list(err.relative_schema_path)
    if path and isinstance(path[-1], str) and isinstance(err.schema, Mapping):
        holder = _walk(err.schema, path[:-1])
        if isinstance(holder, Mapping):
            return path[-1], holder.get(path[-1], _UNKNOWN), holder, err.schema
    return None, _UNKNOWN, None, None


def _member_rules(holder: Mapping[str, Any], root: Any) -> tuple[set[str], list[str]]:
    """Named and pattern members a meta-schema object allows (one local ``$ref`` followed)."""
    names: set[str] = set()
    patterns: list[str] = []
    schemas = [holder]
    ref = holder.get("$ref")
    if isinstance(ref, str) and root is not None:
        try:
            schemas.append(resolve_pointer(root, ref)[0])
        except KeyError:
            pass
    for schema in schemas:
        if isinstance(schema, Mapping):
            names.update(str(k) for k in schema.get("properties") or {})
            patterns.extend(str(p) for p in schema.get("patternProperties") or {})
    return names, patterns


def _describe(err: ValidationError, node: Any) -> tuple[str, list[str | int]]:
    """What rule the document breaks, and where below the error's own location (key parts).

    ``node`` is the offending value. The words come from the rule alone: its keyword and, as
    every rule checked here belongs to a *meta*-schema (the OpenAPI schema or a JSON Schema
    dialect's; ``default`` values are not validated against the document's schemas), the
    rule's value. The offending value is never quoted: a ``description`` or ``enum`` may
    hold anything, secrets included.
    """
    for kind, text in _SEMANTIC:
        if isinstance(err, kind):
            return text, []
    keyword, rule, holder, root = _rule(err)
    if keyword is None:  # openapi-spec-validator's own message-only errors, or a false schema
        message = str(err.message)
        for prefix, text in _SEMANTIC_PREFIXES:
            if message.startswith(prefix):
                return text, []
        if message.endswith("is not of type 'object', 'boolean'"):
            return "a schema must be an object or a boolean", []
        return "this value is not allowed here", []
    if keyword == "required" and isinstance(rule, list) and isinstance(node, Mapping):
        missing = [name for name in rule if isinstance(name, str) and name not in node]
        if missing:
            return f"the required member {missing[0]!r} is missing", []
    if keyword in ("additionalProperties", "unevaluatedProperties"):
        if rule is False and isinstance(node, Mapping) and isinstance(holder, Mapping):
            names, patterns = _member_rules(holder, root)
            # The meta-schema's own patterns (^x-, ^/, ...), which the validator has just run on these keys.
            extra = next((k for k in node if k not in names and not any(re.search(p, k) for p in patterns)), None)
            if extra is not None:
                return f"this member is not allowed here ({keyword})", [str(extra)]
        return f"a member is not allowed here ({keyword})", []
    if rule is _UNKNOWN:
        return f"breaks the rule {keyword!r}", []
    if keyword == "type":
        kinds = rule if isinstance(rule, list) else [rule]
        return f"must be of type {' or '.join(str(k) for k in kinds)}", []
    if keyword == "enum" and isinstance(rule, list):
        return f"must be one of {', '.join(json.dumps(v) for v in rule)}", []
    if keyword == "const":
        return f"must be {json.dumps(rule)}", []
    if keyword == "pattern":
        return f"must match the regular expression {rule} (pattern)", []
    if keyword == "format":
        return f"must be a valid {rule} (format)", []
    if keyword in _BOUNDS:
        return f"breaks the rule {keyword} {json.dumps(rule)}", []
    if keyword == "uniqueItems":
        return "must not hold the same item twice (uniqueItems)", []
    if keyword == "oneOf":
        return "must match exactly one of the forms allowed here (oneOf)", []
    if keyword == "anyOf":
        return "matches none of the forms allowed here (anyOf)", []
    if keyword == "not":
        return "has a form not allowed here (not)", []
    return f"breaks the rule {keyword!r}", []


def _message(err: ValidationError, node: Any) -> tuple[str, list[str | int]]:
    text, below = _describe(err, node)
    return (text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 1] + "…"), below


def _validate(doc: Mapping[str, Any], minor: str, time_budget: float) -> None:
    validator: _Validator30 | _Validator31 = (_Validator30 if minor == "3.0" else _Validator31)(doc)
    validator.keyword_validators_registry.deadline = time.monotonic() + time_budget  # type: ignore[attr-defined]
    # The two stages of SpecValidator.iter_errors, run here: that method is lru_cache'd on the
    # validator instance, so calling it would keep every checked document alive for good.
    # The document against the OpenAPI JSON Schema first: its best error names the structure.
    structural = []
    for err in validator.schema_validator.iter_errors(validator.schema):
        structural.append(err)
        if len(structural) >= 100:
            break
    if structural:
        # The most specific error: the one deepest in the document (the first of those).
        best = max(structural, key=lambda e: len(e.absolute_path))
        text, below = _message(best, _walk(doc, best.absolute_path))
        where = _canonical(doc, [*best.absolute_path, *below])
        raise _refuse(f"not a valid OpenAPI {minor} document: {text}", where)
    try:
        err = next(iter(validator.root_validator(validator.schema_path)), None)
    except _TimeBudgetExceeded:
        raise _refuse(
            f"validating the document took more than {time_budget:g} s: split it, or leave out what the API source does not need"
        ) from None
    except Exception as exc:  # the validator choking on an odd document is still the document's fault
        raise _refuse(f"the document cannot be validated ({type(exc).__name__})") from None
    if err is not None:
        text, below = _message(err, err.instance)
        where = _canonical(doc, [*(getattr(err, _PARTS, None) or []), *below], follow_last=True)
        raise _refuse(f"not a valid OpenAPI {minor} document: {text}", where)
