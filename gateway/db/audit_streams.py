"""The three audit streams: which table each is stored in and which columns its chain commits to.

A *stream* is one kind of audit record: ``decisions`` (runtime events from data planes,
``audit_decisions``), ``opa_logs`` (OPA's decision logs, ``opa_decision_logs``) and
``control_plane`` (admin requests, ``control_plane_audit``). Each is chained separately per
tenant, environment and partition (docs/audit-integrity.md).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CONTROL_PLANE", "CONTROL_PLANE_FIELDS", "DECISIONS", "EVENT_FIELDS", "OPA_LOGS", "STREAMS", "Stream"]

EVENT_FIELDS = (
    "decision_id",
    "timestamp",
    "tenant",
    "environment",
    "dataplane_id",
    "subject",
    "client_id",
    "action",
    "server",
    "tool",
    "allowed",
    "reasons",
    "policy_revision",
    "projection_version",
    "latency_ms",
    "status",
    "error_category",
    "arguments_sha256",
    "result_sha256",
    "session_id",
    "protocol_version",
)
"""The only columns a runtime audit event may fill, in insert (and canonical) order."""

OPA_LOG_FIELDS = (
    "decision_id",
    "timestamp",
    "tenant",
    "environment",
    "opa_id",
    "path",
    "revision",
    "input",
    "result",
    "erased",
    "masked",
)
"""Columns of an OPA decision-log record, in insert (and canonical) order."""

CONTROL_PLANE_FIELDS = (
    "id",
    "timestamp",
    "tenant",
    "environment",
    "request_id",
    "actor",
    "actor_issuer",
    "roles",
    "action",
    "method",
    "path",
    "decision_id",
    "allowed",
    "reasons",
    "status",
    "resource_kind",
    "resource_id",
    "comment",
    "before_sha256",
    "after_sha256",
)
"""Columns of a control-plane trail record, in insert (and canonical) order."""


@dataclass(frozen=True, slots=True)
class Stream:
    """One audit stream.

    Attributes:
        name: ``decisions``, ``opa_logs`` or ``control_plane``.
        table: The partitioned table.
        fields: The columns the chain commits to, in canonical order (all of them inserted).
        json_fields: Columns of type ``json``: the canonical form is the stored text.
        key: The columns that identify a record (duplicates by key are not stored twice).
        record_id: The column a verification report names (the decision id, or the trail's id).
    """

    name: str
    table: str
    fields: tuple[str, ...]
    json_fields: frozenset[str]
    key: tuple[str, str]
    record_id: str

    def stored_columns(self) -> str:
        """SQL select list of :attr:`fields` as stored: ``json`` columns as their exact text."""
        return ", ".join(
            f'"{f}"' if f == "timestamp" else f"{f}::text AS {f}" if f in self.json_fields else f for f in self.fields
        )


DECISIONS = Stream(
    "decisions", "audit_decisions", EVENT_FIELDS, frozenset(), ("decision_id", "timestamp"), "decision_id"
)
OPA_LOGS = Stream(
    "opa_logs",
    "opa_decision_logs",
    OPA_LOG_FIELDS,
    frozenset({"input", "result", "erased", "masked"}),
    ("decision_id", "timestamp"),
    "decision_id",
)
CONTROL_PLANE = Stream(
    "control_plane", "control_plane_audit", CONTROL_PLANE_FIELDS, frozenset(), ("id", "timestamp"), "id"
)
STREAMS = (DECISIONS, OPA_LOGS, CONTROL_PLANE)
"""Every stream, in the order verification walks them."""
