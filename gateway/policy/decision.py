"""Parse OPA's answer into a decision, accepting exactly one shape (pure).

The contract (``schemas/decision_result.json``): ``data.gateway.decision`` is
``{"allow": bool, "reasons": [string], "obligations": {}}``. Anything else —
undefined, a non-boolean ``allow``, non-string reasons — is a deny with
category ``policy_decision_invalid`` (fail closed), as opa-envoy-plugin treats
an undefined or ill-shaped decision.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.errors import PolicyDecisionInvalid

__all__ = ["Decision", "ListDecision", "parse_call_result", "parse_list_result"]


@dataclass(frozen=True, slots=True)
class Decision:
    """One tool-call decision.

    Attributes:
        allow: True only when the policy said exactly ``true``.
        reasons: The policy's reason categories (safe to return and store).
        obligations: Extra instructions for the PEP (unused keys are ignored).
        decision_id: OPA's decision id (same id as its decision log).
        revision: The bundle revision (projection) that decided.
    """

    allow: bool
    reasons: tuple[str, ...]
    obligations: Mapping[str, Any] = field(default_factory=dict)
    decision_id: str | None = None
    revision: str | None = None


@dataclass(frozen=True, slots=True)
class ListDecision:
    """Discovery filter outcome: the candidate keys the caller may see."""

    allowed: frozenset[str]
    decision_id: str | None
    revision: str | None


def _revision(result: Mapping[str, Any]) -> str | None:
    rev = result.get("revision")
    return rev if isinstance(rev, str) else None


def parse_call_result(body: Any) -> Decision:
    """Parse a ``POST /v1/data/gateway_runtime/main/call`` response body.

    Args:
        body: The decoded OPA Data API response ``{"result": {...}, "decision_id"?}``.

    Raises:
        PolicyDecisionInvalid: The decision is undefined or malformed.
    """
    if not isinstance(body, Mapping) or not isinstance(body.get("result"), Mapping):
        raise PolicyDecisionInvalid("OPA returned no result for gateway_runtime.main.call")
    result = body["result"]
    decision_id = body.get("decision_id") if isinstance(body.get("decision_id"), str) else None
    raw = result.get("decision")
    if raw is None:
        raise PolicyDecisionInvalid("data.gateway.decision is undefined")
    if not isinstance(raw, Mapping):
        raise PolicyDecisionInvalid("data.gateway.decision is not an object")
    allow = raw.get("allow")
    if not isinstance(allow, bool):
        raise PolicyDecisionInvalid("data.gateway.decision.allow is missing or not a boolean")
    reasons = raw.get("reasons")  # required by the contract
    if not isinstance(reasons, list) or not all(isinstance(r, str) for r in reasons):
        raise PolicyDecisionInvalid("data.gateway.decision.reasons must be an array of strings")
    obligations = raw.get("obligations")  # required by the contract
    if not isinstance(obligations, Mapping):
        raise PolicyDecisionInvalid("data.gateway.decision.obligations must be an object")
    return Decision(allow, tuple(reasons), dict(obligations), decision_id, _revision(result))


def parse_list_result(body: Any) -> ListDecision:
    """Parse a ``POST /v1/data/gateway_runtime/main/list`` response body.

    Raises:
        PolicyDecisionInvalid: The result is missing or not ``{"allowed": [str]}``.
    """
    if not isinstance(body, Mapping) or not isinstance(body.get("result"), Mapping):
        raise PolicyDecisionInvalid("OPA returned no result for gateway_runtime.main.list")
    result = body["result"]
    allowed = result.get("allowed")
    if not isinstance(allowed, list) or not all(isinstance(k, str) for k in allowed):
        raise PolicyDecisionInvalid("gateway_runtime.main.list.allowed must be an array of strings")
    decision_id = body.get("decision_id") if isinstance(body.get("decision_id"), str) else None
    return ListDecision(frozenset(allowed), decision_id, _revision(result))
