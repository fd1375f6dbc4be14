"""Build the OPA input document for one governed request (pure, no I/O).

The shape is the decision contract in ``schemas/decision_input.json``; the
golden documents in ``rego_tests/fixtures/`` are produced by these functions
(``tests/policy/test_input_contract.py`` checks both sides).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Candidate", "Subject", "build_discovery_input", "build_input"]


@dataclass(frozen=True, slots=True)
class Subject:
    """The authenticated caller, from a verified JWT (RFC 7519 / RFC 9068).

    Attributes:
        sub: ``sub`` claim.
        issuer: ``iss`` claim.
        roles: From the configured roles claim (default ``roles``).
        scopes: From the space-separated ``scope`` claim.
        client_id: ``client_id`` (or ``azp``) claim, ``None`` if absent.
        claims: The whole verified payload (never the token itself).
    """

    sub: str
    issuer: str
    roles: tuple[str, ...] = ()
    scopes: tuple[str, ...] = ()
    client_id: str | None = None
    claims: Mapping[str, Any] = field(default_factory=dict)

    def as_input(self) -> dict[str, Any]:
        """The ``subject`` member of the input document."""
        return {
            "sub": self.sub,
            "issuer": self.issuer,
            "roles": list(self.roles),
            "scopes": list(self.scopes),
            "client_id": self.client_id,
            "claims": dict(self.claims),
        }


@dataclass(frozen=True, slots=True)
class Candidate:
    """One tool offered to discovery: ``key`` is the name the client will see."""

    key: str
    server: str
    transport: str
    tool: str
    annotations: Mapping[str, Any]


def build_input(
    *,
    tenant: str,
    environment: str,
    action: str,
    subject: Subject,
    server: str,
    transport: str,
    tool: str,
    annotations: Mapping[str, Any] | None,
    arguments: Mapping[str, Any] | None,
    session_id: str | None,
    protocol_version: str,
    projection_version: int,
) -> dict[str, Any]:
    """Build the ``data.gateway.decision`` input for one request.

    Returns:
        A JSON-ready dict with ``tenant``, ``environment``, ``action``,
        ``subject``, ``server``, ``tool``, ``arguments``, ``session`` and
        ``projection`` (schema: ``schemas/decision_input.json``).
    """
    return {
        "tenant": tenant,
        "environment": environment,
        "action": action,
        "subject": subject.as_input(),
        "server": {"name": server, "transport": transport},
        "tool": {"name": tool, "annotations": dict(annotations or {})},
        "arguments": dict(arguments or {}),
        "session": {"id": session_id, "protocol_version": protocol_version},
        "projection": {"version": projection_version},
    }


def build_discovery_input(
    *,
    tenant: str,
    environment: str,
    subject: Subject,
    candidates: Sequence[Candidate],
    session_id: str | None,
    protocol_version: str,
    projection_version: int,
) -> dict[str, Any]:
    """Build the input of the one-query-per-list discovery filter.

    The reserved rule ``data.gateway_runtime.main.list`` evaluates
    ``data.gateway.decision`` once per candidate with ``action: tools/list``
    (schema: ``schemas/discovery_input.json``).
    """
    return {
        "tenant": tenant,
        "environment": environment,
        "action": "tools/list",
        "subject": subject.as_input(),
        "arguments": {},
        "session": {"id": session_id, "protocol_version": protocol_version},
        "projection": {"version": projection_version},
        "candidates": [
            {
                "key": c.key,
                "server": {"name": c.server, "transport": c.transport},
                "tool": {"name": c.tool, "annotations": dict(c.annotations)},
            }
            for c in candidates
        ],
    }
