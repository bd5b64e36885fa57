"""What a call's result looks like in the response: ``fields``, ``rename``, ``merge``.

Pure functions over JSON values. ``fields`` is compiled once at load into a
tree (``["id", "customer.address.city"]`` -> ``{"id": None, "customer":
{"address": {"city": None}}}``); :func:`project` keeps those keys of an object,
or of each element of a list, and keeps the nested structure of dotted paths.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

Tree = dict[str, "Tree | None"]
"""A compiled ``fields`` list: key -> sub-tree, or ``None`` to keep the whole value."""


def compile_fields(fields: Sequence[str]) -> Tree:
    """``["id", "a.b", "a.c"]`` -> ``{"id": None, "a": {"b": None, "c": None}}``.

    A path that names a whole value wins over deeper paths under it
    (``["a", "a.b"]`` keeps all of ``a``). Callers validate the paths first
    (:func:`field_error`).
    """
    tree: Tree = {}
    for path in fields:
        node = tree
        parts = path.split(".")
        for depth, part in enumerate(parts):
            last = depth == len(parts) - 1
            if part in node and node[part] is None:
                break  # the whole value is kept already
            if last:
                node[part] = None
                break
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            node = child
    return tree


def field_error(path: str) -> str | None:
    """Why ``path`` is not a valid ``fields`` entry, or ``None`` when it is."""
    if not path or any(not part for part in path.split(".")):
        return f'expected key paths like "id" or "address.city", found {path!r}'
    return None


def project(value: Any, tree: Tree) -> Any:
    """Keep the keys in ``tree`` of an object, or of each object of a list.

    Keys the object lacks are left out; values that are neither objects nor
    lists (a ``null`` address, a number) are kept as they are.
    """
    if isinstance(value, dict):
        out = {}
        for key, sub in tree.items():
            if key in value:
                item = value[key]
                out[key] = item if sub is None else project(item, sub)
        return out
    if isinstance(value, list):
        return [project(item, tree) for item in value]
    return value


def rename(value: Any, names: Mapping[str, str]) -> Any:
    """Rename top-level keys of an object (or of each object of a list), keeping their places."""
    if isinstance(value, dict):
        return {names.get(key, key): item for key, item in value.items()}
    if isinstance(value, list):
        return [rename(item, names) for item in value]
    return value
