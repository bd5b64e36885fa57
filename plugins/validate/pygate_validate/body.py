"""Request bodies: which media types an operation takes, and what a JSON body must be.

Pure: no aiohttp, no pluggy. Only JSON bodies are checked against a schema
(``application/json`` and every ``+json`` type); a body of a media type the
description lists but that is not JSON passes unchecked, and one of a media type
it does not list is refused with 415 (RFC 9110: Unsupported Media Type), as is
a JSON body sent compressed (the gateway forwards bodies as they came and does
not inflate them to look inside).
"""

from __future__ import annotations

from dataclasses import dataclass

from . import jsontext
from .schemas import SchemaCheck, Violation

BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def media_type(header: str | None) -> str | None:
    """``"Application/JSON; charset=utf-8"`` -> ``"application/json"``; None without one."""
    if header is None:
        return None
    media = header.partition(";")[0].strip().lower()
    return media or None


def is_json(media: str | None) -> bool:
    return media is not None and (media == "application/json" or media.endswith("+json"))


@dataclass(frozen=True, slots=True)
class Media:
    """One entry of an operation's ``content``: a media range and its schema."""

    range: str
    check: SchemaCheck | None


@dataclass(frozen=True, slots=True)
class Unsupported:
    """A body the gateway refuses with 415, and what it would take."""

    violation: Violation
    headers: dict[str, str]


@dataclass(frozen=True, slots=True)
class BodySpec:
    """What an operation (or a ``body_schema``) accepts as a request body.

    :param required: a request without a body is refused.
    :param content: the media ranges described, most specific first.
    :param any_json: every JSON media type takes the first entry's schema
        (``body_schema``, which knows no media types).
    """

    required: bool
    content: tuple[Media, ...]
    any_json: bool = False

    def select(self, media: str | None) -> Media | None:
        """The entry for a media type: exact, then ``type/*``, then ``*/*``."""
        if media is None:
            return None
        if self.any_json:
            return self.content[0] if is_json(media) else None
        kind = media.partition("/")[0] + "/*"
        for wanted in (media, kind, "*/*"):
            for entry in self.content:
                if entry.range == wanted:
                    return entry
        return None

    def accepted(self) -> str:
        return "a JSON type (application/json)" if self.any_json else ", ".join(
            entry.range for entry in self.content)

    def required_for(self, method: str) -> bool:
        return self.required or (self.any_json and method in BODY_METHODS)

    def to_read(self, content_type: str | None, encoding: str | None
                ) -> tuple[Media | None, Unsupported | None]:
        """Before reading a body: the entry whose schema checks it (None: nothing to
        check), or why it is refused."""
        media = media_type(content_type)
        entry = self.select(media)
        if entry is None:
            found = f"Content-Type {media}" if media else "a body without Content-Type"
            return None, Unsupported(
                Violation("body", "", f"{found} is not accepted here; expected "
                                      f"{self.accepted()}"), {})
        if entry.check is None or not is_json(media):
            return None, None
        if encoding is not None and encoding.strip().lower() not in ("", "identity"):
            return None, Unsupported(
                Violation("body", "", f"Content-Encoding {encoding.strip()} is not accepted "
                                      "here; send the body uncompressed"),
                {"Accept-Encoding": "identity"})
        return entry, None


def check_json(entry: Media, data: bytes, required: bool) -> list[Violation]:
    """The violations of a JSON body read whole."""
    if not data or data.isspace():
        return [Violation("body", "", "a request body is required")] if required else []
    try:
        value = jsontext.loads(data)
    except ValueError as exc:
        return [Violation("body", "", str(exc))]
    if entry.check is None:
        return []
    return entry.check.violations(value, "body")
