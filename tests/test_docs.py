"""The docs follow the code: every hook is documented under its exact signature."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from pygate import hookspecs

DOCS = Path(__file__).resolve().parent.parent / "docs"


@pytest.mark.parametrize("hook", [*hookspecs.REQUEST_HOOKS, *hookspecs.LIFECYCLE_HOOKS])
def test_every_hook_is_documented_with_its_signature(hook: str) -> None:
    spec = getattr(hookspecs, hook)
    names = tuple(inspect.signature(spec).parameters)
    assert names == hookspecs.HOOK_ARGS[hook]
    # deprecated arguments are still passed, but the heading shows the current signature
    deprecated = hookspecs.DEPRECATED_ARGS.get(hook, ())
    params = ", ".join(name for name in names if name not in deprecated)
    text = (DOCS / "plugin-hooks.md").read_text()
    assert f"### `{hook}({params})`" in text
    section = text.split(f"### `{hook}({params})`")[1].split("\n### ")[0]
    for name in deprecated:
        assert f"`{name}`" in section and "deprecated" in section, (hook, name)


def test_hook_docstrings_state_when_and_result() -> None:
    for hook in hookspecs.REQUEST_HOOKS:
        doc = inspect.getdoc(getattr(hookspecs, hook)) or ""
        assert ":param ctx:" in doc and ":return:" in doc, hook
