"""acl's pure matching rules."""

from __future__ import annotations

import pytest
from pygate_acl.rules import Matcher, Rules, check_entry, refusal

from pygate.plugin import Identity

ALICE = Identity(id="u-1", consumer="alice", roles=("staff",), source="key-auth")
ROOT = Identity(id="root", roles=("admin", "staff"))


def test_bare_names_match_id_consumer_or_role() -> None:
    assert Matcher.compile(["u-1"]).matches(ALICE)
    assert Matcher.compile(["alice"]).matches(ALICE)
    assert Matcher.compile(["staff"]).matches(ALICE)
    assert not Matcher.compile(["admin", "bob"]).matches(ALICE)
    assert not Matcher.compile(["Alice", "STAFF"]).matches(ALICE)  # case-sensitive


def test_qualified_names_match_one_field() -> None:
    assert Matcher.compile(["consumer:alice"]).matches(ALICE)
    assert not Matcher.compile(["role:alice", "id:alice"]).matches(ALICE)
    assert Matcher.compile(["id:u-1"]).matches(ALICE)
    assert not Matcher.compile(["consumer:root"]).matches(ROOT)  # no consumer name
    assert Matcher.compile(["role:admin"]).matches(ROOT)
    # an unknown qualifier is part of the name (roles like "scope:read")
    assert Matcher.compile(["scope:read"]).matches(Identity(id="x", roles=("scope:read",)))


def test_refusal_rules() -> None:
    allow_admins = Rules.compile(["admin"], [])
    assert refusal(allow_admins, ROOT) is None
    assert refusal(allow_admins, ALICE) is not None
    assert refusal(allow_admins, None) is not None

    deny_alice = Rules.compile([], ["alice"])
    assert refusal(deny_alice, None) is None
    assert refusal(deny_alice, ROOT) is None
    assert refusal(deny_alice, ALICE) == "access denied for this caller"

    both = Rules.compile(["staff"], ["consumer:alice"])
    assert refusal(both, ROOT) is None
    assert refusal(both, ALICE) == "access denied for this caller"


@pytest.mark.parametrize("entry", ["", "  ", "role:", "id:", "consumer:"])
def test_entries_that_can_never_match_are_refused(entry: str) -> None:
    with pytest.raises(ValueError):
        check_entry(entry)
