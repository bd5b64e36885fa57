"""Value types of pygate.toml: durations, sizes, listen addresses, state backends."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
)

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|KiB|MiB|GiB)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"b": 1, "kb": 1024, "mb": 1024**2, "gb": 1024**3, "kib": 1024, "mib": 1024**2,
               "gib": 1024**3}


def parse_duration(value: Any) -> float:
    """``"250ms"``, ``"2s"``, ``"1m"``, ``"1h"``, ``"365d"`` (or a number of seconds) ->
    seconds."""
    if isinstance(value, bool):
        raise ValueError(f'expected a duration like "2s", found {value!r}')
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"expected a non-negative duration, found {value!r}")
        return float(value)
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            return float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    raise ValueError(f'expected a duration like "250ms", "2s", "1m", "1h" or "365d", '
                     f'found {value!r}')


def parse_size(value: Any) -> int:
    """``"512KB"``, ``"10MB"`` (or a number of bytes) -> bytes (1KB = 1024 bytes)."""
    if isinstance(value, bool):
        raise ValueError(f'expected a size like "10MB", found {value!r}')
    if isinstance(value, int) and value >= 0:
        return value
    if isinstance(value, str):
        match = _SIZE.match(value)
        if match:
            unit = (match.group(2) or "B").lower()
            return int(float(match.group(1)) * _SIZE_UNITS[unit])
    raise ValueError(f'expected a size like "512KB" or "10MB", found {value!r}')


def parse_listen(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f'expected "HOST:PORT", found {value!r}')
    _, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f'expected "HOST:PORT" with a port 0-65535, found {value!r}')
    return value


def split_listen(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


def parse_backend(value: Any) -> str:
    """A plugin's state backend: ``"memory"`` or a Redis URL (``redis://``, ``rediss://``,
    ``unix://``), checked with redis-py's own parser when it is installed."""
    if value == "memory":
        return "memory"
    if isinstance(value, str) and value.startswith(("redis://", "rediss://", "unix://")):
        try:
            from redis.connection import parse_url
        except ImportError:  # the plugin that needs Redis depends on redis-py
            return value
        try:
            parse_url(value)
        except ValueError as exc:
            raise ValueError(f"invalid Redis URL: {exc}") from None
        return value
    raise ValueError(f'expected "memory" or a URL like "redis://host:port/db", found {value!r}')


Duration = Annotated[float, BeforeValidator(parse_duration)]
Size = Annotated[int, BeforeValidator(parse_size)]
Listen = Annotated[str, BeforeValidator(parse_listen)]
Backend = Annotated[str, BeforeValidator(parse_backend)]  # "memory" or a Redis URL


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
