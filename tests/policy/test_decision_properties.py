"""Property tests of the decision contract: any JSON answer is a decision or a
PolicyDecisionInvalid, and ``allow`` is True only for exactly ``true``."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import PolicyDecisionInvalid
from gateway.policy.decision import Decision, ListDecision, parse_call_result, parse_list_result

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
"""Any JSON value."""

no_example_db = settings(database=None)
"""Keep the run hermetic: no ``.hypothesis/`` directory in the checkout."""

reason_lists = st.lists(st.text(max_size=8), max_size=4)


@st.composite
def shaped_call_bodies(draw: st.DrawFn) -> Any:
    """Bodies that look like OPA answers, each member valid, wrong or absent."""
    decision: dict[str, Any] = draw(st.dictionaries(st.text(max_size=8), json_values, max_size=3))
    for key, good in (
        ("allow", st.booleans()),
        ("reasons", reason_lists),
        ("obligations", st.dictionaries(st.text(max_size=8), json_values, max_size=3)),
    ):
        choice = draw(st.sampled_from(["good", "bad", "absent"]))
        if choice == "good":
            decision[key] = draw(good)
        elif choice == "bad":
            decision[key] = draw(json_values)
        else:
            decision.pop(key, None)
    result: dict[str, Any] = {"decision": decision if draw(st.booleans()) else draw(json_values)}
    if draw(st.booleans()):
        result["revision"] = draw(json_values)
    body: dict[str, Any] = {"result": result}
    if draw(st.booleans()):
        body["decision_id"] = draw(json_values)
    return body


@st.composite
def shaped_list_bodies(draw: st.DrawFn) -> Any:
    allowed = draw(st.lists(st.text(max_size=8), max_size=5) | json_values)
    result = {"allowed": allowed} if draw(st.booleans()) else draw(st.dictionaries(st.text(max_size=8), json_values))
    return {"result": result} if draw(st.booleans()) else {"result": draw(json_values)}


def _allow_is_exactly_true(body: Any) -> bool:
    try:
        allow = body["result"]["decision"]["allow"]
    except (KeyError, TypeError, IndexError):
        return False
    return allow is True


def _check_call(body: Any) -> None:
    try:
        decision = parse_call_result(body)
    except PolicyDecisionInvalid as exc:
        assert exc.category == "policy_decision_invalid"
        return
    assert isinstance(decision, Decision)
    assert isinstance(decision.allow, bool)
    assert decision.allow == _allow_is_exactly_true(body)
    raw = body["result"]["decision"]
    assert decision.reasons == tuple(raw["reasons"])
    assert all(isinstance(r, str) for r in decision.reasons)
    assert dict(decision.obligations) == raw["obligations"]
    assert decision.decision_id is None or isinstance(decision.decision_id, str)
    assert decision.revision is None or isinstance(decision.revision, str)


def _check_list(body: Any) -> None:
    try:
        listed = parse_list_result(body)
    except PolicyDecisionInvalid as exc:
        assert exc.category == "policy_decision_invalid"
        return
    assert isinstance(listed, ListDecision)
    given_keys = body["result"]["allowed"]
    assert isinstance(given_keys, list) and all(isinstance(k, str) for k in given_keys)
    assert listed.allowed == frozenset(given_keys)


@no_example_db
@given(json_values)
def test_parse_call_result_on_any_json_is_a_decision_or_policy_decision_invalid(body: Any) -> None:
    _check_call(body)


@no_example_db
@given(shaped_call_bodies())
def test_parse_call_result_allows_only_when_allow_is_exactly_true(body: Any) -> None:
    _check_call(body)


@no_example_db
@given(st.booleans(), reason_lists, st.dictionaries(st.text(max_size=8), json_values, max_size=3))
def test_parse_call_result_accepts_every_well_formed_decision(
    allow: bool, reasons: list[str], obligations: dict[str, Any]
) -> None:
    decision = parse_call_result(
        {"result": {"decision": {"allow": allow, "reasons": reasons, "obligations": obligations}}}
    )

    assert decision.allow is allow
    assert decision.reasons == tuple(reasons)


@no_example_db
@given(json_values)
def test_parse_list_result_on_any_json_is_a_list_decision_or_policy_decision_invalid(body: Any) -> None:
    _check_list(body)


@no_example_db
@given(shaped_list_bodies())
def test_parse_list_result_allows_exactly_the_strings_given(body: Any) -> None:
    _check_list(body)


@no_example_db
@given(st.lists(st.text(max_size=8), max_size=6))
def test_parse_list_result_accepts_every_list_of_strings(keys: list[str]) -> None:
    assert parse_list_result({"result": {"allowed": keys}}).allowed == frozenset(keys)
