"""Tests for gateway.errors: one hierarchy, a safe category on every class."""

from __future__ import annotations

import re

import pytest

import gateway.errors as errors
from gateway.errors import GatewayError, InvalidArguments, PolicyDenied, PolicyRejected

CLASSES = [getattr(errors, name) for name in errors.__all__]
SNAKE_CASE = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")
TREE_LINE = re.compile(r"^(?P<indent>[ |+]*)(?P<name>[A-Z]\w+)\s+(?P<category>[a-z_]+)\s+(?P<status>\d{3})\s*$")


def _docstring_tree() -> list[tuple[int, str, str, int]]:
    """(depth, class name, category, status) for every row of the docstring tree."""
    doc = errors.__doc__ or ""
    block = doc.split("::", 1)[1]
    rows = []
    for line in block.splitlines():
        if not line.strip():
            if rows:
                break
            continue
        match = TREE_LINE.match(line.removeprefix("    "))
        assert match, f"unparseable tree line: {line!r}"
        depth = len(match["indent"]) // 3 + (1 if match["indent"] else 0)
        rows.append((depth, match["name"], match["category"], int(match["status"])))
    return rows


def test_every_exported_name_is_a_gateway_error_class() -> None:
    for cls in CLASSES:
        assert isinstance(cls, type) and issubclass(cls, GatewayError), cls


@pytest.mark.parametrize("cls", [pytest.param(c, id=c.__name__) for c in CLASSES])
def test_every_class_has_a_snake_case_category_and_an_int_status_code(cls: type[GatewayError]) -> None:
    assert SNAKE_CASE.match(cls.category)
    assert type(cls.status_code) is int and 400 <= cls.status_code <= 599


def test_categories_are_distinct() -> None:
    categories = [cls.category for cls in CLASSES]

    assert len(set(categories)) == len(categories)


def test_every_class_defines_its_own_category() -> None:
    for cls in CLASSES:
        assert "category" in vars(cls), f"{cls.__name__} inherits its category"


def test_docstring_tree_lists_every_class_with_its_category_and_status() -> None:
    tree = {name: (category, status) for _, name, category, status in _docstring_tree()}

    assert set(tree) == set(errors.__all__)
    for cls in CLASSES:
        assert tree[cls.__name__] == (cls.category, cls.status_code), cls.__name__


def test_docstring_tree_indentation_matches_the_class_hierarchy() -> None:
    parents: list[str] = []
    for depth, name, _, _ in _docstring_tree():
        del parents[depth:]
        cls = getattr(errors, name)
        if depth == 0:
            assert cls is GatewayError
        else:
            assert cls.__bases__ == (getattr(errors, parents[-1]),), name
        parents.append(name)


def test_category_is_readable_from_an_instance() -> None:
    exc = errors.UpstreamTimeout("upstream host 10.0.0.1 timed out")

    assert exc.category == "upstream_timeout"
    assert isinstance(exc, errors.UpstreamError)


def test_error_details_are_kept_as_attributes() -> None:
    assert InvalidArguments("bad", field="$.priority").field == "$.priority"
    assert PolicyDenied("no", reasons=["tool_not_read_only"]).reasons == ["tool_not_read_only"]
    assert PolicyRejected("bad", errors=[{"code": "rego_parse_error"}]).errors == [{"code": "rego_parse_error"}]
