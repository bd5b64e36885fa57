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
    if value is None:
        return None
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, list | tuple | set | frozenset):
        items = [header_value(item) for item in value]
        text = ",".join(item for item in items if item)
    elif isinstance(value, dict):
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    else:
        text = str(value)
    text = _CONTROL.sub("", text).strip()
    return text or None


def set_identity(headers: CIMultiDict[str], mapping: Mapping[str, str],
                 identity: Identity | None) -> None:
    """Strip every copy of the identity headers, then set them from ``identity``.

    The stripping always happens, also for anonymous requests, so a client can
    never pass its own ``X-User-Id`` to an upstream. A field the identity lacks
    (or an empty one) leaves its header absent.
    """
    for name in mapping:
        headers.popall(name, None)
    if identity is None:
        return
    for name, field in mapping.items():
        value = header_value(identity.get(field))
        if value is not None:
            headers[name] = value
