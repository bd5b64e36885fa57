"""The reshaping itself: pure functions over JSON values, no pygate, no aiohttp."""

from __future__ import annotations

from typing import Any

from .config import ShapeConfig


def lookup(value: Any, path: str) -> Any:
    """Follow a dotted path through objects (keys) and lists (indexes); ``None`` if it breaks."""
    current = value
    for part in path.split("."):
        if isinstance(current, dict):
            if part not in current:
                return None
            current = current[part]
        elif isinstance(current, list):
            try:
                current = current[int(part)]
            except (ValueError, IndexError):
                return None
        else:
            return None
    return current


def reshape(body: Any, config: ShapeConfig) -> Any:
    """``body`` reshaped by ``config``: pick, then drop nulls, then the envelope."""
    shaped = body
    if config.pick:
        shaped = {key: lookup(body, path) for key, path in config.pick.items()}
    if config.drop_nulls and isinstance(shaped, dict):
        shaped = {key: value for key, value in shaped.items() if value is not None}
    if config.envelope is not None:
        shaped = {config.envelope: shaped}
    return shaped
