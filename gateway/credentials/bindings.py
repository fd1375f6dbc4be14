"""Which credential a call uses: bindings and the "most specific wins" rule (pure; for the data plane).

A binding maps (tenant, environment, upstream server, subject selector) to a credential.
The selector is one of:

* ``user``: the caller's JWT ``sub`` equals ``value``;
* ``client``: the caller's agent/client id (``client_id``/``azp``) equals ``value``;
* ``role``: ``value`` is one of the caller's roles;
* ``everyone``: any caller (no ``value``).

Rule: among the bindings of the call's tenant, environment and server whose selector matches
the caller, the most specific kind wins: ``user`` > ``client`` > ``role`` > ``everyone``.
Ties (only possible between ``role`` bindings, when the caller has several bound roles; the
store allows one binding per server and selector) go to the smallest ``value`` in code-point
order, then the smallest binding ``id``: the answer depends only on the set of bindings and
the caller, never on the order either is listed in.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["SPECIFICITY", "SUBJECT_KINDS", "Binding", "Subject", "select_binding"]

SPECIFICITY = {"user": 3, "client": 2, "role": 1, "everyone": 0}
"""Rank of each selector kind; the highest matching rank wins."""
SUBJECT_KINDS = tuple(SPECIFICITY)


@dataclass(frozen=True)
class Binding:
    """One binding: ``subject_value`` is None exactly when ``subject_kind`` is ``everyone``."""

    id: str
    tenant: str
    environment: str
    server: str
    subject_kind: str
    subject_value: str | None
    credential_id: str


@dataclass(frozen=True)
class Subject:
    """The caller: JWT ``sub``, its roles and its client id (None when the token names none)."""

    sub: str
    roles: frozenset[str] = frozenset()
    client_id: str | None = None


def _matches(binding: Binding, subject: Subject) -> bool:
    kind, value = binding.subject_kind, binding.subject_value
    if kind == "user":
        return value == subject.sub
    if kind == "client":
        return subject.client_id is not None and value == subject.client_id
    if kind == "role":
        return value in subject.roles
    return kind == "everyone"


def select_binding(
    bindings: Iterable[Binding], *, tenant: str, environment: str, server: str, subject: Subject
) -> Binding | None:
    """Return the binding that applies to ``subject`` calling ``server`` (module doc: the rule), or None.

    Example::

        select_binding(rows, tenant="t", environment="prod", server="github",
                       subject=Subject("alice", frozenset({"dev"}), "agent-1"))
    """
    best: tuple[int, str, str] | None = None
    chosen: Binding | None = None
    for b in bindings:
        if (b.tenant, b.environment, b.server) != (tenant, environment, server) or not _matches(b, subject):
            continue
        # Highest rank first, then the smallest value, then the smallest id.
        key = (-SPECIFICITY[b.subject_kind], b.subject_value or "", b.id)
        if best is None or key < best:
            best, chosen = key, b
    return chosen
