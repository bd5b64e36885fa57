"""The ``[plugins.transform]`` table, validated (and merged per route by pygate).

Paths and placeholders are parsed here, once, when the configuration loads: each
:class:`Edits` carries its :class:`~pygate_transform.body.Operations` and the
:class:`~pygate.plugin.ValueTemplate` of each ``set`` entry, so a request only looks
values up.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    field_validator,
)

from pygate.plugin import Size, ValueTemplate

from .body import Operations, keep_tree, parse_path


def _path(text: str) -> str:
    parse_path(text)
    return text


def _set_value(value: Any) -> Any:
    """A ``set`` value: JSON (no NaN or infinity) whose strings are templates."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            raise ValueError(f"JSON has no {item!r}: expected a finite number")
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif not (item is None or isinstance(item, str | int | float | bool)):
            raise ValueError(f"expected a JSON value (string, number, boolean, table or "
                             f"array), found {type(item).__name__}")
    ValueTemplate(value)  # raises ValueError naming the placeholder
    return value


PathText = Annotated[str, AfterValidator(_path)]
SetValue = Annotated[Any, AfterValidator(_set_value)]


def _dotted_hint(value: Any) -> Any:
    """A ``rename`` value that is a table: TOML read an unquoted ``a.b = "c"`` as nested
    tables; say so."""
    if isinstance(value, dict):
        for name, item in value.items():
            if isinstance(item, dict):
                inner = next(iter(item), "")
                raise ValueError(f'{name} is a table: quote a dotted path, as in '
                                 f'"{name}.{inner}" = ... (unquoted, TOML reads {name}.{inner} '
                                 "as nested tables)")
    return value


class Edits(BaseModel):
    """``request = { set, remove, rename, keep }`` (and ``response``, the same keys)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    set: dict[PathText, SetValue] = Field(default_factory=dict)
    remove: list[PathText] = Field(default_factory=list)
    rename: dict[PathText, str] = Field(default_factory=dict)
    keep: list[PathText] = Field(default_factory=list)

    _operations: Operations = PrivateAttr(default_factory=Operations)
    _templates: tuple[ValueTemplate, ...] = PrivateAttr(default=())
    _varies: bool = PrivateAttr(default=False)

    @field_validator("rename", mode="before")
    @classmethod
    def _rename_shape(cls, value: Any) -> Any:
        return _dotted_hint(value)

    @field_validator("rename")
    @classmethod
    def _rename_targets(cls, value: dict[str, str]) -> dict[str, str]:
        for old, new in value.items():
            _new_name(old, new)
        return value

    def model_post_init(self, context: Any) -> None:
        self._operations = Operations(
            keep=keep_tree([parse_path(path) for path in self.keep]),
            remove=tuple(parse_path(path) for path in self.remove),
            rename=tuple((parse_path(old), _new_name(old, new))
                         for old, new in self.rename.items()),
            set=tuple(parse_path(path) for path in self.set),
        )
        self._templates = tuple(ValueTemplate(value) for value in self.set.values())
        self._varies = any(template.dynamic for template in self._templates)

    @property
    def operations(self) -> Operations:
        """The parsed edits."""
        return self._operations

    @property
    def templates(self) -> tuple[ValueTemplate, ...]:
        """The value of each ``set`` entry, in the order of ``operations.set``."""
        return self._templates

    @property
    def varies(self) -> bool:
        """Some ``set`` value has a placeholder: the body depends on the request."""
        return self._varies


def _new_name(old: str, new: str) -> str:
    """The new key name of a rename: ``new`` itself, or ``new`` written as ``old``'s
    path with another last key (``"owner.name" = "owner.fullName"``).

    :raise ValueError: a target elsewhere (a rename moves a key within its object).
    """
    parent, _, _ = old.rpartition(".")
    if not new:
        raise ValueError(f'rename "{old}": expected a new key name, found ""')
    if "." not in new:
        return new
    if parent and new.startswith(parent + ".") and "." not in new[len(parent) + 1:]:
        return new[len(parent) + 1:]
    raise ValueError(f'rename "{old}" = "{new}": a rename keeps the key in its object; '
                     f'give the new name alone (as in "{old}" = "{new.rpartition(".")[2]}")')


class TransformConfig(BaseModel):
    """The effective ``transform`` settings of one route; see the README for each key."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    request: Edits = Field(default_factory=Edits)
    response: Edits = Field(default_factory=Edits)
    max_body: Size = 1024 * 1024

    @field_validator("max_body")
    @classmethod
    def _max_body(cls, value: int) -> int:
        if value < 1:
            raise ValueError('expected a size of at least 1 byte, like "1MB"')
        return value
