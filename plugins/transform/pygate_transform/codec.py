"""Bytes to JSON documents and back, for bodies a gateway must not spoil.

- Which bodies are JSON: ``application/json`` and ``application/*+json``, without a
  ``Content-Encoding`` (a compressed body is left as it is).
- Numbers keep their text: a decimal is read as :class:`~decimal.Decimal` and written
  back as it was written (``12.30``, ``1e400``), never rounded through a float.
- Anything Python's ``json`` cannot take (malformed text, bytes that are not UTF-8,
  ``NaN``, nesting past the interpreter's recursion limit, an integer of more than
  4300 digits) raises :class:`NotJson`, never something else.

Output is compact UTF-8 (``\\u`` escapes only where a string holds a lone surrogate).
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

_NONCE = f"pygate-number-{secrets.token_hex(16)}-"
"""Marks where a number goes back in: unguessable, so no string in a body can pose as it."""
_NUMBER = re.compile(f'"{_NONCE}(\\d+)"')


class NotJson(Exception):
    """The body cannot be read or written as JSON; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def is_json(content_type: str | None) -> bool:
    """``application/json`` or ``application/*+json``, with any parameters."""
    if not content_type:
        return False
    media = content_type.partition(";")[0].strip().lower()
    return media == "application/json" or (media.startswith("application/")
                                           and media.endswith("+json"))


def is_encoded(headers: Mapping[str, str]) -> bool:
    """A ``Content-Encoding`` other than ``identity`` (gzip, br...)."""
    coding = headers.get("Content-Encoding")
    return coding is not None and coding.strip().lower() not in ("", "identity")


def utf8_content_type(content_type: str) -> str:
    """``content_type`` with its ``charset`` parameter, if it has one, set to utf-8 (what
    :func:`encode` writes); otherwise unchanged."""
    media, _, rest = content_type.partition(";")
    params = [param.strip() for param in rest.split(";") if param.strip()]
    charset = [param for param in params if param.lower().startswith("charset=")]
    if not charset or all(p.split("=", 1)[1].strip().strip('"').lower() in ("utf-8", "utf8")
                          for p in charset):
        return content_type
    kept = [param for param in params if not param.lower().startswith("charset=")]
    return "; ".join([media.strip(), *kept, "charset=utf-8"])


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def decode(raw: bytes) -> Any:
    """The document in ``raw`` (UTF-8, or UTF-16/32 as RFC 8259's readers detect it).

    :raise NotJson: with the reason.
    """
    try:
        return json.loads(raw, parse_float=Decimal, parse_constant=_no_constants)
    except RecursionError:
        raise NotJson("nested too deeply") from None
    except UnicodeDecodeError:
        raise NotJson("not UTF-8 text") from None
    except ValueError as exc:  # JSONDecodeError, NaN, an integer past the digit limit
        raise NotJson(str(exc).split("\n")[0][:200]) from None


def encode(document: Any) -> bytes:
    """``document`` as compact UTF-8 JSON, its numbers as they were read.

    :raise NotJson: a value JSON cannot hold (an infinite float from a placeholder), or
        nesting too deep to write.
    """
    try:
        return _dumps(document, ascii_only=False).encode()
    except UnicodeEncodeError:  # a lone surrogate ("\udc80" is valid JSON, not UTF-8)
        return _dumps(document, ascii_only=True).encode()


def _dumps(document: Any, *, ascii_only: bool) -> str:
    numbers: list[str] = []

    def number(value: Any) -> str:
        if isinstance(value, Decimal):
            numbers.append(str(value))
            return f"{_NONCE}{len(numbers) - 1}"
        raise TypeError(f"{type(value).__name__} is not JSON")

    try:
        text = json.dumps(document, ensure_ascii=ascii_only, separators=(",", ":"),
                          allow_nan=False, default=number)
    except RecursionError:
        raise NotJson("nested too deeply") from None
    except (TypeError, ValueError) as exc:
        raise NotJson(str(exc)) from None
    if not numbers:
        return text

    def put_back(match: re.Match[str]) -> str:
        index = int(match.group(1))
        return numbers[index] if index < len(numbers) else match.group(0)

    return _NUMBER.sub(put_back, text)
