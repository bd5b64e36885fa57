"""Header edits: remove, rename, add; and identity headers for upstreams.

Pure: functions over a ``CIMultiDict``, no aiohttp request or pluggy. The
same :func:`apply` serves the request side (``transform_request``) and the
response side (``post_response``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from multidict import CIMultiDict

from pygate.plugin import Identity

_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


class Edits(Protocol):
    """What :func:`apply` needs from a ``request`` or ``response`` table."""

    @property
    def remove(self) -> Iterable[str]: ...

    @property
    def rename(self) -> Mapping[str, str]: ...

    @property
    def add(self) -> Mapping[str, str]: ...


def apply(headers: CIMultiDict[str], edits: Edits) -> None:
    """Remove, then rename, then add (set, replacing any value already there).

    A rename moves every value of the old header to the new name, replacing the
    new name's values; it does nothing when the old header is absent.
    """
    for name in edits.remove:
        headers.popall(name, None)
    for old, new in edits.rename.items():
        values = headers.popall(old, None)
        if values is None:
            continue
        headers.popall(new, None)
        for value in values:
            headers.add(new, value)
    for name, value in edits.add.items():
        headers[name] = value


def header_value(value: Any) -> str | None:
    """An identity field as a header value: lists joined with ``,``, ``None`` for nothing.

    Control characters (CR, LF, NUL...) are dropped, so no identity field can
    split or end a header.
    """
    if isinstance(value, str):
        text = value
    elif value is None:
        return None
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, list | tuple | set | frozenset):
        items = [header_value(item) for item in value]
        text = ",".join([item for item in items if item])
    elif isinstance(value, dict):
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    else:
        text = str(value)
    if not (text.isascii() and text.isprintable()):  # printable ASCII holds no control
        text = _CONTROL.sub("", text)
    return text.strip() or None


KNOWN_IDENTITIES = 1024
"""Identities whose header values are remembered; past it the memory starts over."""


def set_identity(headers: CIMultiDict[str], mapping: Mapping[str, str],
                 identity: Identity | None,
                 known: dict[tuple[int, int], tuple[Any, list[tuple[str, str]]]] | None = None
                 ) -> None:
    """Strip every copy of the identity headers, then set them from ``identity``.

    The stripping always happens, also for anonymous requests, so a client can
    never pass its own ``X-User-Id`` to an upstream. A field the identity lacks
    (or an empty one) leaves its header absent. ``known`` remembers the values of
    recent identities, by mapping and identity (an authentication plugin's cache
    hands out the same identity object for the same credential, and an identity
    never changes); it keeps the identity, so a reused ``id()`` is told apart.
    """
    for name in mapping:
        headers.popall(name, None)
    if identity is None:
        return
    if known is None:
        values = identity_values(mapping, identity)
    else:
        known_as = (id(mapping), id(identity))  # the mapping lives as long as the gateway
        found = known.get(known_as)
        if found is not None and found[0] is identity:
            values = found[1]
        else:
            if len(known) >= KNOWN_IDENTITIES:
                known.clear()
            values = identity_values(mapping, identity)
            known[known_as] = (identity, values)
    for name, value in values:
        headers[name] = value


def identity_values(mapping: Mapping[str, str], identity: Identity) -> list[tuple[str, str]]:
    """``(header, value)`` for each identity header whose field has a value."""
    values = []
    for name, field in mapping.items():
        value = header_value(identity.get(field))
        if value is not None:
            values.append((name, value))
    return values
