"""Tests for gateway.policy.decision: OPA answers -> Decision / ListDecision, fail closed."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.errors import PolicyDecisionInvalid
from gateway.policy.decision import Decision, ListDecision, parse_call_result, parse_list_result

VALID = {"allow": True, "reasons": ["granted_by_role_viewer"], "obligations": {}}


def _body(decision: Any, **extra: Any) -> dict[str, Any]:
    return {"result": {"revision": "p3-pv2", "decision": decision}, **extra}


def _without(key: str) -> dict[str, Any]:
    return {k: v for k, v in VALID.items() if k != key}


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({}, id="result-missing"),
        pytest.param({"result": None}, id="result-null"),
        pytest.param({"result": []}, id="result-array"),
        pytest.param({"result": "allow"}, id="result-string"),
        pytest.param(None, id="body-null"),
        pytest.param([], id="body-array"),
        pytest.param("x", id="body-string"),
        pytest.param(True, id="body-true"),
        pytest.param({"result": {"revision": "p3"}}, id="decision-undefined"),
        pytest.param(_body(None), id="decision-null"),
        pytest.param(_body(True), id="decision-true"),
        pytest.param(_body([VALID]), id="decision-array"),
        pytest.param(_body("allow"), id="decision-string"),
        pytest.param(_body(_without("allow")), id="allow-missing"),
        pytest.param(_body({**VALID, "allow": "true"}), id="allow-string-true"),
        pytest.param(_body({**VALID, "allow": 1}), id="allow-one"),
        pytest.param(_body({**VALID, "allow": 0}), id="allow-zero"),
        pytest.param(_body({**VALID, "allow": None}), id="allow-null"),
        pytest.param(_body({**VALID, "allow": [True]}), id="allow-array"),
        pytest.param(_body({**VALID, "allow": {"x": True}}), id="allow-object"),
        pytest.param(_body(_without("reasons")), id="reasons-missing"),
        pytest.param(_body({**VALID, "reasons": "granted"}), id="reasons-string"),
        pytest.param(_body({**VALID, "reasons": None}), id="reasons-null"),
        pytest.param(_body({**VALID, "reasons": {"a": "b"}}), id="reasons-object"),
        pytest.param(_body({**VALID, "reasons": ["ok", 1]}), id="reasons-with-number"),
        pytest.param(_body({**VALID, "reasons": [None]}), id="reasons-with-null"),
        pytest.param(_body({**VALID, "reasons": [["nested"]]}), id="reasons-with-array"),
        pytest.param(_body(_without("obligations")), id="obligations-missing"),
        pytest.param(_body({**VALID, "obligations": []}), id="obligations-array"),
        pytest.param(_body({**VALID, "obligations": None}), id="obligations-null"),
        pytest.param(_body({**VALID, "obligations": "none"}), id="obligations-string"),
    ],
)
def test_parse_call_result_rejects_malformed_decisions(body: Any) -> None:
    with pytest.raises(PolicyDecisionInvalid) as exc_info:
        parse_call_result(body)

    assert exc_info.value.category == "policy_decision_invalid"


@pytest.mark.parametrize(
    ("decision", "expected"),
    [
        pytest.param(VALID, Decision(True, ("granted_by_role_viewer",), {}), id="allow"),
        pytest.param(
            {"allow": False, "reasons": ["tool_not_read_only", "no_recognised_role"], "obligations": {}},
            Decision(False, ("tool_not_read_only", "no_recognised_role"), {}),
            id="deny-with-reasons",
        ),
        pytest.param(
            {"allow": False, "reasons": [], "obligations": {"redact": ["x"]}},
            Decision(False, (), {"redact": ["x"]}),
            id="deny-with-obligations",
        ),
        pytest.param(
            {**VALID, "extra": "ignored"}, Decision(True, ("granted_by_role_viewer",), {}), id="unknown-key-ignored"
        ),
    ],
)
def test_parse_call_result_parses_well_formed_decisions(decision: dict[str, Any], expected: Decision) -> None:
    parsed = parse_call_result(_body(decision))

    assert (parsed.allow, parsed.reasons, dict(parsed.obligations)) == (
        expected.allow,
        expected.reasons,
        dict(expected.obligations),
    )
    assert parsed.revision == "p3-pv2"


def test_parse_call_result_keeps_decision_id_and_revision() -> None:
    parsed = parse_call_result(_body(VALID, decision_id="d-123"))

    assert parsed.decision_id == "d-123"
    assert parsed.revision == "p3-pv2"


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"result": {"decision": VALID}}, id="both-absent"),
        pytest.param({"result": {"decision": VALID, "revision": 3}, "decision_id": 42}, id="both-not-strings"),
    ],
)
def test_parse_call_result_drops_missing_or_non_string_ids(body: dict[str, Any]) -> None:
    parsed = parse_call_result(body)

    assert (parsed.decision_id, parsed.revision) == (None, None)
    assert parsed.allow is True


def test_parse_call_result_copies_obligations() -> None:
    obligations: dict[str, Any] = {"k": 1}
    parsed = parse_call_result(_body({**VALID, "obligations": obligations}))
    obligations["k"] = 2

    assert parsed.obligations == {"k": 1}


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({}, id="result-missing"),
        pytest.param(None, id="body-null"),
        pytest.param([], id="body-array"),
        pytest.param({"result": None}, id="result-null"),
        pytest.param({"result": ["a"]}, id="result-array"),
        pytest.param({"result": {}}, id="allowed-missing"),
        pytest.param({"result": {"allowed": None}}, id="allowed-null"),
        pytest.param({"result": {"allowed": "a"}}, id="allowed-string"),
        pytest.param({"result": {"allowed": {"a": True}}}, id="allowed-object"),
        pytest.param({"result": {"allowed": ["a", 1]}}, id="allowed-with-number"),
        pytest.param({"result": {"allowed": [None]}}, id="allowed-with-null"),
    ],
)
def test_parse_list_result_rejects_malformed_results(body: Any) -> None:
    with pytest.raises(PolicyDecisionInvalid) as exc_info:
        parse_list_result(body)

    assert exc_info.value.category == "policy_decision_invalid"


@pytest.mark.parametrize(
    ("allowed", "expected"),
    [
        pytest.param([], frozenset(), id="empty"),
        pytest.param(["demo__a", "demo__b"], frozenset({"demo__a", "demo__b"}), id="two"),
        pytest.param(["demo__a", "demo__a"], frozenset({"demo__a"}), id="duplicates"),
    ],
)
def test_parse_list_result_returns_the_allowed_keys(allowed: list[str], expected: frozenset[str]) -> None:
    parsed = parse_list_result({"result": {"revision": "p3-pv2", "allowed": allowed}, "decision_id": "d-1"})

    assert parsed == ListDecision(expected, "d-1", "p3-pv2")


def test_parse_list_result_drops_non_string_ids() -> None:
    parsed = parse_list_result({"result": {"allowed": ["a"], "revision": None}, "decision_id": 7})

    assert parsed == ListDecision(frozenset({"a"}), None, None)
