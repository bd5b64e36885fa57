"""API keys: the configured forms, a constant-time lookup, and hiding a key from a query.

Pure: no aiohttp, no pluggy. Every configured key is kept only as its SHA-256
digest; a presented key is hashed and looked up by digest, and the match is
confirmed with :func:`hmac.compare_digest`, so no comparison of secrets ever
stops early at the first differing character.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import unquote_plus

HASH_PREFIX = "sha256:"
_HEX_DIGEST = re.compile(r"[0-9a-fA-F]{64}")


def hash_key(key: str) -> bytes:
    """The SHA-256 digest of a key as the client sends it (UTF-8)."""
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


def digest_of(spec: str) -> bytes:
    """The digest a configured key stands for.

    ``"sha256:<64 hex digits>"`` is a digest given directly; anything else is
    the key itself, hashed here. Raise ``ValueError`` for an empty key or a
    malformed digest.
    """
    if spec.startswith(HASH_PREFIX):
        hex_digits = spec[len(HASH_PREFIX):]
        if not _HEX_DIGEST.fullmatch(hex_digits):
            raise ValueError('expected "sha256:" followed by 64 hexadecimal digits '
                             "(the SHA-256 of the key)")
        return bytes.fromhex(hex_digits)
    if not spec:
        raise ValueError("expected a non-empty key")
    if spec != spec.strip():
        raise ValueError("a key may not start or end with whitespace")
    return hash_key(spec)


def display_form(spec: str) -> str:
    """A configured key as it may be shown (``pygate explain``): always the digest form."""
    return HASH_PREFIX + digest_of(spec).hex()


@dataclass(frozen=True, slots=True)
class Consumer:
    """A named consumer and the roles its keys grant."""

    name: str
    roles: tuple[str, ...] = ()


class KeyIndex:
    """Digest -> consumer, built once at configuration load."""

    __slots__ = ("_by_digest",)

    def __init__(self) -> None:
        self._by_digest: dict[bytes, tuple[bytes, Consumer]] = {}

    def add(self, digest: bytes, consumer: Consumer) -> None:
        """Register a key; one key naming two different consumers is a ``ValueError``."""
        known = self._by_digest.get(digest)
        if known is not None and known[1].name != consumer.name:
            first, second = sorted((known[1].name, consumer.name))
            raise ValueError(f"the same key is configured for consumers {first!r} and "
                             f"{second!r}")
        self._by_digest[digest] = (digest, consumer)

    def find(self, presented: str) -> Consumer | None:
        """The consumer whose key is ``presented``, or ``None``."""
        digest = hash_key(presented)
        entry = self._by_digest.get(digest)
        if entry is None:
            return None
        stored, consumer = entry
        return consumer if hmac.compare_digest(stored, digest) else None

    def consumers(self) -> set[str]:
        return {consumer.name for _, consumer in self._by_digest.values()}

    def __len__(self) -> int:
        return len(self._by_digest)


def build_index(entries: Iterable[tuple[str, Iterable[str], Iterable[str]]]) -> KeyIndex:
    """An index from ``(consumer, keys, roles)`` triples; a consumer listed twice has the
    union of its keys and roles."""
    keys: dict[str, list[str]] = {}
    roles: dict[str, list[str]] = {}
    for name, consumer_keys, consumer_roles in entries:
        keys.setdefault(name, []).extend(consumer_keys)
        merged = roles.setdefault(name, [])
        merged.extend(role for role in consumer_roles if role not in merged)
    index = KeyIndex()
    for name, specs in keys.items():
        consumer = Consumer(name, tuple(roles[name]))
        for spec in specs:
            index.add(digest_of(spec), consumer)
    return index


def strip_query_param(query: str, name: str) -> str:
    """``query`` (raw, without ``?``) without any ``name=...`` pair; the rest byte for byte."""
    if not query:
        return query
    parts = query.split("&")
    kept = [part for part in parts if unquote_plus(part.partition("=")[0]) != name]
    return query if len(kept) == len(parts) else "&".join(kept)
