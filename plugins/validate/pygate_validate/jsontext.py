"""JSON from a client: parsed strictly, with limits, never raising anything but ValueError.

Pure: no aiohttp, no pluggy. RFC 8259 JSON only: UTF-8, no ``NaN`` or
``Infinity``, no number too large for a float or with more digits than Python
converts, and nesting no deeper than :data:`MAX_DEPTH` (deeper documents would
exhaust the validator's recursion before it could say what is wrong).
"""

from __future__ import annotations

import json
import math
from typing import Any

MAX_DEPTH = 64
"""The deepest nesting of arrays and objects a checked JSON value may have."""

MAX_DIGITS = 4300
"""Python's own limit for turning digits into an int (``sys.get_int_max_str_digits``)."""


def _constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


_DECODER = json.JSONDecoder(parse_constant=_constant)


def loads(data: bytes | str) -> Any:
    """The JSON value of ``data``.

    :raise ValueError: with a message for the client: not UTF-8, not JSON (with the
        place), a number out of range, nested deeper than :data:`MAX_DEPTH`.
    """
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"not UTF-8 text (byte {exc.start})") from None
    else:
        text = data
    try:
        value = _DECODER.decode(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
                         ) from None
    except RecursionError:
        raise ValueError(f"nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:  # NaN or Infinity; more digits than Python converts
        if "digits" in str(exc):
            raise ValueError(f"not valid JSON: a number has more than {MAX_DIGITS} digits"
                             ) from None
        raise ValueError(f"not valid JSON: {exc}") from None
    problem = scan(value, MAX_DEPTH)
    if problem is not None:
        raise ValueError(problem)
    return value


def scan(value: Any, limit: int) -> str | None:
    """What is wrong with a parsed value: arrays and objects nested deeper than ``limit``,
    or a number too large for a float (``1e999``); ``None`` when nothing is. No recursion."""
    if isinstance(value, float) and not math.isfinite(value):
        return "not valid JSON: a number is too large"
    if not isinstance(value, dict | list):
        return None
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        children: Any = node.values() if isinstance(node, dict) else node
        for child in children:
            if isinstance(child, dict | list):
                if depth >= limit:
                    return f"nested deeper than {limit} levels"
                stack.append((child, depth + 1))
            elif isinstance(child, float) and not math.isfinite(child):
                return "not valid JSON: a number is too large"
    return None
