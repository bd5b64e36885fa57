"""JSON documents changed by dotted paths: keep, remove, rename, set.

Pure: no aiohttp, no pluggy. Paths are parsed once, when the configuration loads
(:func:`parse_path`, :func:`keep_tree`); per request :meth:`Operations.apply` changes
a decoded document in place. A list met on the way applies the rest of the path to
each of its elements, so ``owner.ssn`` reaches into every object of
``[{"owner": {...}}, ...]`` (and a body that is a list is handled element by element).
Every walk is a loop over an explicit stack, never a recursion, so a deeply nested
document costs no Python frames.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final

Path = tuple[str, ...]
KeepTree = dict[str, "KeepTree | None"]
"""Key -> what to keep inside its value (``None``: all of it)."""

MISSING: Final[Any] = object()
"""A ``set`` value for which the request has no value: the key is removed instead."""

_ABSENT: Final[Any] = object()


def parse_path(text: str) -> Path:
    """``"owner.name"`` -> ``("owner", "name")``.

    :raise ValueError: an empty path or an empty key between dots.
    """
    parts = tuple(text.split("."))
    if any(not part for part in parts):
        raise ValueError(f'expected a dotted path of key names like "owner.name", found '
                         f"{text!r}")
    return parts


def keep_tree(paths: Sequence[Path]) -> KeepTree | None:
    """The tree of the keys to keep, or ``None`` (no ``keep``: every key stays).

    A path that ends at a key keeps that key's whole value, also when a longer path
    names something inside it (``["owner", "owner.name"]`` keeps all of ``owner``).
    """
    if not paths:
        return None
    tree: KeepTree = {}
    for path in paths:
        node: KeepTree | None = tree
        for index, key in enumerate(path):
            assert node is not None
            if index == len(path) - 1:
                node[key] = None
                break
            if key in node and node[key] is None:
                break  # the whole value is kept already
            node = node.setdefault(key, {})
    return tree


def rename_key(parent: dict[str, Any], old: str, new: str) -> bool:
    """Rename ``old`` to ``new`` where ``old`` stood (a ``new`` already there goes);
    whether ``old`` was there."""
    if old not in parent:
        return False
    if old != new:
        items = [(new if key == old else key, value) for key, value in parent.items()
                 if key != new]
        parent.clear()
        parent.update(items)
    return True


def parents(root: Any, keys: Path, *, create: bool = False) -> Iterator[dict[str, Any]]:
    """Every object reached by following ``keys`` from ``root``, entering each element
    of the lists met on the way (in document order).

    With ``create`` an absent key gets a new object on the way; a key whose value is
    neither an object nor a list ends that branch (nothing is overwritten).
    Callers may change the keys of each object yielded.
    """
    depth_end = len(keys)
    stack: list[tuple[Any, int]] = [(root, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, list):
            stack.extend([(item, depth) for item in reversed(node)])
        elif isinstance(node, dict):
            if depth == depth_end:
                yield node
                continue
            key = keys[depth]
            child = node.get(key, _ABSENT)
            if child is _ABSENT:
                if not create:
                    continue
                child = node[key] = {}
            stack.append((child, depth + 1))


def keep_only(root: Any, tree: KeepTree) -> bool:
    """Drop from every object the keys ``tree`` does not name (values that are not
    objects stay as they are); whether any went."""
    changed = False
    stack: list[tuple[Any, KeepTree]] = [(root, tree)]
    while stack:
        node, sub = stack.pop()
        if isinstance(node, list):
            stack.extend([(item, sub) for item in node])
        elif isinstance(node, dict):
            dropped = [key for key in node if key not in sub]
            for key in dropped:
                del node[key]
            changed = changed or bool(dropped)
            for key, inner in sub.items():
                if inner is not None and key in node:
                    stack.append((node[key], inner))
    return changed


@dataclass(frozen=True, slots=True)
class Operations:
    """One direction's edits, parsed at load; applied keep, remove, rename, then set.

    ``keep``, ``remove`` and the old names of ``rename`` name keys of the body as it
    arrives; ``set`` names keys of the body as it leaves (after the renames), so a
    configured value always wins over whatever the sender put there.
    """

    keep: KeepTree | None = None
    remove: tuple[Path, ...] = ()
    rename: tuple[tuple[Path, str], ...] = ()  # the old key's path, its new name
    set: tuple[Path, ...] = ()  # the values come per request, in this order

    @property
    def empty(self) -> bool:
        return self.keep is None and not (self.remove or self.rename or self.set)

    def apply(self, document: Any, values: Sequence[Any]) -> bool:
        """Change ``document`` in place; ``values[i]`` is the value of ``set[i]``
        (:data:`MISSING`: that key is removed). Whether anything changed (a body the
        edits do not touch can then go on as it came, byte for byte)."""
        changed = False
        if self.keep is not None:
            changed = keep_only(document, self.keep)
        for path in self.remove:
            last = path[-1]
            for parent in parents(document, path[:-1]):
                changed = parent.pop(last, _ABSENT) is not _ABSENT or changed
        for path, new in self.rename:
            old = path[-1]
            for parent in parents(document, path[:-1]):
                changed = rename_key(parent, old, new) or changed
        for path, value in zip(self.set, values, strict=True):
            last = path[-1]
            if value is MISSING:
                for parent in parents(document, path[:-1]):
                    changed = parent.pop(last, _ABSENT) is not _ABSENT or changed
                continue
            for parent in parents(document, path[:-1], create=True):
                current = parent.get(last, _ABSENT)
                if current is _ABSENT or type(current) is not type(value) \
                        or current != value:
                    parent[last] = value
                    changed = True
        return changed
