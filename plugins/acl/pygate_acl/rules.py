"""Allow and deny lists, compiled once and matched against an identity.

Pure: no aiohttp, no pluggy. An entry is a bare name, matched against the
identity's id, its consumer name and each of its roles, or a qualified name
(``role:admin``, ``id:u-42``, ``consumer:alice``) that matches that one field.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from pygate.plugin import Identity

QUALIFIERS = ("role", "id", "consumer")


def check_entry(entry: str) -> str:
    """Raise ``ValueError`` for an entry that can never match."""
    if not entry.strip():
        raise ValueError("expected a role, identity id or consumer name, found an empty string")
    qualifier, sep, name = entry.partition(":")
    if sep and qualifier in QUALIFIERS and not name:
        raise ValueError(f"expected a name after {qualifier + ':'!r}, found {entry!r}")
    return entry


@dataclass(frozen=True, slots=True)
class Matcher:
    """One list, split by what each entry may match."""

    names: frozenset[str] = frozenset()
    roles: frozenset[str] = frozenset()
    ids: frozenset[str] = frozenset()
    consumers: frozenset[str] = frozenset()

    @classmethod
    def compile(cls, entries: Iterable[str]) -> Matcher:
        parts: dict[str, set[str]] = {"": set(), "role": set(), "id": set(), "consumer": set()}
        for entry in entries:
            qualifier, sep, name = entry.partition(":")
            if sep and qualifier in QUALIFIERS:
                parts[qualifier].add(name)
            else:
                parts[""].add(entry)
        return cls(names=frozenset(parts[""]), roles=frozenset(parts["role"]),
                   ids=frozenset(parts["id"]), consumers=frozenset(parts["consumer"]))

    def __bool__(self) -> bool:
        return bool(self.names or self.roles or self.ids or self.consumers)

    def matches(self, identity: Identity) -> bool:
        consumer = identity.consumer
        if identity.id in self.ids or identity.id in self.names:
            return True
        if consumer is not None and (consumer in self.consumers or consumer in self.names):
            return True
        return any(role in self.roles or role in self.names for role in identity.roles)


@dataclass(frozen=True, slots=True)
class Rules:
    allow: Matcher
    deny: Matcher

    @classmethod
    def compile(cls, allow: Iterable[str], deny: Iterable[str]) -> Rules:
        return cls(allow=Matcher.compile(allow), deny=Matcher.compile(deny))


def refusal(rules: Rules, identity: Identity | None) -> str | None:
    """Why ``identity`` is refused (the problem document's detail), or ``None`` to admit.

    Deny wins over allow. With an allow list, an anonymous caller is refused
    and so is one that matches no entry. Without one, everyone not denied passes.
    """
    if identity is not None and rules.deny.matches(identity):
        return "access denied for this caller"
    if rules.allow:
        if identity is None:
            return "this route requires an authenticated caller on its access list"
        if not rules.allow.matches(identity):
            return "this caller is not on the route's access list"
    return None
