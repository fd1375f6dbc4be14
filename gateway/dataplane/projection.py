"""The data plane's view of the active projection, and its sync loop.

The control plane compiles approved servers, their pinned tool definitions and
the active policy version into a versioned projection. The data plane
long-polls ``GET /v1/dataplane/projection`` (ETag ``"p<N>"``, ``Prefer:
wait=<s>``), swaps in the new routing table atomically and reports the version
it activated on its next poll, so ``GET /v1/projection`` shows each data
plane's active version. Tool argument validators are compiled once per tool
definition hash and reused across projections.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
import jsonschema
import orjson
from jsonschema.exceptions import SchemaError
from referencing import Registry, Resource
from referencing.exceptions import NoSuchResource

from gateway.apiadapter.binding import ApiSource
from gateway.apiadapter.upstream import ApiPool
from gateway.config import Config
from gateway.dataplane.api_keys import ApiKeyEntry, compile_api_keys
from gateway.dataplane.credentials import BindingRef, CredentialBroker, CredentialRef
from gateway.mcp.pinning import definition_sha256
from gateway.mcp.stdio import StdioLaunch
from gateway.mcp.upstream import UpstreamAddress, UpstreamPool
from gateway.regexsafe import linear_time

__all__ = ["ActiveProjection", "ProjectionSync", "PromptEntry", "ServerEntry", "ToolEntry", "compile_projection"]

log = logging.getLogger("gateway.projection")

SEPARATOR = "__"
"""Aggregated tool and prompt names are ``<server>__<name>``."""


@dataclass(frozen=True, slots=True)
class ToolEntry:
    """One approved tool: its pinned wire definition and compiled validator."""

    server: str
    name: str
    wire: Mapping[str, Any]
    annotations: Mapping[str, Any]
    validator: Any
    sha256: str


@dataclass(frozen=True, slots=True)
class PromptEntry:
    """One approved prompt: its pinned wire definition and declared arguments.

    Attributes:
        arguments: Every declared argument name.
        required: The names of the arguments declared ``required: true``.
    """

    server: str
    name: str
    wire: Mapping[str, Any]
    arguments: frozenset[str]
    required: frozenset[str]
    sha256: str


@dataclass(frozen=True, slots=True)
class ServerEntry:
    """One approved upstream server and its tools by original name.

    For ``stdio`` servers ``url`` is the launch's address (``stdio:<sha256>``, see
    :meth:`StdioLaunch.address`) and ``launch`` is what the data plane runs.
    """

    name: str
    transport: str
    url: str
    tools: Mapping[str, ToolEntry]
    launch: StdioLaunch | None = None
    prompts: Mapping[str, PromptEntry] = field(default_factory=dict)
    """Approved prompts by original name."""
    capabilities: Mapping[str, Any] = field(default_factory=dict)
    """The capabilities the server declared at approval (``{"resources": {...}, "prompts": {...}, ...}``)."""
    bindings: tuple[BindingRef, ...] = ()
    """Its credential bindings (:mod:`gateway.dataplane.credentials`)."""
    requires_credential: bool = False
    """Every request to it needs a credential (registered so, or bound once): with no binding
    for the caller it is refused, never sent unauthenticated."""
    api: ApiSource | None = None
    """An API source (``transport`` ``openapi``, :mod:`gateway.apiadapter`): what its tools send.
    ``url`` is then :meth:`ApiSource.address`."""

    def offers(self, capability: str) -> bool:
        """True when the server declared ``capability`` (``resources``, ``prompts``, ``completions``, ``logging``)."""
        return isinstance(self.capabilities.get(capability), Mapping)

    @property
    def address(self) -> UpstreamAddress:
        """Where the upstream pool reaches this server."""
        return UpstreamAddress(self.transport, self.url, self.launch)


@dataclass(frozen=True, slots=True)
class ActiveProjection:
    """An immutable routing table; swapped whole on every activation."""

    version: int
    policy_version: int | None
    revision: str
    servers: Mapping[str, ServerEntry]
    aggregated: Mapping[str, ToolEntry] = field(default_factory=dict)
    aggregated_prompts: Mapping[str, PromptEntry] = field(default_factory=dict)
    api_keys: Mapping[str, ApiKeyEntry] = field(default_factory=dict)
    """Live API keys by id (hashes and metadata, never a key: :mod:`gateway.dataplane.api_keys`)."""

    def resolve(self, server: str | None, tool_name: str) -> ToolEntry | None:
        """Find a tool by aggregated name (``server`` None) or by original name."""
        if server is None:
            return self.aggregated.get(tool_name)
        entry = self.servers.get(server)
        return entry.tools.get(tool_name) if entry else None

    def resolve_prompt(self, server: str | None, prompt_name: str) -> PromptEntry | None:
        """Find a prompt by aggregated name (``server`` None) or by original name."""
        if server is None:
            return self.aggregated_prompts.get(prompt_name)
        entry = self.servers.get(server)
        return entry.prompts.get(prompt_name) if entry else None


def _refuse_retrieval(uri: str) -> Resource[Any]:
    raise NoSuchResource(ref=uri)  # type: ignore[call-arg]


_NO_REMOTE_REFS: Registry[Any] = Registry(retrieve=_refuse_retrieval)  # type: ignore[call-arg]
"""A registry that never fetches: jsonschema's default would ``urlopen`` a remote ``$ref``
(blocking, no timeout) at validation time. MCP 2026-07-28 basic/index "JSON Schema Usage":
implementations MUST NOT auto-dereference network ``$ref``s."""


def _external_refs(schema: Any) -> list[str]:
    """Every ``$ref`` in ``schema`` that does not point inside the document (``#...``)."""
    found: list[str] = []
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, Mapping):
            ref = node.get("$ref")
            if isinstance(ref, str) and not ref.startswith("#"):
                found.append(ref)
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return found


_OPEN_KEYWORDS = frozenset(
    {"additionalProperties", "patternProperties", "unevaluatedProperties", "propertyNames"}
    | {"allOf", "anyOf", "oneOf", "not", "if", "then", "else", "$ref", "$dynamicRef", "dependentSchemas"}
)
"""Top-level keywords that make an ``inputSchema`` decide on extra keys itself (see :func:`closed_schema`)."""


def closed_schema(schema: Mapping[str, Any]) -> Mapping[str, Any]:
    """The schema the gateway validates arguments with: the argument rule.

    A pinned ``inputSchema`` that is a plain object schema (none of :data:`_OPEN_KEYWORDS`
    at its top level) is validated as if it said ``"additionalProperties": false``: an
    argument key not named in ``properties`` is refused. JSON Schema's default
    (``additionalProperties`` absent = any extra key allowed) would let an upstream that
    changed a tool after approval receive arguments the reviewer never saw. A schema that
    says ``additionalProperties`` (``true`` or a schema), or decides extra keys through
    ``patternProperties``, ``unevaluatedProperties``, ``propertyNames``, composition
    (``allOf``/``anyOf``/``oneOf``/``not``/``if``) or ``$ref``, is applied exactly as pinned.
    Nested object schemas are applied as pinned. The listed ``inputSchema`` is never rewritten.
    """
    if _OPEN_KEYWORDS & schema.keys():
        return schema
    return {**schema, "additionalProperties": False}


def _validator(schema: Any) -> Any:
    if schema is None:  # nothing pinned (a record from before inputSchema was required): any object
        return jsonschema.Draft202012Validator({"type": "object"}, registry=_NO_REMOTE_REFS)
    if not isinstance(schema, Mapping):  # e.g. `false` must not become a permissive schema
        raise SchemaError("inputSchema must be a JSON object")
    if refs := _external_refs(schema):
        raise SchemaError(f"inputSchema references external schemas {refs[:3]}; they are never fetched")
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    cls.check_schema(schema)
    # The schema's regular expressions run on agent-chosen strings: RE2, linear time (gateway.regexsafe).
    safe = linear_time(cls)
    return safe(closed_schema(schema), format_checker=cls.FORMAT_CHECKER, registry=_NO_REMOTE_REFS)


def compile_projection(table: Mapping[str, Any], cache: dict[str, Any] | None = None) -> ActiveProjection:
    """Build an :class:`ActiveProjection` from the control plane's routing table.

    Args:
        table: ``{"version", "policy_version", "revision", "servers": [{"name",
            "transport", "url", "tools": [<wire tool>], ...}]}``; a ``stdio`` server
            has ``url: null`` and ``command``, ``args``, ``cwd``, ``env``, ``trusted``; an
            API source (``transport: "openapi"``) has ``api`` (:mod:`gateway.apiadapter.binding`).
            ``api_keys`` (optional): the live API keys (:func:`~gateway.dataplane.api_keys.compile_api_keys`).
        cache: Validators by tool hash, reused across projections.

    Tools whose ``inputSchema`` is not a valid JSON Schema, or references an
    external schema (never fetched), are left out (logged): they could never be
    called safely. A ``stdio`` server not marked ``trusted`` at approval, or whose
    launch is malformed, is left out whole (logged): it is never started. An API source whose
    ``api`` record is malformed is left out whole (logged), never half-served. A server's
    ``prompts`` and ``capabilities`` are optional (``[]``/``{}``: a server approved
    before they were recorded); a prompt with malformed ``arguments`` is left out (logged).
    """
    cache = {} if cache is None else cache
    servers: dict[str, ServerEntry] = {}
    aggregated: dict[str, ToolEntry] = {}
    aggregated_prompts: dict[str, PromptEntry] = {}
    for srv in table.get("servers", []):
        if srv["name"] in servers:  # a malformed table: the first record of a name wins
            log.error("server %s is listed twice; the second record is not served", srv["name"])
            continue
        launch: StdioLaunch | None = None
        url = srv.get("url")
        if srv["transport"] == "stdio":
            try:
                if srv.get("trusted") is not True:
                    raise ValueError("not approved as trusted")
                launch = StdioLaunch.from_record(srv)
            except ValueError as exc:
                log.error("stdio server %s is not served: %s", srv["name"], exc)
                continue
            url = launch.address()
        api: ApiSource | None = None
        if srv["transport"] == "openapi":
            try:
                api = ApiSource.from_record(srv["name"], srv.get("api"), srv.get("tools", []))
            except ValueError as exc:
                log.error("API source %s is not served: %s", srv["name"], exc)
                continue
            url = api.address()
        tools: dict[str, ToolEntry] = {}
        for wire in srv.get("tools", []):
            digest = wire.get("sha256") or definition_sha256(wire)  # the pin the drift check compares
            wire = {k: v for k, v in wire.items() if k != "sha256"}
            try:
                validator = cache.get(digest) or _validator(wire.get("inputSchema"))
            except Exception as exc:  # one unusable tool must not block the whole projection
                log.error(
                    "server %s tool %s has an unusable inputSchema (%s); not served",
                    srv["name"],
                    wire.get("name"),
                    type(exc).__name__,
                )
                continue
            cache[digest] = validator
            if api is not None and wire.get("name") not in api.operations:
                log.error("API source %s tool %s is bound to no operation; not served", srv["name"], wire.get("name"))
                continue
            entry = ToolEntry(srv["name"], wire["name"], wire, wire.get("annotations") or {}, validator, digest)
            key = f"{srv['name']}{SEPARATOR}{entry.name}"
            if key in aggregated:  # server names hold no "__" and end alphanumeric, so only a malformed table
                log.error("aggregated tool name %s is taken by server %s; not served", key, aggregated[key].server)
                continue
            tools[entry.name] = entry
            aggregated[key] = entry
        prompts = _prompts(srv)
        bindings = _bindings(srv)
        for prompt in prompts.values():
            aggregated_prompts[f"{srv['name']}{SEPARATOR}{prompt.name}"] = prompt
        servers[srv["name"]] = ServerEntry(
            srv["name"],
            srv["transport"],
            str(url),
            tools,
            launch,
            prompts,
            dict(srv.get("capabilities") or {}),
            bindings,
            srv.get("requires_credential") is True or bool(bindings),
            api,
        )
    return ActiveProjection(
        version=int(table["version"]),
        policy_version=table.get("policy_version"),
        revision=str(table.get("revision", "")),
        servers=servers,
        aggregated=aggregated,
        aggregated_prompts=aggregated_prompts,
        api_keys=compile_api_keys(table.get("api_keys")),
    )


def _bindings(srv: Mapping[str, Any]) -> tuple[BindingRef, ...]:
    """The server's credential bindings. A malformed one still makes the server need a
    credential (logged): it is kept as a binding no caller matches."""
    out = []
    for record in srv.get("credentials") or []:
        try:
            out.append(BindingRef.from_record(record))
        except ValueError as exc:
            log.error("server %s has a malformed credential binding (%s); it matches no caller", srv["name"], exc)
            out.append(BindingRef("malformed", "none", None, CredentialRef("malformed", "none", "none")))
    return tuple(out)


def _prompts(srv: Mapping[str, Any]) -> dict[str, PromptEntry]:
    """The server's pinned prompts by name; a prompt whose ``arguments`` are malformed is left out (logged)."""
    out: dict[str, PromptEntry] = {}
    for wire in srv.get("prompts") or []:
        digest = wire.get("sha256") or definition_sha256(wire)
        wire = {k: v for k, v in wire.items() if k != "sha256"}
        declared = wire.get("arguments") or []
        if not isinstance(declared, list) or not all(
            isinstance(a, Mapping) and isinstance(a.get("name"), str) for a in declared
        ):
            log.error("server %s prompt %s has malformed arguments; not served", srv["name"], wire.get("name"))
            continue
        names = frozenset(a["name"] for a in declared)
        required = frozenset(a["name"] for a in declared if a.get("required") is True)
        out[wire["name"]] = PromptEntry(srv["name"], wire["name"], wire, names, required, digest)
    return out


class ProjectionSync:
    """Long-poll the control plane and keep :attr:`current` up to date.

    Args:
        config: Gateway configuration (control-plane URL, internal token, data-plane id).
        http: Shared client for control-plane calls.
        upstreams: Pool whose sessions are retained across activations.
        broker: The credential cache to trim on each activation (revoked, unbound and
            rotated credentials are dropped, with the upstream sessions opened with them).
        apis: The API sources' clients (:class:`~gateway.apiadapter.upstream.ApiPool`), kept
            in step with each activation.
    """

    def __init__(
        self,
        config: Config,
        http: httpx.AsyncClient,
        upstreams: UpstreamPool,
        broker: CredentialBroker | None = None,
        apis: ApiPool | None = None,
    ) -> None:
        self._config = config
        self._http = http
        self._upstreams = upstreams
        self._broker = broker
        self._apis = apis
        self._validators: dict[str, Any] = {}
        self.current: ActiveProjection | None = None
        self.ready = anyio.Event()
        self._error: str | None = None
        self._opa_instance: str | None = None
        self._poll_scope: anyio.CancelScope | None = None

    def opa_started(self, instance_id: str) -> None:
        """Report a (re)started OPA sidecar at once: the held long poll is re-sent carrying it.

        The control plane registers the instance (``state: starting``, no active version)
        when it receives the poll, so its rollout view never shows a version active
        while this data plane's OPA has not activated it.
        """
        self._opa_instance = instance_id
        if self._poll_scope is not None:
            self._poll_scope.cancel()

    async def poll_once(self, wait: float) -> bool:
        """One long-poll round; returns True when a new projection was activated."""
        cp = self._config.control_plane
        active = self.current.version if self.current else 0
        params = {"dataplane_id": self._config.data_plane.id, "active_version": str(active)}
        if self._error:
            params["error"] = self._error
        if self._opa_instance:
            params["opa_instance"] = self._opa_instance
        headers = {"authorization": f"Bearer {cp.internal_token.reveal()}", "prefer": f"wait={int(wait)}"}
        if self.current:
            headers["if-none-match"] = f'"p{self.current.version}"'
        # Only the request is interruptible (opa_started): activation below is never cut short.
        with anyio.CancelScope() as scope:
            self._poll_scope = scope
            resp = await self._http.get(
                f"{cp.url}/v1/dataplane/projection", params=params, headers=headers, timeout=wait + 10
            )
        self._poll_scope = None
        if scope.cancelled_caught:
            return False
        if resp.status_code == 304:
            return False
        resp.raise_for_status()
        table = orjson.loads(resp.content)
        projection = compile_projection(table, self._validators)
        await self._upstreams.retain({s.name: s.address for s in projection.servers.values() if s.api is None})
        if self._apis is not None:
            await self._apis.retain({s.name: s.api for s in projection.servers.values() if s.api is not None})
        self.current = projection
        # Then what the new projection no longer names (revoked, unbound, rotated) goes: its
        # cached material, and its upstream sessions (closed in the background).
        refs = {b.credential for s in projection.servers.values() for b in s.bindings}
        if self._broker is not None:
            self._broker.retain(refs)
        live = {f"{r.id}@{r.version}" for r in refs}
        self._upstreams.forget_credentials(lambda key: key.split("/", 1)[0] in live)
        self._error = None
        self.ready.set()
        log.info("activated projection %s (revision %s)", projection.version, projection.revision)
        return True

    async def run(self) -> None:
        """Poll forever (until cancelled), backing off on errors."""
        backoff = 0.2
        while True:
            try:
                await self.poll_once(self._config.control_plane.long_poll_timeout)
                backoff = 0.2
            except (httpx.HTTPError, orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                self._error = "projection_sync_failed"
                log.warning("projection sync failed: %s; retrying in %.1fs", type(exc).__name__, backoff)
                await anyio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
