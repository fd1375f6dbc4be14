"""What one adapter tool means on the wire: the binding of an MCP tool to an OpenAPI operation.

The control plane compiles each selected operation of an API source into an MCP tool
definition (what agents list) and an :class:`Operation` (what the data plane sends); both are
pinned at approval and travel in the routing table, never in the OPA bundle's tool list. The
records are plain JSON (:meth:`Operation.to_record` / :meth:`Operation.from_record`), so the
routing table stays JSON and a record that does not parse is refused whole, never half-applied.

Parameter serialisation follows OpenAPI 3.1.1 section 4.8.12.4 ("Style Values") and 4.8.12.5
("Style Examples"); the same rules hold in 3.0.3.

Routing-table shape of an API source (``transport: "openapi"``)::

    {"name": "petstore", "transport": "openapi", "url": "<base URL>", "tools": [<wire tool>, ...],
     "api": {"base_url": "https://api.example.com/v1", "internal": false,
             "follow_redirects": false, "timeout": null, "max_response_bytes": 4194304,
             "operations": [<Operation record>, ...]}}
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import orjson

__all__ = [
    "API_META",
    "BODY_TYPES",
    "DEFAULT_MAX_RESPONSE_BYTES",
    "LOCATIONS",
    "METHODS",
    "STYLES",
    "ApiSource",
    "Body",
    "Operation",
    "Output",
    "Param",
]

METHODS = ("GET", "PUT", "POST", "DELETE", "OPTIONS", "HEAD", "PATCH", "TRACE")
"""The HTTP methods an OpenAPI Path Item names (``get`` ... ``trace``), upper-case."""
LOCATIONS = ("path", "query", "header", "cookie")
"""Parameter locations (OpenAPI ``in``), in the order arguments are merged into ``inputSchema``."""
STYLES: Mapping[str, frozenset[str]] = {
    "path": frozenset({"simple", "label", "matrix"}),
    "query": frozenset({"form", "spaceDelimited", "pipeDelimited", "deepObject"}),
    "header": frozenset({"simple"}),
    "cookie": frozenset({"form"}),
}
"""The styles supported per location: every style OpenAPI defines for it."""
BODY_TYPES = ("application/json", "application/x-www-form-urlencoded", "text/plain")
"""Request body media types the adapter can send (plus any ``+json`` type, sent as JSON)."""
API_META = "mcp-opa-gateway/http"
"""The ``_meta`` key of every adapter tool result: ``{"status": <HTTP status or null>,
"category": <safe category or null>}`` (the data plane audits a tool error with that category)."""
DEFAULT_MAX_RESPONSE_BYTES = 4 * 1024 * 1024
"""Largest response body read from an API (bytes) unless the source says otherwise."""


def _malformed(what: str) -> ValueError:
    return ValueError(f"malformed operation binding: {what}")


@dataclass(frozen=True, slots=True)
class Param:
    """One OpenAPI parameter of an operation.

    Attributes:
        argument: Its key in the tool's ``arguments`` (the parameter's name, or
            ``<in>_<name>`` when an earlier location already uses the name).
        name: Its name on the wire: the ``{placeholder}`` of the path template, the query key,
            the header name or the cookie name.
        location: ``path``, ``query``, ``header`` or ``cookie``.
        style: The OpenAPI ``style`` (default per location: ``simple`` for path and header,
            ``form`` for query and cookie); one of :data:`STYLES` for the location.
        explode: The OpenAPI ``explode`` (default true for ``form``, false otherwise).
        required: The parameter must be given (path parameters always are).
        allow_reserved: Query only: RFC 3986 reserved characters are sent unencoded.
        content_type: A parameter described by ``content`` instead of ``schema``: its media
            type (``application/json``); the value is sent as its JSON text.
    """

    argument: str
    name: str
    location: str
    style: str
    explode: bool
    required: bool
    allow_reserved: bool = False
    content_type: str | None = None

    def to_record(self) -> dict[str, Any]:
        return {
            "argument": self.argument,
            "name": self.name,
            "in": self.location,
            "style": self.style,
            "explode": self.explode,
            "required": self.required,
            "allow_reserved": self.allow_reserved,
            "content_type": self.content_type,
        }

    @classmethod
    def from_record(cls, rec: Any) -> Param:
        """Raises: ValueError: ``rec`` is not a parameter record this version understands."""
        if not isinstance(rec, Mapping):
            raise _malformed("parameter is not an object")
        location = rec.get("in")
        if location not in LOCATIONS or rec.get("style") not in STYLES[location]:
            raise _malformed(f"parameter location/style {location!r}/{rec.get('style')!r}")
        for key in ("argument", "name"):
            if not isinstance(rec.get(key), str) or not rec[key]:
                raise _malformed(f"parameter {key}")
        for key in ("explode", "required", "allow_reserved"):
            if not isinstance(rec.get(key, False), bool):
                raise _malformed(f"parameter {key}")
        content_type = rec.get("content_type")
        if content_type is not None and not isinstance(content_type, str):
            raise _malformed("parameter content_type")
        return cls(
            rec["argument"],
            rec["name"],
            location,
            rec["style"],
            bool(rec.get("explode", False)),
            bool(rec.get("required", False)),
            bool(rec.get("allow_reserved", False)),
            content_type,
        )


@dataclass(frozen=True, slots=True)
class Body:
    """An operation's request body.

    Attributes:
        content_type: The media type sent: one of :data:`BODY_TYPES` or a ``+json`` type.
        required: The body must be given.
        argument: The argument holding the whole body (``"body"``), or None when the body's
            object properties are the tool's own top-level arguments (flattened).
        properties: Flattened only: the argument keys that make up the body object.
    """

    content_type: str
    required: bool
    argument: str | None
    properties: tuple[str, ...] = ()

    def to_record(self) -> dict[str, Any]:
        return {
            "content_type": self.content_type,
            "required": self.required,
            "argument": self.argument,
            "properties": list(self.properties),
        }

    @classmethod
    def from_record(cls, rec: Any) -> Body:
        """Raises: ValueError: ``rec`` is not a body record this version understands."""
        if not isinstance(rec, Mapping):
            raise _malformed("body is not an object")
        content_type = rec.get("content_type")
        if not isinstance(content_type, str) or not (content_type in BODY_TYPES or content_type.endswith("+json")):
            raise _malformed(f"body content_type {content_type!r}")
        argument = rec.get("argument")
        properties = rec.get("properties", [])
        if argument is not None and (not isinstance(argument, str) or not argument):
            raise _malformed("body argument")
        if not isinstance(properties, list) or not all(isinstance(p, str) for p in properties):
            raise _malformed("body properties")
        if (argument is None) != bool(properties):
            raise _malformed("a body is either one argument or flattened properties, not both or neither")
        if not isinstance(rec.get("required", False), bool):
            raise _malformed("body required")
        return cls(content_type, bool(rec.get("required", False)), argument, tuple(properties))


@dataclass(frozen=True, slots=True)
class Output:
    """How a successful response becomes the tool result's ``structuredContent``.

    Attributes:
        status: The response code the ``outputSchema`` was derived from (``"200"``,
            ``"2XX"``, ``"default"``), or None when the operation documents no JSON success.
        wrapped: The documented JSON is not an object: ``structuredContent`` is
            ``{"result": <json>}`` and ``outputSchema`` wraps the documented schema the same way.
        schema: The tool has an ``outputSchema``: a JSON body that does not match it is a tool
            error (MCP 2025-11-25 ``server/tools`` "Output Schema": results MUST conform).
    """

    status: str | None = None
    wrapped: bool = False
    schema: bool = False

    def to_record(self) -> dict[str, Any]:
        return {"status": self.status, "wrapped": self.wrapped, "schema": self.schema}

    @classmethod
    def from_record(cls, rec: Any) -> Output:
        """Raises: ValueError: ``rec`` is not an output record this version understands."""
        if not isinstance(rec, Mapping):
            raise _malformed("output is not an object")
        status = rec.get("status")
        if status is not None and not isinstance(status, str):
            raise _malformed("output status")
        if not isinstance(rec.get("wrapped", False), bool) or not isinstance(rec.get("schema", False), bool):
            raise _malformed("output flags")
        return cls(status, bool(rec.get("wrapped", False)), bool(rec.get("schema", False)))


@dataclass(frozen=True, slots=True)
class Operation:
    """One selected OpenAPI operation, bound to the MCP tool named :attr:`tool`.

    Attributes:
        tool: The tool's name (sanitised ``operationId``, or the registration's override).
        operation_id: The document's ``operationId`` (None when it has none).
        method: Upper-case HTTP method (:data:`METHODS`).
        path: The path template as the document writes it (``/pet/{petId}``), appended to
            the source's base URL path.
        parameters: Path, query, header and cookie parameters (path-item level ones merged in,
            operation level wins), in document order within :data:`LOCATIONS` order.
        body: The request body, or None.
        output: How the success response maps to ``structuredContent``.
    """

    tool: str
    operation_id: str | None
    method: str
    path: str
    parameters: tuple[Param, ...] = ()
    body: Body | None = None
    output: Output = field(default_factory=Output)

    def to_record(self) -> dict[str, Any]:
        """The JSON record stored at approval and sent in the routing table."""
        return {
            "tool": self.tool,
            "operation_id": self.operation_id,
            "method": self.method,
            "path": self.path,
            "parameters": [p.to_record() for p in self.parameters],
            "body": self.body.to_record() if self.body is not None else None,
            "output": self.output.to_record(),
        }

    @classmethod
    def from_record(cls, rec: Any) -> Operation:
        """Parse a record of :meth:`to_record`.

        Raises:
            ValueError: Anything malformed: an unknown method, location or style, a path
                that does not start with ``/``, a path placeholder without a path parameter.
        """
        if not isinstance(rec, Mapping):
            raise _malformed("operation is not an object")
        tool, method, path = rec.get("tool"), rec.get("method"), rec.get("path")
        if not isinstance(tool, str) or not tool:
            raise _malformed("tool")
        if method not in METHODS:
            raise _malformed(f"method {method!r}")
        if not isinstance(path, str) or not path.startswith("/"):
            raise _malformed("path")
        operation_id = rec.get("operation_id")
        if operation_id is not None and not isinstance(operation_id, str):
            raise _malformed("operation_id")
        raw_params = rec.get("parameters", [])
        if not isinstance(raw_params, list):
            raise _malformed("parameters")
        params = tuple(Param.from_record(p) for p in raw_params)
        body = Body.from_record(rec["body"]) if rec.get("body") is not None else None
        op = cls(tool, operation_id, method, path, params, body, Output.from_record(rec.get("output", {})))
        path_names = {p.name for p in params if p.location == "path"}
        if set(op.placeholders()) != path_names:
            raise _malformed(f"path {path!r} and its path parameters disagree")
        return op

    def placeholders(self) -> list[str]:
        """The ``{name}`` placeholders of :attr:`path`, in order."""
        out: list[str] = []
        rest = self.path
        while (start := rest.find("{")) >= 0:
            end = rest.find("}", start)
            if end < 0:
                break
            out.append(rest[start + 1 : end])
            rest = rest[end + 1 :]
        return out


@dataclass(frozen=True, slots=True)
class ApiSource:
    """One approved API source as a data plane serves it.

    Attributes:
        name: The source's name (its tools are ``<name>__<tool>`` on ``/mcp``).
        base_url: Fixed at registration: scheme, host, port and path prefix of every request.
        internal: Approved as internal: loopback, link-local and private addresses may be
            reached (:mod:`gateway.apiadapter.guard`); otherwise they are refused.
        operations: By tool name.
        output_schemas: Each tool's ``outputSchema`` by tool name (only tools that have one).
        follow_redirects: Same-origin redirects are followed (at most 5); off by default.
        timeout: Seconds one call may take, or None for the data plane's upstream timeout.
        max_response_bytes: Largest response body read.
    """

    name: str
    base_url: str
    internal: bool
    operations: Mapping[str, Operation]
    output_schemas: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    follow_redirects: bool = False
    timeout: float | None = None
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES

    @classmethod
    def from_record(cls, name: str, api: Any, tools: Any) -> ApiSource:
        """Build from a routing-table server entry's ``api`` member and its ``tools``.

        Raises:
            ValueError: A malformed record (the source is then not served, never half-served).
        """
        if not isinstance(api, Mapping):
            raise ValueError("an openapi server has no api member")
        base_url = api.get("base_url")
        if not isinstance(base_url, str):
            raise ValueError("api.base_url is missing")
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
            raise ValueError("api.base_url must be an absolute http(s) URL without query or fragment")
        if parts.username is not None or parts.password is not None:
            raise ValueError("api.base_url must not carry credentials")
        for key in ("internal", "follow_redirects"):
            if not isinstance(api.get(key, False), bool):
                raise ValueError(f"api.{key} must be a boolean")
        timeout = api.get("timeout")
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0):
            raise ValueError("api.timeout must be a positive number or null")
        cap = api.get("max_response_bytes", DEFAULT_MAX_RESPONSE_BYTES)
        if isinstance(cap, bool) or not isinstance(cap, int) or cap <= 0:
            raise ValueError("api.max_response_bytes must be a positive integer")
        raw_ops = api.get("operations")
        if not isinstance(raw_ops, list):
            raise ValueError("api.operations must be a list")
        operations: dict[str, Operation] = {}
        for rec in raw_ops:
            op = Operation.from_record(rec)
            if op.tool in operations:
                raise ValueError(f"two operations are bound to tool {op.tool!r}")
            operations[op.tool] = op
        schemas: dict[str, Mapping[str, Any]] = {}
        for wire in tools if isinstance(tools, list) else []:
            if isinstance(wire, Mapping) and isinstance(wire.get("outputSchema"), Mapping):
                schemas[str(wire.get("name"))] = wire["outputSchema"]
        return cls(
            name,
            base_url.rstrip("/"),
            bool(api.get("internal", False)),
            operations,
            schemas,
            bool(api.get("follow_redirects", False)),
            float(timeout) if timeout is not None else None,
            cap,
        )

    def address(self) -> str:
        """A stable identity of what this source sends: ``openapi:<sha256>`` of its canonical record.

        The data plane keys its clients by it: a source whose base URL, options or operations
        change in a new projection gets a new client (and the old one's connections close).
        """
        canonical = orjson.dumps(
            {
                "base_url": self.base_url,
                "internal": self.internal,
                "follow_redirects": self.follow_redirects,
                "timeout": self.timeout,
                "max_response_bytes": self.max_response_bytes,
                "operations": [self.operations[k].to_record() for k in sorted(self.operations)],
                "output_schemas": {k: self.output_schemas[k] for k in sorted(self.output_schemas)},
            },
            option=orjson.OPT_SORT_KEYS,
        )
        return f"openapi:{hashlib.sha256(canonical).hexdigest()}"
