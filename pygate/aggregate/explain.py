"""``pygate explain`` for aggregate routes: the plan as stages, with this request's values."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from .placeholders import (
    Missing,
    Placeholder,
    Scope,
    encode_header,
    encode_query,
    encode_segment,
)
from .plan import AggregatePlan
from .shape import Tree


def describe(plan: AggregatePlan, params: Mapping[str, str], raw_query: str,
             headers: Mapping[str, str]) -> list[str]:
    """The plan as stages, with the values this request would give (``pygate explain``)."""
    scope = Scope(params, raw_query, headers, None)

    def known(encode: Callable[[str, Placeholder], str]) -> Callable[[Placeholder], str | None]:
        def value(placeholder: Placeholder) -> str | None:
            if placeholder.kind in ("call", "identity"):
                return None
            try:
                return encode(placeholder.text_value(scope), placeholder)
            except Missing:
                return None
        return value

    lines = [f"aggregate: {len(plan.calls)} call{'s' if len(plan.calls) != 1 else ''}, "
             f"timeout {_seconds(plan.timeout)}; a call starts as soon as the calls it "
             "reads are done"]
    for number, stage in enumerate(plan.stages, 1):
        lines.append(f"  stage {number}:")
        for call in stage:
            target = call.path.preview(known(encode_segment))
            if call.raw_query is not None:
                target += "?" + call.raw_query.preview(known(encode_query))
            if call.query:
                target += ("&" if "?" in target else "?") + "&".join(
                    f"{name}={template.preview(known(encode_query))}"
                    for name, template in call.query)
            notes = []
            if call.needs:
                notes.append("after " + ", ".join(call.needs))
            notes.append("optional" if call.optional else "required")
            if call.timeout is not None:
                notes.append(f"timeout {_seconds(call.timeout)}")
            if call.fields is not None:
                notes.append("fields " + ", ".join(_field_paths(call.fields)))
            if call.rename:
                notes.append("rename " + ", ".join(f"{a}->{b}" for a, b in call.rename.items()))
            if call.merge:
                notes.append("merged at the top level")
            for name, template in call.headers:
                notes.append(f"{name}: {template.preview(known(encode_header))}")
            lines.append(f"    {call.name}: {call.method} {call.upstream.name} {target}  "
                         f"[{'; '.join(notes)}]")
    return lines


def _field_paths(tree: Tree, prefix: str = "") -> list[str]:
    out = []
    for key, sub in tree.items():
        path = f"{prefix}{key}"
        out.extend([path] if sub is None else _field_paths(sub, path + "."))
    return out


def _seconds(value: float) -> str:
    return f"{value * 1000:g}ms" if value < 1 else f"{value:g}s"
