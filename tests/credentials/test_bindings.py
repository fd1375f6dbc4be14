"""Binding resolution: the most specific matching binding wins, whatever the order of the input."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.credentials import Binding, Subject, select_binding
from gateway.credentials.bindings import SPECIFICITY

SCOPE = {"tenant": "t", "environment": "prod", "server": "github"}
ALICE = Subject("alice", frozenset({"dev", "ops"}), "agent-1")


def _b(
    id_: str, kind: str, value: str | None, *, server: str = "github", tenant: str = "t", env: str = "prod"
) -> Binding:
    return Binding(id_, tenant, env, server, kind, value, f"cred-{id_}")


ALL = [
    _b("1", "everyone", None),
    _b("2", "role", "dev"),
    _b("3", "client", "agent-1"),
    _b("4", "user", "alice"),
    _b("5", "user", "bob"),
    _b("6", "role", "ops"),
    _b("7", "user", "alice", server="jira"),
    _b("8", "user", "alice", tenant="other"),
    _b("9", "user", "alice", env="staging"),
]


@pytest.mark.parametrize(
    ("drop", "expected"),
    [
        pytest.param(set(), "4", id="user-beats-all"),
        pytest.param({"4"}, "3", id="client-beats-role"),
        pytest.param({"4", "3"}, "2", id="role-beats-everyone-smallest-role-first"),
        pytest.param({"4", "3", "2"}, "6", id="the-other-role"),
        pytest.param({"4", "3", "2", "6"}, "1", id="everyone"),
        pytest.param({"4", "3", "2", "6", "1"}, None, id="nothing-matches"),
    ],
)
def test_the_most_specific_matching_binding_wins(drop: set[str], expected: str | None) -> None:
    chosen = select_binding([b for b in ALL if b.id not in drop], subject=ALICE, **SCOPE)
    assert (chosen.id if chosen else None) == expected


def test_a_tie_between_roles_goes_to_the_smallest_role_then_the_smallest_id() -> None:
    ops, dev, dev_again = _b("1", "role", "ops"), _b("9", "role", "dev"), _b("5", "role", "dev")
    for order in ([ops, dev, dev_again], [dev_again, dev, ops], [dev, ops, dev_again]):
        assert select_binding(order, subject=ALICE, **SCOPE) == dev_again


def test_other_servers_tenants_environments_and_subjects_never_match() -> None:
    bob = Subject("bob")
    assert select_binding(ALL, subject=bob, **SCOPE) == ALL[4]
    carol = Subject("carol", frozenset({"nobody"}), None)
    assert select_binding([b for b in ALL if b.subject_kind != "everyone"], subject=carol, **SCOPE) is None
    # a client binding never matches a caller without a client id, even one named like it
    assert select_binding([_b("x", "client", "alice")], subject=Subject("alice"), **SCOPE) is None
    assert select_binding(ALL, subject=ALICE, tenant="t", environment="prod", server="jira") == ALL[6]


_bindings = st.lists(
    st.builds(
        Binding,
        id=st.uuids().map(str),
        # Mostly the call's scope and ALICE's roles, so that several bindings match and tie.
        tenant=st.sampled_from(["t", "t", "t", "u"]),
        environment=st.sampled_from(["prod", "prod", "prod", "staging"]),
        server=st.sampled_from(["github", "github", "github", "jira"]),
        subject_kind=st.sampled_from(["user", "client", "role", "role", "role", "everyone"]),
        subject_value=st.sampled_from(["alice", "dev", "ops", "agent-1", "bob"]),
        credential_id=st.uuids().map(str),
    ).map(lambda b: b if b.subject_kind != "everyone" else Binding(**{**b.__dict__, "subject_value": None})),
    max_size=12,
)


@given(bindings=_bindings, data=st.data())
def test_the_choice_does_not_depend_on_the_order_of_the_bindings_or_roles(
    bindings: list[Binding], data: st.DataObject
) -> None:
    shuffled = data.draw(st.permutations(bindings))
    chosen = select_binding(bindings, subject=ALICE, **SCOPE)
    assert select_binding(shuffled, subject=ALICE, **SCOPE) == chosen
    roles_reordered = Subject("alice", frozenset(reversed(sorted(ALICE.roles))), "agent-1")
    assert select_binding(shuffled, subject=roles_reordered, **SCOPE) == chosen
    matching = [
        b
        for b in bindings
        if (b.tenant, b.environment, b.server) == ("t", "prod", "github")
        and (
            b.subject_kind == "everyone"
            or (b.subject_kind == "user" and b.subject_value == "alice")
            or (b.subject_kind == "client" and b.subject_value == "agent-1")
            or (b.subject_kind == "role" and b.subject_value in ALICE.roles)
        )
    ]
    if not matching:
        assert chosen is None
    else:
        assert chosen in matching
        assert SPECIFICITY[chosen.subject_kind] == max(SPECIFICITY[b.subject_kind] for b in matching)
