"""headers' pure edits: order of remove/rename/add, identity header values."""

from __future__ import annotations

from multidict import CIMultiDict
from pygate_headers.config import Edits, HeadersConfig, ResponseEdits
from pygate_headers.transform import KNOWN_IDENTITIES, apply, header_value, set_identity

from pygate.plugin import Identity


def test_remove_then_rename_then_add() -> None:
    headers = CIMultiDict([("X-A", "1"), ("X-A", "2"), ("X-B", "b"), ("X-C", "c")])
    apply(headers, Edits(remove=["x-c"], rename={"X-A": "X-C", "X-Missing": "X-B"},
                         add={"X-A": "new", "X-D": "d"}))
    assert list(headers.items()) == [("X-B", "b"), ("X-C", "1"), ("X-C", "2"), ("X-A", "new"),
                                     ("X-D", "d")]


def test_rename_replaces_the_target() -> None:
    headers = CIMultiDict([("X-Old", "o"), ("X-New", "n1"), ("X-New", "n2")])
    apply(headers, Edits(rename={"X-Old": "X-New"}))
    assert list(headers.items()) == [("X-New", "o")]


def test_defaults() -> None:
    config = HeadersConfig()
    assert config.identity == {"X-User-Id": "id", "X-User-Role": "roles"}
    assert config.request == Edits()
    assert config.response.remove == ["Server", "X-Powered-By"]
    assert ResponseEdits(add={"X": "y"}).remove == ["Server", "X-Powered-By"]


def test_header_values() -> None:
    assert header_value(None) is None
    assert header_value([]) is None
    assert header_value(["a", "b"]) == "a,b"
    assert header_value(("a", None, "", 3)) == "a,3"
    assert header_value(True) == "true"
    assert header_value(42) == "42"
    assert header_value({"k": "v"}) == '{"k":"v"}'
    assert header_value("evil\r\nX-Injected: 1") == "evilX-Injected: 1"
    assert header_value(" \n ") is None


def test_set_identity_strips_every_copy() -> None:
    mapping = {"X-User-Id": "id", "X-User-Role": "roles"}
    headers = CIMultiDict([("x-user-id", "a"), ("X-USER-ID", "b"), ("X-User-Role", "r")])
    set_identity(headers, mapping, None)
    assert not headers
    headers = CIMultiDict([("x-user-id", "a"), ("X-User-Role", "r")])
    set_identity(headers, mapping, Identity(id="u", roles=("x", "y")))
    assert list(headers.items()) == [("X-User-Id", "u"), ("X-User-Role", "x,y")]


def test_remembered_identity_values_follow_the_identity() -> None:
    """Values are remembered per identity object: another identity (or another mapping)
    gets its own, and the memory is bounded."""
    known: dict = {}
    mapping = {"X-User-Id": "id", "X-User-Role": "roles"}
    alice, bob = Identity(id="alice", roles=("admin",)), Identity(id="bob", roles=())
    for identity, expected in ((alice, ["alice", "admin"]), (bob, ["bob", None]),
                               (alice, ["alice", "admin"])):
        headers = CIMultiDict({"X-User-Id": "forged"})
        set_identity(headers, mapping, identity, known)
        assert [headers.get("X-User-Id"), headers.get("X-User-Role")] == expected
    other = {"X-Subject": "id"}
    headers = CIMultiDict()
    set_identity(headers, other, alice, known)
    assert dict(headers) == {"X-Subject": "alice"}
    for index in range(KNOWN_IDENTITIES + 5):
        set_identity(CIMultiDict(), mapping, Identity(id=f"u{index}"), known)
    assert len(known) <= KNOWN_IDENTITIES
