"""Build the OPA input document for one governed request (pure, no I/O).

The shape is the decision contract in ``schemas/decision_input.json``; the
golden documents in ``rego_tests/fixtures/`` are produced by these functions
(``tests/policy/test_input_contract.py`` checks both sides).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["API_KEY_ISSUER", "CREDENTIAL_KINDS", "Candidate", "Subject", "build_discovery_input", "build_input"]

API_KEY_ISSUER = "urn:gateway:api-key"
"""``subject.issuer`` of a caller authenticated by a gateway API key (no JWT issuer names it)."""
CREDENTIAL_KINDS = ("jwt", "api_key")
"""The values of ``subject.credential_kind``."""


@dataclass(frozen=True, slots=True)
class Subject:
    """The authenticated caller: from a verified JWT (RFC 7519 / RFC 9068) or a gateway API key.

    Attributes:
        sub: ``sub`` claim (the human, or the service the token was issued for); for an API
            key, the subject the key was created for.
        issuer: ``iss`` claim; :data:`API_KEY_ISSUER` for an API key.
        roles: From the configured roles claim (default ``roles``); for an API key, its roles.
        scopes: From the configured scopes claim (default ``scope``: a space-separated string
            or a list of strings).
        client_id: ``client_id`` (else ``azp``) claim, ``None`` if absent; for an API key
            ``api_key:<key id>`` (what the runtime audit's ``client_id`` shows).
        claims: The whole verified payload (never the token itself); ``{}`` for an API key.
        groups: From the configured groups claim (default ``groups``), a string list.
        agent: The agent (OAuth client) acting: ``azp`` (else ``client_id``) claim, ``None``
            if neither; for an API key, the same as ``client_id``.
        delegation: The RFC 8693 §4.1 ``act`` chain, outermost (the current actor) first:
            each ``{"sub", "iss"?, "client_id"?}``; ``()`` when the token has no ``act``.
        credential_kind: What authenticated the caller: ``jwt`` or ``api_key``.
        key_id: The API key's id (never the key), ``None`` for a JWT.
        token: The verified token itself: only for an ``oauth_token_exchange`` credential
            (RFC 8693 ``subject_token``, sent to the control plane's broker, never upstream);
            never in the policy input, a ``repr`` or a comparison. ``""`` for an API key.
    """

    sub: str
    issuer: str
    roles: tuple[str, ...] = ()
    scopes: tuple[str, ...] = ()
    client_id: str | None = None
    claims: Mapping[str, Any] = field(default_factory=dict)
    token: str = field(default="", repr=False, compare=False)
    groups: tuple[str, ...] = ()
    agent: str | None = None
    delegation: tuple[Mapping[str, str], ...] = ()
    credential_kind: str = "jwt"
    key_id: str | None = None

    def as_input(self) -> dict[str, Any]:
        """The ``subject`` member of the input document (``schemas/decision_input.json``)."""
        return {
            "sub": self.sub,
            "issuer": self.issuer,
            "roles": list(self.roles),
            "scopes": list(self.scopes),
            "client_id": self.client_id,
            "claims": dict(self.claims),
            "groups": list(self.groups),
            "agent": self.agent,
            "delegation": [dict(actor) for actor in self.delegation],
            "credential_kind": self.credential_kind,
            "key_id": self.key_id,
        }


@dataclass(frozen=True, slots=True)
class Candidate:
    """One item offered to discovery; ``key`` is the name (or URI) the client will see.

    Exactly one of ``tool`` (with ``annotations``), ``resource_uri`` or ``prompt`` is set:
    a ``tools/list`` candidate is a tool, a ``resources/list`` or
    ``resources/templates/list`` candidate a resource (for templates the URI is the
    RFC 6570 ``uriTemplate``), a ``prompts/list`` candidate a prompt.
    """

    key: str
    server: str
    transport: str
    tool: str | None = None
    annotations: Mapping[str, Any] = field(default_factory=dict)
    resource_uri: str | None = None
    prompt: str | None = None

    def as_input(self) -> dict[str, Any]:
        """The candidate's member of ``candidates`` (``schemas/discovery_input.json``)."""
        doc: dict[str, Any] = {"key": self.key, "server": {"name": self.server, "transport": self.transport}}
        if self.tool is not None:
            doc["tool"] = {"name": self.tool, "annotations": dict(self.annotations)}
        if self.resource_uri is not None:
            doc["resource"] = {"uri": self.resource_uri, "server": self.server}
        if self.prompt is not None:
            doc["prompt"] = {"name": self.prompt, "arguments": {}}
        return doc


def build_input(
    *,
    tenant: str,
    environment: str,
    action: str,
    subject: Subject,
    server: str | None,
    transport: str | None,
    tool: str | None = None,
    annotations: Mapping[str, Any] | None = None,
    arguments: Mapping[str, Any] | None = None,
    session_id: str | None,
    protocol_version: str,
    projection_version: int,
    resource_uri: str | None = None,
    prompt: str | None = None,
    prompt_arguments: Mapping[str, Any] | None = None,
    needs_credential: bool = False,
    credential: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Build the ``data.gateway.decision`` input for one request.

    Args:
        action: The MCP method, e.g. ``tools/call``, ``resources/read``, ``prompts/get``,
            ``completion/complete`` or ``logging/setLevel``.
        server: The upstream server; ``None`` only for a request that concerns every
            server of the endpoint (``logging/setLevel`` on the aggregated ``/mcp``).
        transport: The server's transport (ignored when ``server`` is ``None``).
        tool: The tool's original name (``tools/*``); omitted from the input when ``None``.
        annotations: The tool's MCP annotations.
        arguments: The request's arguments: tool arguments of ``tools/call``, the
            argument values of ``completion/complete``, ``{"level"}`` of
            ``logging/setLevel``; ``{}`` otherwise. Erased from decision logs.
        resource_uri: The original (un-namespaced) resource URI, or URI template, the
            request concerns; sets ``resource: {"uri", "server"}``.
        prompt: The prompt's original name; sets ``prompt: {"name", "arguments"}``.
        prompt_arguments: The prompt arguments (erased from decision logs).
        needs_credential: The server has credential bindings: the input gets ``credential``,
            the metadata of the binding that applies (``credential``), or null.
        credential: ``{"binding", "subject_kind", "id", "kind"}``, never a secret
            (:func:`gateway.dataplane.credentials.credential_input`).

    Returns:
        A JSON-ready dict with ``tenant``, ``environment``, ``action``,
        ``subject``, ``arguments``, ``session`` and ``projection``, plus ``server``,
        ``tool``, ``resource``, ``prompt`` and ``credential`` when they apply
        (schema: ``schemas/decision_input.json``).
    """
    doc: dict[str, Any] = {
        "tenant": tenant,
        "environment": environment,
        "action": action,
        "subject": subject.as_input(),
    }
    if server is not None:
        doc["server"] = {"name": server, "transport": transport}
    if tool is not None:
        doc["tool"] = {"name": tool, "annotations": dict(annotations or {})}
    if resource_uri is not None and server is not None:
        doc["resource"] = {"uri": resource_uri, "server": server}
    if prompt is not None:
        doc["prompt"] = {"name": prompt, "arguments": dict(prompt_arguments or {})}
    if needs_credential:
        doc["credential"] = dict(credential) if credential is not None else None
    doc["arguments"] = dict(arguments or {})
    doc["session"] = {"id": session_id, "protocol_version": protocol_version}
    doc["projection"] = {"version": projection_version}
    return doc


def build_discovery_input(
    *,
    tenant: str,
    environment: str,
    subject: Subject,
    candidates: Sequence[Candidate],
    session_id: str | None,
    protocol_version: str,
    projection_version: int,
    action: str = "tools/list",
) -> dict[str, Any]:
    """Build the input of the one-query-per-list discovery filter.

    The reserved rule ``data.gateway_runtime.main.list`` evaluates
    ``data.gateway.decision`` once per candidate, with ``action`` (``tools/list``,
    ``resources/list``, ``resources/templates/list`` or ``prompts/list``) and the
    candidate's ``server`` and ``tool``/``resource``/``prompt`` merged into the input
    (schema: ``schemas/discovery_input.json``).
    """
    return {
        "tenant": tenant,
        "environment": environment,
        "action": action,
        "subject": subject.as_input(),
        "arguments": {},
        "session": {"id": session_id, "protocol_version": protocol_version},
        "projection": {"version": projection_version},
        "candidates": [c.as_input() for c in candidates],
    }
