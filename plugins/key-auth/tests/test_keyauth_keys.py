"""key-auth's pure key handling: digests, the constant-time index, query stripping."""

from __future__ import annotations

import hashlib

import pytest
from pygate_key_auth.keys import (
    Consumer,
    KeyIndex,
    build_index,
    digest_of,
    display_form,
    strip_query_param,
)


def test_plain_and_hashed_forms_give_the_same_digest() -> None:
    digest = hashlib.sha256(b"secret").digest()
    assert digest_of("secret") == digest
    assert digest_of("sha256:" + digest.hex()) == digest
    assert digest_of("sha256:" + digest.hex().upper()) == digest
    assert display_form("secret") == "sha256:" + digest.hex()


@pytest.mark.parametrize("spec", ["", "sha256:", "sha256:abc", "sha256:" + "g" * 64,
                                  "sha256:" + "a" * 63, " padded"])
def test_malformed_keys_are_refused(spec: str) -> None:
    with pytest.raises(ValueError):
        digest_of(spec)


def test_index_finds_only_exact_keys() -> None:
    index = build_index([("alice", ["k1", "k2"], ["admin"]), ("bob", ["k3"], []),
                         ("alice", ["k4"], ["ops", "admin"])])
    assert index.find("k1") == Consumer("alice", ("admin", "ops"))
    assert index.find("k4") == Consumer("alice", ("admin", "ops"))
    assert index.find("k3") == Consumer("bob", ())
    for wrong in ("k", "k11", "K1", "", "sha256:" + digest_of("k1").hex()):
        assert index.find(wrong) is None
    assert index.consumers() == {"alice", "bob"}
    assert len(index) == 4


def test_one_key_for_two_consumers_is_refused() -> None:
    index = KeyIndex()
    index.add(digest_of("k"), Consumer("a"))
    index.add(digest_of("k"), Consumer("a"))  # the same consumer twice is harmless
    with pytest.raises(ValueError, match="consumers 'a' and 'b'"):
        index.add(digest_of("sha256:" + digest_of("k").hex()), Consumer("b"))


@pytest.mark.parametrize(("query", "expected"), [
    ("", ""),
    ("api_key=x", ""),
    ("a=1&api_key=x&b=2", "a=1&b=2"),
    ("api_key=x&api_key=y&b=%20", "b=%20"),
    ("api%5Fkey=x&b=2", "b=2"),
    ("api_keys=x&b", "api_keys=x&b"),
    ("a=api_key", "a=api_key"),
    ("api_key&c=3", "c=3"),
])
def test_strip_query_param(query: str, expected: str) -> None:
    assert strip_query_param(query, "api_key") == expected
