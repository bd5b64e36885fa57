"""bff-shape: reshape the body of aggregate routes (an example of the ``aggregate`` hook).

pygate composes an aggregate route's response as one object keyed by call
name. This plugin turns that object into the shape a client wants: pick values
by path into a flat object, drop nulls, wrap it in an envelope. With nothing
configured it returns ``None``, and pygate sends its own composition.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from pygate.plugin import Context, hookimpl

from .config import ShapeConfig
from .shape import lookup, reshape

__version__ = "0.1.0"

PRIORITY = 100


@hookimpl
def config_schema() -> type[BaseModel]:
    return ShapeConfig


@hookimpl
def aggregate(ctx: Context, results: dict[str, Any]) -> Any:
    config: ShapeConfig = ctx.config
    if not config.changes_anything:
        return None
    return reshape(results, config)


__all__ = ["PRIORITY", "ShapeConfig", "aggregate", "config_schema", "lookup", "reshape"]
