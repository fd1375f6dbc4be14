"""Selected OpenAPI operations compiled into MCP tool definitions and their bindings.

:func:`compile_source` takes a document that passed
:func:`~gateway.apiadapter.documents.check_document`, the admin's :class:`Selection` and
:class:`Override` s, and returns, for each selected operation in document order, the MCP tool
agents will list (MCP 2025-11-25 ``server/tools`` "Tool": ``name``, ``title``,
``description``, ``inputSchema``, ``outputSchema``, ``annotations``) and the
:class:`~gateway.apiadapter.binding.Operation` the data plane sends it as.

How an operation becomes a tool:

* **name**: ``operationId`` with every character outside ``[A-Za-z0-9_.-]`` replaced by ``_``
  (MCP "Tool Names"), at most :data:`MAX_TOOL_NAME` characters (the data plane prefixes
  ``<source>__``); without an ``operationId``: ``<method>_<path words>`` (``get_pet_petId``).
  Two operations with one name are refused: rename one with an override or exclude one.
* **description**: summary and description (``Deprecated.`` first when deprecated), at most
  :data:`MAX_DESCRIPTION` characters; **title**: the summary.
* **inputSchema**: one property per parameter (path-item parameters merged with the
  operation's, the operation's winning by name and location; OpenAPI 3.1.1 section 4.8.10.1),
  in the order path, query, header, cookie; a name already used by an earlier argument becomes
  ``<in>_<name>``. ``Accept``, ``Content-Type`` and ``Authorization`` header parameters are
  ignored (section 4.8.12.1), and so are framing headers (``Host``, ``Content-Length``, ...),
  ``Cookie`` and ``User-Agent`` (the data plane sets those). The request body comes last:
  its properties become arguments themselves when it is required and a plain object schema
  none of whose properties collides; otherwise it is the one argument ``body``.
* **outputSchema**: the JSON schema of the success response (the lowest ``2xx`` code, else
  ``2XX``, else ``default``); an object schema as is, anything else wrapped as
  ``{"result": ...}``.
* **annotations**: from the method (``GET``/``HEAD``/``OPTIONS`` read-only; ``DELETE``
  destructive and idempotent; ``PUT`` idempotent), then the override's.

``TRACE`` operations are never compiled: a TRACE request comes back as the response body,
headers included, so the tool would hand the brokered credential to the agent (RFC 9110
section 9.3.8). Each one the selection would select is reported under ``skipped``; a selection
that names one by ``operationId`` is refused.

All the tools and operations of one source together are at most :data:`MAX_SOURCE_BYTES` of
JSON, checked as each operation is compiled: tools copy the components they reference into
their ``$defs``, so one large schema referenced by many operations would otherwise multiply
(a 540 KB document made 534 MB of tools).

Refusals are :class:`~gateway.errors.InvalidApiDocument` (400) naming the location in the
document (``paths./pet/{petId}/uploadImage.post.requestBody.content``) or in the request
(``selection.include.tags``, ``overrides.addPet.name``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

import orjson

from gateway.apiadapter.binding import LOCATIONS, METHODS, STYLES, Body, Operation, Output, Param
from gateway.apiadapter.documents import MAX_OPERATIONS, dotted, resolve_pointer
from gateway.apiadapter.schemas import REQUEST, RESPONSE, SchemaBundle, SchemaConverter
from gateway.errors import InvalidApiDocument

__all__ = [
    "ANNOTATION_HINTS",
    "MAX_CRITERIA",
    "MAX_DESCRIPTION",
    "MAX_SOURCE_BYTES",
    "MAX_TITLE",
    "MAX_TOOL_NAME",
    "CompiledSource",
    "Criteria",
    "Override",
    "Selection",
    "compile_source",
    "overrides_from_body",
    "tool_name",
]

MAX_TOOL_NAME = 64
"""Longest tool name (MCP allows 128; the data plane prefixes ``<source>__``)."""
MAX_DESCRIPTION = 4096
"""Longest tool description (characters)."""
MAX_TITLE = 256
"""Longest override title (characters)."""
ANNOTATION_HINTS = ("readOnlyHint", "destructiveHint", "idempotentHint", "openWorldHint")
"""The boolean MCP tool annotations (MCP 2025-11-25 ``ToolAnnotations``); ``title`` is the other one."""
MAX_CRITERIA = 1000
"""Most entries in one selection list."""
MAX_SOURCE_BYTES = 8 * 1024 * 1024
"""Largest total size of one source's compiled tools and operation records (bytes of compact
JSON): :func:`compile_source` stops at the operation that passes it."""

_NAME_OK = re.compile(rf"[A-Za-z0-9_.-]{{1,{MAX_TOOL_NAME}}}")
_NAME_BAD = re.compile(r"[^A-Za-z0-9_.-]")
_WORDS = re.compile(r"[^A-Za-z0-9_.-]+")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_METHOD_PATH = re.compile(r"([A-Za-z]+) (/.*)")
_HTTP_METHODS = tuple(m.lower() for m in METHODS)
# OpenAPI 3.1.1 section 4.8.12.1: such header parameter definitions SHALL be ignored.
_OPENAPI_IGNORED = frozenset({"accept", "content-type", "authorization"})
# The data plane owns these (framing, connection management, cookies, its User-Agent).
_TRANSPORT_HEADERS = frozenset(
    (
        "host content-length transfer-encoding connection keep-alive te "
        "trailer upgrade expect proxy-authorization proxy-connection cookie user-agent"
    ).split()
)
_SCALARS = frozenset({"string", "number", "integer", "boolean", "null"})
_NOT_PLAIN = frozenset(
    (
        "$ref allOf anyOf oneOf not if then "
        "else dependentSchemas dependentRequired patternProperties unevaluatedProperties propertyNames minProperties maxProperties"
    ).split()
)
_FORM = "application/x-www-form-urlencoded"
_HOPS = 32


def _refuse(message: str, location: Sequence[str | int] | str) -> InvalidApiDocument:
    return InvalidApiDocument(message, location=location if isinstance(location, str) else dotted(location))


# --------------------------------------------------------------------------------------------
# selection


def _strings(value: Any, where: str, *, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or len(value) > MAX_CRITERIA:
        raise _refuse(f"must be a list of at most {MAX_CRITERIA} {what}", where)
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item or len(item) > 1024 or "\x00" in item:
            raise _refuse(f"must be a non-empty string of at most 1024 characters (one of the {what})", f"{where}[{i}]")
    return tuple(value)


@dataclass(frozen=True, slots=True)
class Criteria:
    """One side of a :class:`Selection`: an operation matches when any entry matches it.

    Attributes:
        operation_ids: Exact ``operationId`` values.
        tags: Exact tag names (an operation matches when it carries one of them).
        paths: ``fnmatch`` globs on the path template as written (``/pet/*`` matches
            ``/pet/{petId}`` and ``/pet/{petId}/uploadImage``: ``*`` crosses ``/``).
    """

    operation_ids: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.operation_ids or self.tags or self.paths)

    def matches(self, operation_id: str | None, tags: Sequence[str], path: str) -> bool:
        return (
            (operation_id is not None and operation_id in self.operation_ids)
            or any(tag in self.tags for tag in tags)
            or any(fnmatchcase(path, glob) for glob in self.paths)
        )

    @classmethod
    def from_body(cls, obj: Any, where: str) -> Criteria:
        """Parse ``{"operation_ids"?, "tags"?, "paths"?}`` (each a list of strings) found at ``where``."""
        if obj is None:
            return cls()
        if not isinstance(obj, Mapping) or set(obj) - {"operation_ids", "tags", "paths"}:
            raise _refuse('must be an object {"operation_ids"?, "tags"?, "paths"?} of string lists', where)
        return cls(
            _strings(obj.get("operation_ids"), f"{where}.operation_ids", what="operationIds"),
            _strings(obj.get("tags"), f"{where}.tags", what="tags"),
            _strings(obj.get("paths"), f"{where}.paths", what="path globs"),
        )

    def to_body(self) -> dict[str, list[str]]:
        return {"operation_ids": list(self.operation_ids), "tags": list(self.tags), "paths": list(self.paths)}


@dataclass(frozen=True, slots=True)
class Selection:
    """Which operations of a document become tools.

    An operation is selected when (``include`` is empty or it matches ``include``) and it
    does not match ``exclude``.
    """

    include: Criteria = field(default_factory=Criteria)
    exclude: Criteria = field(default_factory=Criteria)

    @classmethod
    def from_body(cls, obj: Any) -> Selection:
        """Parse ``{"include"?: {"operation_ids"?, "tags"?, "paths"?}, "exclude"?: {...}}``.

        ``None`` or ``{}`` selects everything.

        Raises:
            InvalidApiDocument: Anything malformed, at ``selection``, ``selection.include.tags``,
                ``selection.exclude.paths[2]`` and so on.
        """
        if obj is None:
            return cls()
        if not isinstance(obj, Mapping) or set(obj) - {"include", "exclude"}:
            raise _refuse('must be an object {"include"?: {...}, "exclude"?: {...}}', "selection")
        return cls(
            Criteria.from_body(obj.get("include"), "selection.include"),
            Criteria.from_body(obj.get("exclude"), "selection.exclude"),
        )

    def selects(self, operation_id: str | None, tags: Sequence[str], path: str) -> bool:
        included = self.include.empty or self.include.matches(operation_id, tags, path)
        return included and not self.exclude.matches(operation_id, tags, path)

    def to_body(self) -> dict[str, Any]:
        return {"include": self.include.to_body(), "exclude": self.exclude.to_body()}


# --------------------------------------------------------------------------------------------
# overrides


@dataclass(frozen=True, slots=True)
class Override:
    """What an admin changes about one operation's tool.

    Attributes:
        name: The tool's name instead of the derived one (same rule: 1-64 of ``[A-Za-z0-9_.-]``).
        title: The tool's ``title`` instead of the summary.
        description: The tool's ``description`` instead of summary and description.
        annotations: Merged over the method's annotations: ``readOnlyHint``,
            ``destructiveHint``, ``idempotentHint``, ``openWorldHint`` (booleans), ``title``
            (string).
    """

    name: str | None = None
    title: str | None = None
    description: str | None = None
    annotations: Mapping[str, bool | str] = field(default_factory=dict)


def _override_key(key: str) -> str:
    """``"get /pet"`` -> ``"GET /pet"``; an operationId stays as it is."""
    match = _METHOD_PATH.fullmatch(key)
    if match and match.group(1).upper() in METHODS:
        return f"{match.group(1).upper()} {match.group(2)}"
    return key


def _text(value: Any, where: str, limit: int) -> str:
    if not isinstance(value, str) or len(value) > limit or "\x00" in value:
        raise _refuse(f"must be a string of at most {limit} characters", where)
    return value


def overrides_from_body(obj: Any) -> dict[str, Override]:
    """Parse ``{"<operationId>" | "<METHOD> <path>": {"name"?, "title"?, "description"?, "annotations"?}}``.

    Keys name an operation by its ``operationId``, or as ``"GET /pet/{petId}"`` (the method in
    any case, the path template as written); :func:`compile_source` refuses a key that names
    no selected operation.

    Returns:
        The overrides by key (method keys upper-cased).

    Raises:
        InvalidApiDocument: Anything malformed, at ``overrides``, ``overrides.<key>.name``,
            ``overrides.<key>.annotations.readOnlyHint`` and so on.
    """
    if obj is None:
        return {}
    if not isinstance(obj, Mapping) or len(obj) > 2 * MAX_OPERATIONS:
        raise _refuse("must be an object of overrides by operationId or 'METHOD /path'", "overrides")
    out: dict[str, Override] = {}
    for raw_key, value in obj.items():
        where = f"overrides.{raw_key}"
        if not isinstance(raw_key, str) or not raw_key or len(raw_key) > 1024:
            raise _refuse("keys must be operationIds or 'METHOD /path'", "overrides")
        key = _override_key(raw_key)
        if key in out:
            raise _refuse("two keys name the same operation", where)
        if not isinstance(value, Mapping) or set(value) - {"name", "title", "description", "annotations"}:
            raise _refuse('must be an object {"name"?, "title"?, "description"?, "annotations"?}', where)
        name = value.get("name")
        if name is not None and (not isinstance(name, str) or not _NAME_OK.fullmatch(name)):
            raise _refuse(
                f"a tool name is 1-{MAX_TOOL_NAME} characters of A-Z, a-z, 0-9, '_', '-' and '.'", f"{where}.name"
            )
        title = value.get("title")
        if title is not None:
            title = _text(title, f"{where}.title", MAX_TITLE)
        description = value.get("description")
        if description is not None:
            description = _text(description, f"{where}.description", MAX_DESCRIPTION)
        annotations = value.get("annotations")
        annotations = {} if annotations is None else annotations
        if not isinstance(annotations, Mapping):
            raise _refuse("must be an object of MCP tool annotations", f"{where}.annotations")
        checked: dict[str, bool | str] = {}
        for hint, flag in annotations.items():
            if hint == "title":
                checked[hint] = _text(flag, f"{where}.annotations.title", MAX_TITLE)
            elif hint in ANNOTATION_HINTS and isinstance(flag, bool):
                checked[hint] = flag
            else:
                raise _refuse(
                    f"annotations are {', '.join(ANNOTATION_HINTS)} (booleans) and title (a string)",
                    f"{where}.annotations.{hint}",
                )
        out[key] = Override(name, title, description, checked)
    return out


# --------------------------------------------------------------------------------------------
# compile


@dataclass(frozen=True, slots=True)
class CompiledSource:
    """What :func:`compile_source` makes of a document.

    Attributes:
        tools: MCP tool definitions (wire JSON), in document order.
        operations: Their bindings, same order (``operations[i].tool == tools[i]["name"]``).
        report: JSON for the admin: ``{"openapi", "tools", "renamed": [{"operation",
            "operation_id", "tool", "reason"}], "ignored_parameters": [{"operation", "name",
            "in", "reason"}], "skipped": [{"location", "construct", "reason", "count"?}]}``.
    """

    tools: list[dict[str, Any]]
    operations: list[Operation]
    report: dict[str, Any]


def tool_name(operation_id: str | None, method: str, path: str) -> tuple[str, str | None]:
    """The tool name of an operation and why it differs from the ``operationId`` (or None).

    >>> tool_name("get pet", "GET", "/pet")
    ('get_pet', 'sanitised')
    >>> tool_name(None, "GET", "/pet/{petId}")
    ('get_pet_petId', 'no operationId')
    """
    if operation_id:
        name = _NAME_BAD.sub("_", operation_id)
        reason = "sanitised" if name != operation_id else None
    else:
        name = "_".join([method.lower(), *(word for word in _WORDS.split(path) if word)])
        reason = "no operationId"
    if len(name) > MAX_TOOL_NAME:
        name = name[:MAX_TOOL_NAME]
        reason = "truncated" if reason is None else f"{reason}, truncated"
    return name, reason


@dataclass(slots=True)
class _Op:
    method: str  # upper case
    path: str
    obj: Mapping[str, Any]
    item: Mapping[str, Any]
    location: tuple[str | int, ...]
    operation_id: str | None
    tags: tuple[str, ...]

    @property
    def label(self) -> str:
        return f"{self.method} {self.path}"

    def describe(self) -> str:
        return f"{self.label} (operationId {self.operation_id})" if self.operation_id else self.label


def _deref(doc: Mapping[str, Any], obj: Any, location: tuple[str | int, ...]) -> tuple[Any, tuple[str | int, ...]]:
    """Follow a Reference Object chain (local pointers only) to the object and its location."""
    for _ in range(_HOPS):
        if not isinstance(obj, Mapping) or not isinstance(obj.get("$ref"), str):
            return obj, location
        try:
            obj, parts = resolve_pointer(doc, obj["$ref"])
        except KeyError:
            raise _refuse("this $ref points to nothing in the document", (*location, "$ref")) from None
        location = tuple(parts)
    raise _refuse(f"more than {_HOPS} references in a row (a reference cycle?)", location)


def _media_base(media_type: str) -> str:
    return media_type.split(";", 1)[0].strip().lower()


def _operations(doc: Mapping[str, Any]) -> list[_Op]:
    paths = doc.get("paths") or {}
    if not isinstance(paths, Mapping):
        raise _refuse("paths must be an object", "paths")
    ops: list[_Op] = []
    for path, raw_item in paths.items():
        item, _ = _deref(doc, raw_item, ("paths", path))
        if not isinstance(item, Mapping):
            raise _refuse("a path item must be an object", ("paths", path))
        for key, obj in item.items():
            if key not in _HTTP_METHODS:
                continue
            if not isinstance(obj, Mapping):
                raise _refuse("an operation must be an object", ("paths", path, key))
            operation_id = obj.get("operationId")
            tags = obj.get("tags")
            ops.append(
                _Op(
                    key.upper(),
                    path,
                    obj,
                    item,
                    ("paths", path, key),
                    operation_id if isinstance(operation_id, str) and operation_id else None,
                    tuple(t for t in tags if isinstance(t, str)) if isinstance(tags, list) else (),
                )
            )
    return ops


_TRACE_REASON = (
    "TRACE operations are never compiled: the API echoes a TRACE request back, headers included, "
    "so the tool would show agents the brokered credential"
)


def _select(ops: list[_Op], selection: Selection) -> tuple[list[_Op], list[dict[str, Any]]]:
    """The selected operations, and a ``skipped`` report entry for each TRACE one it would select."""
    known = {op.operation_id for op in ops}
    traced = {op.operation_id for op in ops if op.method == "TRACE"}
    for side, criteria in (("include", selection.include), ("exclude", selection.exclude)):
        for i, operation_id in enumerate(criteria.operation_ids):
            if operation_id not in known:
                raise _refuse(
                    "no operation of the document has this operationId", f"selection.{side}.operation_ids[{i}]"
                )
            if side == "include" and operation_id in traced:
                raise _refuse(_TRACE_REASON, f"selection.include.operation_ids[{i}]")
    selected: list[_Op] = []
    skipped: list[dict[str, Any]] = []
    for op in ops:
        if not selection.selects(op.operation_id, op.tags, op.path):
            continue
        if op.method == "TRACE":
            skipped.append({"location": dotted(op.location), "construct": "trace", "reason": _TRACE_REASON})
        else:
            selected.append(op)
    if not selected:
        also = f" ({len(skipped)} TRACE operations are never compiled)" if skipped else ""
        raise _refuse(f"selects none of the document's {len(ops)} operations{also}", "selection")
    if len(selected) > MAX_OPERATIONS:
        raise _refuse(
            f"selects {len(selected)} operations, more than {MAX_OPERATIONS}: exclude some (by tag, path or operationId)",
            "selection",
        )
    return selected, skipped


def _match_overrides(
    selected: list[_Op], everything: list[_Op], overrides: Mapping[str, Override]
) -> dict[int, Override]:
    by_id = {op.operation_id: i for i, op in enumerate(selected) if op.operation_id}
    by_label = {op.label: i for i, op in enumerate(selected)}
    out: dict[int, Override] = {}
    for key, override in overrides.items():
        index = by_label.get(key) if _METHOD_PATH.fullmatch(key) and key in by_label else by_id.get(key)
        if index is None:
            exists = any(key in (op.operation_id, op.label) for op in everything)
            raise _refuse(
                "names an operation that is not selected" if exists else "names no operation of the document",
                f"overrides.{key}",
            )
        if index in out:
            raise _refuse("another key already overrides this operation", f"overrides.{key}")
        out[index] = override
    return out


class _Compiler:
    def __init__(self, doc: Mapping[str, Any], version: str) -> None:
        self.doc = doc
        self.version = version
        self.request = SchemaConverter(doc, version=version, context=REQUEST)
        self.response = SchemaConverter(doc, version=version, context=RESPONSE)
        self.ignored: list[dict[str, Any]] = []
        self.skipped: list[dict[str, Any]] = []

    # -- parameters ------------------------------------------------------------------------

    def _parameter_list(
        self, owner: Mapping[str, Any], location: tuple[str | int, ...]
    ) -> list[tuple[Any, tuple[str | int, ...], str | None]]:
        raw = owner.get("parameters") or []
        if not isinstance(raw, list):
            raise _refuse("parameters must be an array", (*location, "parameters"))
        out = []
        for i, entry in enumerate(raw):
            where: tuple[str | int, ...] = (*location, "parameters", i)
            # OpenAPI 3.1: a Reference Object's description replaces the target's.
            override = entry.get("description") if isinstance(entry, Mapping) and "$ref" in entry else None
            param, at = _deref(self.doc, entry, where)
            if (
                not isinstance(param, Mapping)
                or not isinstance(param.get("name"), str)
                or param.get("in") not in LOCATIONS
            ):
                raise _refuse("a parameter needs a name and an in of path, query, header or cookie", at)
            out.append((param, at, override if isinstance(override, str) and self.version == "3.1" else None))
        return out

    def parameters(self, op: _Op) -> list[tuple[Mapping[str, Any], tuple[str | int, ...], str | None]]:
        """Path-item parameters merged with the operation's (the operation's win), in location order."""

        def key(param: Mapping[str, Any]) -> tuple[str, str]:
            name = str(param["name"])
            return param["in"], name.lower() if param["in"] == "header" else name

        own = self._parameter_list(op.obj, op.location)
        shared = self._parameter_list(op.item, op.location[:2])
        own_keys = {key(p) for p, _, _ in own}
        merged = [entry for entry in shared if key(entry[0]) not in own_keys] + own
        return sorted(merged, key=lambda entry: LOCATIONS.index(entry[0]["in"]))

    # -- one operation -----------------------------------------------------------------------

    def compile(self, op: _Op, name: str, override: Override | None) -> tuple[dict[str, Any], Operation]:
        bundle = self.request.bundle()
        properties: dict[str, Any] = {}
        required: list[str] = []
        params: list[Param] = []

        def taken(argument: str, location: str) -> bool:
            if location == "header":
                return any(a.lower() == argument.lower() for a in properties)
            return argument in properties

        for param, at, description in self.parameters(op):
            wire, location = str(param["name"]), str(param["in"])
            if location == "header" and wire.lower() in _OPENAPI_IGNORED | _TRANSPORT_HEADERS:
                reason = (
                    "OpenAPI: Accept, Content-Type and Authorization header parameters are ignored"
                    if wire.lower() in _OPENAPI_IGNORED
                    else "the gateway sets this header itself"
                )
                self.ignored.append({"operation": op.label, "name": wire, "in": location, "reason": reason})
                continue
            if location in ("header", "cookie") and not _TOKEN.fullmatch(wire):
                raise _refuse(
                    f"a {location} name must be an RFC 9110 token (letters, digits, !#$%&'*+-.^_`|~)", (*at, "name")
                )
            argument = wire
            if taken(argument, location):
                argument = f"{location}_{wire}"
                if taken(argument, location):
                    raise _refuse(
                        f"parameter {wire!r} ({location}) collides with another argument, and so does {argument!r}", at
                    )
            schema, content_type, schema_at = self._parameter_schema(param, at)
            style = param.get("style", "simple" if location in ("path", "header") else "form")
            if not isinstance(style, str) or style not in STYLES[location]:
                raise _refuse(
                    f"style {style!r} is not defined for {location} parameters (use {', '.join(sorted(STYLES[location]))})",
                    (*at, "style"),
                )
            explode = param.get("explode", style == "form")
            if not isinstance(explode, bool):
                raise _refuse("explode must be a boolean", (*at, "explode"))
            is_required = location == "path" or param.get("required") is True
            prop = bundle.convert(schema, schema_at)
            prop = dict(prop) if isinstance(prop, Mapping) else ({} if prop is True else {"not": {}})
            text = description if description is not None else param.get("description")
            if isinstance(text, str) and text:
                prop["description"] = text
            if param.get("deprecated") is True:
                prop["deprecated"] = True
            properties[argument] = prop
            if is_required:
                required.append(argument)
            params.append(
                Param(
                    argument,
                    wire,
                    location,
                    style,
                    explode,
                    is_required,
                    location == "query" and param.get("allowReserved") is True,
                    content_type,
                )
            )

        body = self._body(op, bundle, properties, required)
        root: dict[str, Any] = {"type": "object", "properties": properties}
        if required:
            root["required"] = required
        root["additionalProperties"] = False
        input_schema = bundle.finish(root, op.location, what="inputSchema")
        output, output_schema = self._output(op)

        tool: dict[str, Any] = {"name": name}
        summary = op.obj.get("summary")
        summary = summary.strip() if isinstance(summary, str) else ""
        title = override.title if override and override.title is not None else summary
        if title:
            tool["title"] = title
        description = override.description if override and override.description is not None else self._description(op)
        if description:
            tool["description"] = description
        tool["inputSchema"] = input_schema
        if output_schema is not None:
            tool["outputSchema"] = output_schema
        tool["annotations"] = {**_method_annotations(op.method), **(override.annotations if override else {})}
        return tool, Operation(name, op.operation_id, op.method, op.path, tuple(params), body, output)

    def _parameter_schema(
        self, param: Mapping[str, Any], at: tuple[str | int, ...]
    ) -> tuple[Any, str | None, tuple[str | int, ...]]:
        if "content" not in param:
            return param.get("schema", {}), None, (*at, "schema")
        content = param["content"]
        if not isinstance(content, Mapping) or len(content) != 1:
            raise _refuse("a parameter's content must name exactly one media type", (*at, "content"))
        media_type, media = next(iter(content.items()))
        if _media_base(media_type) != "application/json":
            raise _refuse(
                f"only application/json parameter content is supported, not {media_type!r}",
                (*at, "content", media_type),
            )
        schema = media.get("schema", {}) if isinstance(media, Mapping) else {}
        return schema, "application/json", (*at, "content", media_type, "schema")

    def _description(self, op: _Op) -> str:
        parts: list[str] = []
        for key in ("summary", "description"):
            text = op.obj.get(key)
            if isinstance(text, str) and text.strip() and text.strip() not in parts:
                parts.append(text.strip())
        text = "\n\n".join(parts)
        if op.obj.get("deprecated") is True:
            text = f"Deprecated. {text}".strip()
        return text if len(text) <= MAX_DESCRIPTION else text[: MAX_DESCRIPTION - 1] + "…"

    # -- request body ----------------------------------------------------------------------

    def _body(self, op: _Op, bundle: SchemaBundle, properties: dict[str, Any], required: list[str]) -> Body | None:
        if op.obj.get("requestBody") is None:
            return None
        request_body, at = _deref(self.doc, op.obj["requestBody"], (*op.location, "requestBody"))
        content = request_body.get("content") if isinstance(request_body, Mapping) else None
        if not isinstance(content, Mapping) or not content:
            raise _refuse("a request body needs content", (*op.location, "requestBody", "content"))
        chosen = _pick_body_type(content)
        if chosen is None:
            where = "" if at == (*op.location, "requestBody") else f" (in {dotted(at)})"
            raise _refuse(
                f"no request body media type the adapter can send{where}: the operation offers "
                f"{', '.join(sorted(map(str, content)))}; supported are application/json, */*+json, "
                f"{_FORM} and text/plain. Exclude the operation (selection.exclude.operation_ids) "
                "or offer one of these in the document",
                (*op.location, "requestBody", "content"),
            )
        key, media_type = chosen
        media = content[key]
        schema = media.get("schema") if isinstance(media, Mapping) else None
        schema_at = (*at, "content", key, "schema")
        is_required = request_body.get("required") is True
        text = request_body.get("description")
        description = text if isinstance(text, str) and text else None

        if media_type == "text/plain":
            converted: Any = {"type": "string"}
            if schema is not None:
                target, _ = self.request.resolve(schema, schema_at)
                if not (isinstance(target, Mapping) and target.get("type") == "string"):
                    self.skipped.append(
                        {
                            "location": dotted(schema_at),
                            "construct": "text/plain body schema",
                            "reason": "a text/plain body is sent as a string: its schema is replaced by {'type': 'string'}",
                        }
                    )
                else:
                    converted = bundle.inline(schema, schema_at)
            flatten = False
        else:
            converted = bundle.inline(schema, schema_at) if schema is not None else {}
            plain = _plain_object(converted)
            if media_type == _FORM and not (
                plain and all(_form_value(bundle, sub) for sub in converted["properties"].values())
            ):
                raise _refuse(
                    f"a {_FORM} body must be an object schema whose properties are scalars or arrays of scalars",
                    schema_at,
                )
            flatten = is_required and plain and not any(name in properties for name in converted["properties"])

        if flatten:
            names = list(converted["properties"])
            properties.update(converted["properties"])
            required.extend(name for name in converted.get("required", []) if name in converted["properties"])
            return Body(media_type, True, None, tuple(names))
        argument = next((a for a in ("body", "request_body") if a not in properties), None)
        if argument is None:
            raise _refuse("parameters named body and request_body leave no argument name for the request body", at)
        prop = dict(converted) if isinstance(converted, Mapping) else ({} if converted is True else {"not": {}})
        if description and "description" not in prop:
            prop["description"] = description
        properties[argument] = prop
        if is_required:
            required.append(argument)
        return Body(media_type, is_required, argument)

    # -- output ------------------------------------------------------------------------------

    def _output(self, op: _Op) -> tuple[Output, dict[str, Any] | None]:
        responses = op.obj.get("responses")
        if not isinstance(responses, Mapping):
            return Output(), None
        status = _success_status(responses)
        if status is None:
            return Output(), None
        response, at = _deref(self.doc, responses[status], (*op.location, "responses", status))
        shown = status.upper() if status.lower() != "default" else "default"
        content = response.get("content") if isinstance(response, Mapping) else None
        key = _json_key(content) if isinstance(content, Mapping) else None
        if key is None or content is None:
            if isinstance(content, Mapping) and content:
                self.skipped.append(
                    {
                        "location": dotted((*at, "content")),
                        "construct": "outputSchema",
                        "reason": f"the success response {shown} is not JSON: the tool has no outputSchema",
                    }
                )
            return Output(shown, False, False), None
        media = content[key]
        schema = media.get("schema") if isinstance(media, Mapping) else None
        if schema is None:
            return Output(shown, False, False), None
        bundle = self.response.bundle()
        schema_at = (*at, "content", key, "schema")
        converted = bundle.inline(schema, schema_at)
        if _object_like(bundle, converted, 0):
            root = dict(converted) if "type" in converted else {"type": "object", **converted}
            wrapped = False
        else:
            root = {"type": "object", "properties": {"result": converted}, "required": ["result"]}
            wrapped = True
        return Output(shown, wrapped, True), bundle.finish(root, op.location, what="outputSchema")


def _pick_body_type(content: Mapping[str, Any]) -> tuple[str, str] | None:
    """``(document key, media type sent)``: application/json, any +json, form, text/plain."""
    bases = [(key, _media_base(str(key))) for key in content]
    for wanted in ("application/json", "+json", _FORM, "text/plain"):
        for key, base in bases:
            if base == wanted or (wanted == "+json" and "/" in base and base.endswith("+json")):
                return key, base
    return None


def _json_key(content: Mapping[str, Any]) -> str | None:
    bases = [(key, _media_base(str(key))) for key in content]
    for key, base in bases:
        if base == "application/json":
            return key
    for key, base in bases:
        if "/" in base and base.endswith("+json"):
            return key
    return None


def _success_status(responses: Mapping[str, Any]) -> str | None:
    """The lowest explicit ``2xx`` code, else ``2XX``, else ``default`` (OpenAPI 3.1.1 section 4.8.16)."""
    codes = sorted(key for key in responses if isinstance(key, str) and re.fullmatch(r"2[0-9][0-9]", key))
    if codes:
        return codes[0]
    for key in responses:
        if isinstance(key, str) and key.upper() == "2XX":
            return key
    return "default" if "default" in responses else None


def _plain_object(schema: Any) -> bool:
    """A plain object schema: named properties only, nothing that flattening would lose."""
    return (
        isinstance(schema, Mapping)
        and schema.get("type", "object") == "object"
        and isinstance(schema.get("properties"), Mapping)
        and bool(schema["properties"])
        and not any(keyword in schema for keyword in _NOT_PLAIN)
        and schema.get("additionalProperties", False) is False
    )


def _scalar(bundle: SchemaBundle, schema: Any) -> bool:
    schema = bundle.deref(schema)
    if not isinstance(schema, Mapping):
        return False
    kind = schema.get("type")
    if isinstance(kind, str):
        return kind in _SCALARS
    if isinstance(kind, list):
        return bool(kind) and all(k in _SCALARS for k in kind)
    if isinstance(schema.get("enum"), list):
        return all(not isinstance(v, dict | list) for v in schema["enum"])
    if "const" in schema:
        return not isinstance(schema["const"], dict | list)
    options = schema.get("anyOf")
    if isinstance(options, list) and options:
        return all(_scalar(bundle, option) for option in options)
    return False


def _form_value(bundle: SchemaBundle, schema: Any) -> bool:
    """A form field: a scalar, or an array of scalars (sent as repeated keys)."""
    target = bundle.deref(schema)
    if isinstance(target, Mapping) and target.get("type") == "array":
        return _scalar(bundle, target.get("items", {}))
    return _scalar(bundle, schema)


def _object_like(bundle: SchemaBundle, schema: Any, depth: int) -> bool:
    """The schema only admits JSON objects (so it can be an ``outputSchema`` as it is)."""
    target = bundle.deref(schema)
    if not isinstance(target, Mapping) or depth > 8:
        return False
    kind = target.get("type")
    if kind is not None:
        return bool(kind == "object")
    members = target.get("allOf")
    if isinstance(members, list) and any(_object_like(bundle, m, depth + 1) for m in members):
        return True
    for keyword in ("anyOf", "oneOf"):
        options = target.get(keyword)
        if isinstance(options, list) and options and all(_object_like(bundle, o, depth + 1) for o in options):
            return True
    return any(k in target for k in ("properties", "additionalProperties", "patternProperties"))


def _method_annotations(method: str) -> dict[str, bool]:
    if method in ("GET", "HEAD", "OPTIONS"):
        return {"readOnlyHint": True}
    if method == "DELETE":
        return {"readOnlyHint": False, "destructiveHint": True, "idempotentHint": True}
    if method == "PUT":
        return {"readOnlyHint": False, "idempotentHint": True}
    return {"readOnlyHint": False}


def compile_source(
    doc: Mapping[str, Any],
    *,
    selection: Selection | None = None,
    overrides: Mapping[str, Override] | None = None,
) -> CompiledSource:
    """Compile the selected operations of a checked document into MCP tools and bindings.

    Args:
        doc: A document that passed :func:`~gateway.apiadapter.documents.check_document`.
        selection: Which operations (default: all).
        overrides: From :func:`overrides_from_body`.

    Returns:
        The tools and operations in document order, and the report.

    Raises:
        InvalidApiDocument: The selection selects nothing or more than
            :data:`~gateway.apiadapter.documents.MAX_OPERATIONS`; an override names no
            selected operation or an invalid tool name; two tools would share a name; an
            operation uses something the adapter cannot send (a request body of no supported
            media type, a parameter style the location does not define, non-JSON parameter
            content); a schema references outside ``components.schemas`` or converts to more
            than :data:`~gateway.apiadapter.schemas.MAX_SCHEMA_BYTES`; the tools and operation
            records so far pass :data:`MAX_SOURCE_BYTES` (at the operation where they do); the
            selection names a TRACE operation by ``operationId`` (TRACE operations it selects
            otherwise are skipped and reported).
    """
    openapi = doc.get("openapi")
    version = openapi[:3] if isinstance(openapi, str) else None
    if version not in ("3.0", "3.1"):
        raise _refuse("the openapi field must be a 3.0.x or 3.1.x version (check the document first)", "openapi")
    everything = _operations(doc)
    selected, traces = _select(everything, selection or Selection())
    chosen = _match_overrides(selected, everything, overrides or {})

    names: dict[str, _Op] = {}
    renamed: list[dict[str, Any]] = []
    tool_names: list[str] = []
    for i, op in enumerate(selected):
        name, reason = tool_name(op.operation_id, op.method, op.path)
        override = chosen.get(i)
        if override is not None and override.name is not None:
            name, reason = override.name, "override"
        if name in names:
            other = names[name]
            raise _refuse(
                f"operations {other.describe()} and {op.describe()} both become the tool {name!r}: rename one "
                f"(overrides.<operationId or 'METHOD /path'>.name) or exclude one (selection.exclude)",
                op.location,
            )
        names[name] = op
        tool_names.append(name)
        if reason is not None:
            renamed.append({"operation": op.label, "operation_id": op.operation_id, "tool": name, "reason": reason})

    compiler = _Compiler(doc, version)
    compiler.skipped.extend(traces)
    tools: list[dict[str, Any]] = []
    operations: list[Operation] = []
    size = 0
    for i, op in enumerate(selected):
        tool, operation = compiler.compile(op, tool_names[i], chosen.get(i))
        record = operation.to_record()
        try:
            Operation.from_record(record)
        except ValueError as exc:
            raise _refuse(str(exc), op.location) from None
        # Checked as it grows, so the worst case costs about the cap, not operations x schemas.
        size += len(orjson.dumps(tool)) + len(orjson.dumps(record))
        if size > MAX_SOURCE_BYTES:
            raise _refuse(
                f"the tools compiled up to this operation ({i + 1} of {len(selected)} selected) are more than "
                f"{MAX_SOURCE_BYTES} bytes of JSON (each tool carries the schemas it references): narrow the "
                "selection (selection.include or selection.exclude) or split the document into several API sources",
                op.location,
            )
        tools.append(tool)
        operations.append(operation)
        for owner, where, construct, reason in (
            (op.obj, op.location, "callbacks", "callbacks are not served"),
            (op.obj, op.location, "servers", "the API source's base URL is fixed at registration"),
            (op.item, op.location[:2], "servers", "the API source's base URL is fixed at registration"),
        ):
            entry = {"location": dotted((*where, construct)), "construct": construct, "reason": reason}
            if owner.get(construct) and entry not in compiler.skipped:
                compiler.skipped.append(entry)
    if isinstance(doc.get("webhooks"), Mapping) and doc["webhooks"]:
        compiler.skipped.append(
            {"location": "webhooks", "construct": "webhooks", "reason": "webhooks are requests the API sends: no tools"}
        )
    dropped: dict[str, int] = {}
    for converter in (compiler.request, compiler.response):
        for keyword, count in converter.dropped.items():
            dropped[keyword] = dropped.get(keyword, 0) + count
    for keyword in sorted(dropped):
        compiler.skipped.append(
            {
                "location": "schemas",
                "construct": keyword,
                "reason": "not a JSON Schema 2020-12 keyword MCP clients use: dropped",
                "count": dropped[keyword],
            }
        )
    report = {
        "openapi": version,
        "tools": len(tools),
        "renamed": renamed,
        "ignored_parameters": compiler.ignored,
        "skipped": compiler.skipped,
    }
    return CompiledSource(tools, operations, report)
