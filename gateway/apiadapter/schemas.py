"""OpenAPI Schema Objects turned into JSON Schema 2020-12, the dialect of MCP tool schemas.

MCP 2025-11-25 ``server/tools`` ("Tool", "Output Schema"): ``inputSchema`` and
``outputSchema`` are JSON Schema objects, 2020-12 unless they say otherwise. An OpenAPI 3.1
Schema Object already is 2020-12 (OpenAPI 3.1.1 section 4.8.24); a 3.0 one is an extended
subset of draft-04/05 (OpenAPI 3.0.3 section 4.7.24) and needs rewriting.

The walk knows which keywords hold schemas (``properties``, ``patternProperties``,
``$defs``, ``dependentSchemas`` values; ``items``, ``additionalProperties``,
``unevaluated*``, ``not``, ``if``/``then``/``else``, ``contains``, ``propertyNames``,
``contentSchema``; ``allOf``/``anyOf``/``oneOf``/``prefixItems`` members) and copies every
other keyword's value verbatim, so data (``enum``, ``const``, ``default``, ``examples``) is
never rewritten. What it does:

* 3.0 only: ``nullable: true`` adds ``"null"`` to ``type`` (and ``null`` to ``enum``); with
  no ``type`` the schema becomes ``{"anyOf": [<schema>, {"type": "null"}]}``; boolean
  ``exclusiveMinimum``/``exclusiveMaximum`` become the numeric form; the siblings of a
  ``$ref`` are dropped (section 4.7.23: they SHALL be ignored).
* both: ``example``, ``discriminator``, ``xml``, ``externalDocs``, ``$schema`` and ``x-*``
  are dropped (counted in :attr:`SchemaConverter.dropped`).
* the request context drops properties marked ``readOnly: true`` (and their ``required``
  entries), the response context those marked ``writeOnly: true`` (3.0.3 section 4.7.24.1,
  3.1.1 section 4.8.24.3 via JSON Schema Validation section 9.4).
* ``#/components/schemas/<Name>[/...]`` becomes ``#/$defs/<Name>[/...]`` and the named
  components are gathered, converted in the same context, into the tool schema's ``$defs``;
  recursive schemas stay references. A schema ``$ref`` to anywhere else is refused.

Refusals are :class:`~gateway.errors.InvalidApiDocument` naming the location.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote, unquote

import orjson

from gateway.apiadapter.documents import MAX_DEPTH, dotted, resolve_pointer
from gateway.errors import InvalidApiDocument

__all__ = ["MAX_SCHEMA_BYTES", "REQUEST", "RESPONSE", "SchemaBundle", "SchemaConverter"]

MAX_SCHEMA_BYTES = 256 * 1024
"""Largest tool ``inputSchema`` or ``outputSchema`` (bytes of compact JSON, ``$defs`` included)."""
REQUEST = "request"
"""Context of schemas an agent fills in (parameters, request bodies): ``readOnly`` properties go."""
RESPONSE = "response"
"""Context of schemas an API answers with: ``writeOnly`` properties go."""

_ONE = frozenset(
    (
        "items additionalProperties unevaluatedItems unevaluatedProperties not "
        "if then else contains propertyNames contentSchema"
    ).split()
)
_MAP = frozenset({"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"})
_LIST = frozenset({"allOf", "anyOf", "oneOf", "prefixItems"})
_DROPPED = frozenset({"example", "discriminator", "xml", "externalDocs", "$schema"})
_UNSUPPORTED = frozenset({"$id", "$anchor", "$dynamicRef", "$dynamicAnchor"})
# Siblings of a 3.1 $ref that do not change what it validates: a top-level reference with only
# these next to it may be inlined.
_ANNOTATIONS = frozenset({"description", "title", "summary", "examples", "example", "deprecated", "$comment"})
_COMPONENTS = ("components", "schemas")
_HOPS = 32

Location = Sequence[str | int]


def _refuse(message: str, location: Location) -> InvalidApiDocument:
    return InvalidApiDocument(message, location=dotted(location))


def _tokens(ref: str) -> list[str] | None:
    """The decoded reference tokens of a local JSON pointer reference, or None."""
    if not ref.startswith("#/"):
        return None
    return [t.replace("~1", "/").replace("~0", "~") for t in unquote(ref[2:]).split("/")]


def _pointer(tokens: Sequence[str]) -> str:
    """``#/<tokens>`` escaped per RFC 6901 and percent-encoded as a URI fragment (RFC 3986 3.5)."""
    return "#/" + "/".join(quote(t.replace("~", "~0").replace("/", "~1"), safe="!$&'()*+,;=:@") for t in tokens)


class _Refs:
    """The components one schema references (ordered) and its references below a component."""

    __slots__ = ("names", "subrefs")

    def __init__(self) -> None:
        self.names: dict[str, None] = {}
        self.subrefs: list[tuple[str, tuple[str | int, ...]]] = []


class SchemaConverter:
    """Converts one document's schemas for one context; converted components are memoised.

    Make one per compiled document and context (:data:`REQUEST` or :data:`RESPONSE`), and one
    :class:`SchemaBundle` from it per tool schema.

    Attributes:
        dropped: How often each dropped keyword (``discriminator``, ``x-foo``, ``$ref
            siblings``) was met, components counted once.
    """

    def __init__(self, doc: Mapping[str, Any], *, version: str, context: str) -> None:
        """``version`` is ``"3.0"`` or ``"3.1"`` (:func:`~gateway.apiadapter.documents.check_document`)."""
        if version not in ("3.0", "3.1") or context not in (REQUEST, RESPONSE):
            raise ValueError(f"version {version!r} / context {context!r}")
        self._doc = doc
        self._v30 = version == "3.0"
        self._hide = "readOnly" if context == REQUEST else "writeOnly"
        self._memo: dict[str, tuple[Any, _Refs]] = {}
        self.dropped: dict[str, int] = {}
        components = doc.get("components")
        schemas = components.get("schemas") if isinstance(components, Mapping) else None
        self._components: Mapping[str, Any] = schemas if isinstance(schemas, Mapping) else {}

    def bundle(self) -> SchemaBundle:
        """A new tool schema (its own ``$defs``)."""
        return SchemaBundle(self)

    # -- references ------------------------------------------------------------------------

    def _component_name(self, ref: str, location: Location) -> tuple[str, list[str]]:
        tokens = _tokens(ref)
        if tokens is None or len(tokens) < 3 or tuple(tokens[:2]) != _COMPONENTS:
            raise _refuse(
                "a schema may only reference #/components/schemas/<Name>[/...]; this $ref points elsewhere", location
            )
        if tokens[2] not in self._components:
            raise _refuse("this $ref points to no schema in components.schemas", location)
        return tokens[2], tokens[3:]

    def _ref(self, ref: str, location: Location, refs: _Refs) -> str:
        name, rest = self._component_name(ref, location)
        refs.names.setdefault(name, None)
        pointer = _pointer(["$defs", name, *rest])
        if rest:
            refs.subrefs.append((pointer, tuple(location)))
        return pointer

    def resolve(self, schema: Any, location: Location) -> tuple[Any, tuple[str | int, ...]]:
        """Follow a top-level ``$ref`` chain (``{"$ref": ...}`` alone, or in 3.1 with only
        annotations beside it) to the document schema it names, and that schema's location.

        Raises:
            InvalidApiDocument: A reference outside ``components.schemas``, or a cycle.
        """
        where = tuple(location)
        for _ in range(_HOPS):
            if not isinstance(schema, Mapping) or not isinstance(schema.get("$ref"), str):
                return schema, where
            if not self._v30 and not set(schema) - {"$ref"} <= _ANNOTATIONS:
                return schema, where
            self._component_name(schema["$ref"], (*where, "$ref"))
            try:
                schema, parts = resolve_pointer(self._doc, schema["$ref"])
            except KeyError:
                raise _refuse("this $ref points to nothing in the document", (*where, "$ref")) from None
            where = tuple(parts)
        raise _refuse(f"more than {_HOPS} references in a row (a reference cycle?)", where)

    def _hidden(self, schema: Any) -> bool:
        """The property is ``readOnly`` (request) or ``writeOnly`` (response), here or where it points."""
        for _ in range(_HOPS):
            if not isinstance(schema, Mapping):
                return False
            if schema.get(self._hide) is True:
                return True
            ref = schema.get("$ref")
            if not isinstance(ref, str):
                return False
            try:
                schema, _ = resolve_pointer(self._doc, ref)
            except KeyError:
                return False
        return False

    def _component(self, name: str) -> tuple[Any, _Refs]:
        """``components.schemas.<name>`` converted (memoised) and what it references."""
        memo = self._memo.get(name)
        if memo is None:
            refs = _Refs()
            converted = self._convert(self._components[name], (*_COMPONENTS, name), refs, 1)
            memo = self._memo[name] = (converted, refs)
        return memo

    # -- the walk --------------------------------------------------------------------------

    def _drop(self, keyword: str) -> None:
        self.dropped[keyword] = self.dropped.get(keyword, 0) + 1

    def _convert(self, schema: Any, location: tuple[str | int, ...], refs: _Refs, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise _refuse(f"schemas nest more than {MAX_DEPTH} deep", location)
        if isinstance(schema, bool):
            return schema
        if not isinstance(schema, Mapping):
            raise _refuse("a schema must be an object" + ("" if self._v30 else " or a boolean"), location)
        out: dict[str, Any] = {}
        ref = schema.get("$ref")
        if ref is not None:
            if not isinstance(ref, str):
                raise _refuse("$ref must be a string", (*location, "$ref"))
            out["$ref"] = self._ref(ref, (*location, "$ref"), refs)
            if self._v30:
                if len(schema) > 1:
                    self._drop("$ref siblings")
                return out
        hidden: set[str] = set()
        for key, value in schema.items():
            if key == "$ref":
                continue
            if key in _DROPPED or key.startswith("x-"):
                self._drop(key)
            elif key in _UNSUPPORTED:
                raise _refuse(f"{key} is not supported in schemas (it changes how $ref resolves)", (*location, key))
            elif self._v30 and key in ("nullable", "exclusiveMinimum", "exclusiveMaximum") and isinstance(value, bool):
                continue  # rewritten below
            elif key in _ONE:
                out[key] = self._convert(value, (*location, key), refs, depth + 1)
            elif key in _MAP:
                if not isinstance(value, Mapping):
                    raise _refuse(f"{key} must be an object of schemas", (*location, key))
                members: dict[str, Any] = {}
                for name, sub in value.items():
                    if key == "properties" and self._hidden(sub):
                        hidden.add(name)
                        continue
                    members[name] = self._convert(sub, (*location, key, name), refs, depth + 1)
                out[key] = members
            elif key in _LIST:
                if not isinstance(value, list):
                    raise _refuse(f"{key} must be an array of schemas", (*location, key))
                out[key] = [self._convert(sub, (*location, key, i), refs, depth + 1) for i, sub in enumerate(value)]
            else:
                out[key] = value  # data or an annotation: verbatim (SchemaBundle.finish copies)
        if hidden and isinstance(out.get("required"), list):
            out["required"] = [name for name in out["required"] if name not in hidden]
        return self._from_30(schema, out) if self._v30 else out

    @staticmethod
    def _from_30(schema: Mapping[str, Any], out: dict[str, Any]) -> dict[str, Any]:
        """OpenAPI 3.0 ``exclusiveMinimum``/``exclusiveMaximum`` booleans and ``nullable``."""
        for exclusive, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
            if schema.get(exclusive) is True and bound in out:
                out[exclusive] = out.pop(bound)
        if schema.get("nullable") is not True:
            return out
        kind = out.get("type")
        if isinstance(kind, str):
            out["type"] = kind if kind == "null" else [kind, "null"]
        elif isinstance(kind, list):
            if "null" not in kind:
                out["type"] = [*kind, "null"]
        else:
            return {"anyOf": [out, {"type": "null"}]}
        if isinstance(out.get("enum"), list) and None not in out["enum"]:
            out["enum"] = [*out["enum"], None]
        return out


class SchemaBundle:
    """One tool schema under construction: converted parts plus the components they reference."""

    def __init__(self, converter: SchemaConverter) -> None:
        self._converter = converter
        self._refs = _Refs()

    def convert(self, schema: Any, location: Location) -> Any:
        """``schema`` (found at ``location``) as JSON Schema 2020-12; references stay ``$ref``."""
        return self._converter._convert(schema, tuple(location), self._refs, 1)

    def inline(self, schema: Any, location: Location) -> Any:
        """Like :meth:`convert`, but a top-level ``$ref`` is replaced by what it names."""
        target, where = self._converter.resolve(schema, location)
        return self.convert(target, where)

    def deref(self, converted: Any) -> Any:
        """A converted schema with its top-level ``#/$defs/...`` reference followed (read only);
        None when it points to nothing."""
        for _ in range(_HOPS):
            if not isinstance(converted, Mapping) or not isinstance(converted.get("$ref"), str):
                return converted
            tokens = _tokens(converted["$ref"])
            if not tokens or tokens[0] != "$defs" or len(tokens) < 2 or tokens[1] not in self._converter._components:
                return None
            node = self._converter._component(tokens[1])[0]
            for token in tokens[2:]:
                if isinstance(node, Mapping) and token in node:
                    node = node[token]
                elif isinstance(node, list) and token.isdigit() and int(token) < len(node):
                    node = node[int(token)]
                else:
                    return None
            converted = node
        return None

    def finish(self, root: Mapping[str, Any], location: Location, *, what: str = "inputSchema") -> dict[str, Any]:
        """``root`` with the ``$defs`` it needs (sorted by name), as a fresh JSON copy.

        Raises:
            InvalidApiDocument: A ``$ref`` into a component points to nothing after conversion
                (at that ``$ref``), or the result is more than :data:`MAX_SCHEMA_BYTES` (at
                ``location``).
        """
        defs: dict[str, Any] = {}
        queue = list(self._refs.names)
        subrefs = list(self._refs.subrefs)
        while queue:
            name = queue.pop(0)
            if name in defs:
                continue
            converted, refs = self._converter._component(name)
            defs[name] = converted
            queue.extend(n for n in refs.names if n not in defs)
            subrefs.extend(refs.subrefs)
        out = dict(root)
        if defs:
            out["$defs"] = {name: defs[name] for name in sorted(defs)}
        for pointer, where in subrefs:
            try:
                resolve_pointer(out, pointer)
            except KeyError:
                raise _refuse(
                    "this $ref points into a schema where nothing is left after conversion to JSON Schema",
                    where,
                ) from None
        data = orjson.dumps(out)
        if len(data) > MAX_SCHEMA_BYTES:
            raise _refuse(
                f"the tool's {what} would be {len(data)} bytes of JSON, more than {MAX_SCHEMA_BYTES}", location
            )
        copied: dict[str, Any] = orjson.loads(data)
        return copied
