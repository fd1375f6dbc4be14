"""Schema regular expressions run in linear time (gateway/regexsafe.py), on the data plane's real
argument validators: a catastrophic-backtracking pattern answers at once, with the same verdicts
Python's ``re`` gives on inputs it can handle."""

from __future__ import annotations

import re
import time

import pytest
from jsonschema import Draft202012Validator

from gateway.dataplane.projection import _validator
from gateway.regexsafe import linear_time, search, uses_backtracking

EVIL = "^(a+)+$"
"""Exponential in the input's length for a backtracking engine: 26 characters took 7 s with ``re``."""
HOSTILE = "a" * 24 + "!"
"""Long enough that ``re`` needs about a second (so the timing checks fail without RE2), short
enough that a broken build fails quickly instead of hanging."""


def _errors(schema: dict, value: object) -> list[str]:
    return [e.message for e in _validator(schema).iter_errors(value)]


def test_a_catastrophic_pattern_answers_at_once_in_the_argument_validator() -> None:
    schema = {"type": "object", "properties": {"name": {"type": "string", "pattern": EVIL}}}
    started = time.perf_counter()
    errors = _errors(schema, {"name": HOSTILE})
    elapsed = time.perf_counter() - started
    assert errors == [f"{HOSTILE!r} does not match {EVIL!r}"]
    assert elapsed < 0.2, elapsed  # re: about 1.2 s here, doubling with each further "a"
    assert _errors(schema, {"name": "aaaa"}) == []


def test_pattern_properties_and_additional_properties_use_it_too() -> None:
    schema = {
        "type": "object",
        "properties": {"fixed": {"type": "integer"}},
        "patternProperties": {EVIL: {"type": "integer"}},
        "additionalProperties": False,
    }
    started = time.perf_counter()
    errors = _errors(schema, {HOSTILE: 1, "aaa": "not an integer", "fixed": 2})
    assert time.perf_counter() - started < 0.2
    assert sorted(errors) == sorted(
        [
            f"{HOSTILE!r} does not match any of the regexes: {EVIL!r}",
            "'not an integer' is not of type 'integer'",
        ]
    )
    closed = {"type": "object", "properties": {"a": {}}}  # closed by the gateway: extras refused
    assert _errors(closed, {"a": 1, "b": 2}) == ["Additional properties are not allowed ('b' was unexpected)"]


@pytest.mark.parametrize(
    ("pattern", "text"),
    [
        ("^[a-z]+$", "abc"),
        ("^[a-z]+$", "abC"),
        (r"\d{3}-\d{4}", "call 555-1234"),
        ("^(?:foo|bar)baz", "barbaz"),
        ("colou?r", "The color"),
        (r"^\S+@\S+$", "a@b"),
        ("", "anything"),
    ],
)
def test_verdicts_are_those_of_re_on_ordinary_patterns(pattern: str, text: str) -> None:
    assert search(pattern, text) is (re.search(pattern, text) is not None)
    assert not uses_backtracking(pattern)


def test_a_pattern_re2_refuses_keeps_its_meaning_with_re() -> None:
    lookahead = r"^(?=.*\d)[a-z\d]+$"
    assert uses_backtracking(lookahead)
    assert search(lookahead, "abc1") and not search(lookahead, "abc")


def test_the_class_is_extended_once() -> None:
    assert linear_time(Draft202012Validator) is linear_time(Draft202012Validator)
