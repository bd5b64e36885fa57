"""Configuration problems: each with its key path, and the nearest valid name."""

from __future__ import annotations

import difflib
import re
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ValidationError,
)


@dataclass(frozen=True)
class ConfigIssue:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ConfigError(Exception):
    """One or more configuration problems, each with its key path."""

    def __init__(self, file: str, issues: list[ConfigIssue]) -> None:
        self.file = file
        self.issues = issues
        super().__init__(self.render())

    def render(self) -> str:
        count = len(self.issues)
        head = f"{self.file}: {count} configuration error{'s' if count != 1 else ''}"
        return "\n".join([head, *(f"  {issue}" for issue in self.issues)])


def key_path(loc: Iterable[str | int]) -> str:
    """``("routes", 2, "path")`` -> ``routes[2].path``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            text = str(part)
            if not re.fullmatch(r"[A-Za-z0-9_-]+", text):
                text = '"' + text.replace('"', '\\"') + '"'
            out += f".{text}" if out else text
    return out


def suggest(name: str, options: Iterable[str]) -> str:
    """`` did you mean 'x'?`` for the nearest valid name, or an empty string."""
    candidates = list(options)
    close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    if not close and len(name) >= 2:
        # short names ({ib} for {id}) fall below the ratio with a single typo
        close = [c for c in candidates if _one_typo(name.lower(), c.lower())][:1]
    return f"; did you mean '{close[0]}'?" if close else ""


def _one_typo(a: str, b: str) -> bool:
    """One character replaced, inserted, deleted, or two neighbours swapped."""
    if a == b or abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        diff = [i for i in range(len(a)) if a[i] != b[i]]
        return len(diff) == 1 or (len(diff) == 2 and diff[1] == diff[0] + 1
                                  and a[diff[0]] == b[diff[1]] and a[diff[1]] == b[diff[0]])
    short, long = (a, b) if len(a) < len(b) else (b, a)
    return any(long[:i] + long[i + 1:] == short for i in range(len(long)))


def _branches(annotation: Any) -> list[Any]:
    """The annotations an annotation may stand for (through Annotated and unions)."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _branches(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return [x for arg in typing.get_args(annotation) for x in _branches(arg)]
    return [annotation]


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _model_at(model: type[BaseModel], loc: tuple[str | int, ...]) -> type[BaseModel] | None:
    """The model class that holds the last element of ``loc``.

    Each element is read the way the annotation at that point says: a field
    name of a model, a key of a dict, or an index of a list.
    """
    current: list[Any] = [model]
    for part in loc[:-1]:
        following: list[Any] = []
        for annotation in (b for a in current for b in _branches(a)):
            origin = typing.get_origin(annotation)
            if origin in (list, tuple, set, frozenset) and isinstance(part, int):
                following.extend(typing.get_args(annotation)[:1])
            elif origin is dict and isinstance(part, str):
                following.append(typing.get_args(annotation)[1])
            elif _is_model(annotation) and isinstance(part, str):
                for name, field in annotation.model_fields.items():
                    if (field.alias or name) == part:
                        following.append(field.annotation)
        current = following
    for annotation in (b for a in current for b in _branches(a)):
        if _is_model(annotation):
            found: type[BaseModel] = annotation
            return found
    return None


def field_names(model: type[BaseModel]) -> list[str]:
    return [f.alias or name for name, f in model.model_fields.items() if not f.exclude]


def unknown_key(name: str, options: list[str]) -> str:
    allowed = f" (allowed: {', '.join(options)})" if options else ""
    return f"unknown key{suggest(name, options) or allowed}"


def validation_issues(error: ValidationError, model: type[BaseModel],
                      prefix: tuple[str | int, ...] = ()) -> list[ConfigIssue]:
    """pydantic errors -> issues with key paths, expected vs found, and name suggestions."""
    issues = []
    for err in error.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and "[" in p))
        path = key_path((*prefix, *loc))
        kind = err["type"]
        if kind == "extra_forbidden":
            owner = _model_at(model, loc)
            options = field_names(owner) if owner else []
            name = str(loc[-1]) if loc else ""
            issues.append(ConfigIssue(path, unknown_key(name, options)))
            continue
        if kind == "missing":
            issues.append(ConfigIssue(path, "required key is missing"))
            continue
        message = err["msg"]
        if message.startswith("Value error, "):
            issues.append(ConfigIssue(path, message[len("Value error, "):]))
            continue
        if kind in ("model_type", "dict_type"):
            message = "expected a table"  # TOML words, not pydantic's class names
        elif kind == "list_type":
            message = "expected an array"
        else:
            message = f"{message[0].lower()}{message[1:]}"
        type_error = kind in ("model_type", "dict_type", "list_type")
        if "input" in err and (type_error or not isinstance(err["input"], dict | list)):
            found = repr(err["input"])
            message = f"{message}, found {found if len(found) <= 60 else found[:57] + '...'}"
        issues.append(ConfigIssue(path, message))
    return issues


_PATH_PART = re.compile(r'\[(\d+)\]|"((?:[^"\\]|\\.)*)"|([^.\[\]"]+)')


def parse_key_path(path: str) -> tuple[str | int, ...]:
    """``routes[2].plugins.jwt`` -> ``("routes", 2, "plugins", "jwt")`` (:func:`key_path`'s
    inverse, quoted keys included)."""
    parts: list[str | int] = []
    for index, quoted, plain in _PATH_PART.findall(path):
        if index:
            parts.append(int(index))
        elif quoted:
            parts.append(quoted.replace('\\"', '"'))
        else:
            parts.append(plain)
    return tuple(parts)


def in_file_order(issues: Iterable[ConfigIssue], data: Any) -> list[ConfigIssue]:
    """``issues`` once each, in the order their keys come in the file.

    ``data`` is the parsed file (TOML tables keep the order of their keys). An issue
    sorts where its key is, or, for a key that is not in the file (a required key
    missing), where the nearest enclosing key is; issues of one key keep their order.
    """
    order: dict[tuple[str | int, ...], int] = {}

    def walk(node: Any, loc: tuple[str | int, ...]) -> None:
        order[loc] = len(order)
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, (*loc, key))
        elif isinstance(node, list):
            for index, value in enumerate(node):
                walk(value, (*loc, index))

    walk(data, ())

    def rank(issue: ConfigIssue) -> int:
        loc = parse_key_path(issue.path)
        while loc not in order:
            loc = loc[:-1]
        return order[loc]

    unique = list(dict.fromkeys(written_path(issue, data) for issue in issues))
    return sorted(unique, key=rank)


def written_path(issue: ConfigIssue, data: Any) -> ConfigIssue:
    """``issue`` at the key the file wrote: a value written in short form (``targets =
    ["http://..."]`` for ``[{ url = "http://..." }]``) is named by its own key
    (``targets[0]``), not by the long form's (``targets[0].url``)."""
    loc = parse_key_path(issue.path)
    node = data
    for depth, part in enumerate(loc):
        if isinstance(node, dict) and isinstance(part, str) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        elif isinstance(node, dict | list):
            return issue  # a key the file lacks (a required one): named as it is
        else:  # inside a value written as a scalar
            return ConfigIssue(key_path(loc[:depth]), issue.message)
    return issue
