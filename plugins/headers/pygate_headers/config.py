"""``[plugins.headers]``: identity headers for upstreams, and header edits both ways."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
)

_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# Headers that frame the message or the connection: the core computes them.
FRAMING = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive", "te",
                     "trailer", "upgrade", "proxy-connection"})


def _name(value: str) -> str:
    if not _TOKEN.match(value):
        raise ValueError(f"expected a header name like X-Gateway, found {value!r}")
    return value


def _settable(value: str) -> str:
    _name(value)
    if value.lower() in FRAMING:
        raise ValueError(f"{value} is set by the gateway itself and cannot be added or renamed "
                         "to")
    return value


def _value(value: str) -> str:
    if _BAD_VALUE.search(value):
        raise ValueError(f"a header value may not contain control characters, found {value!r}")
    return value


HeaderName = Annotated[str, AfterValidator(_name)]
SettableName = Annotated[str, AfterValidator(_settable)]
HeaderValue = Annotated[str, AfterValidator(_value)]


class Edits(BaseModel):
    """``request = { add, remove, rename }``: applied remove, then rename, then add."""

    model_config = ConfigDict(extra="forbid")

    add: dict[SettableName, HeaderValue] = Field(default_factory=dict)
    remove: list[HeaderName] = Field(default_factory=list)
    rename: dict[HeaderName, SettableName] = Field(default_factory=dict)


class ResponseEdits(Edits):
    """``response = { add, remove, rename }``; removes ``Server`` and ``X-Powered-By``
    unless ``remove`` is given."""

    remove: list[HeaderName] = Field(default_factory=lambda: ["Server", "X-Powered-By"])


DEFAULT_IDENTITY = {"X-User-Id": "id", "X-User-Role": "roles"}


class HeadersConfig(BaseModel):
    """The effective ``headers`` settings of one route."""

    model_config = ConfigDict(extra="forbid")

    identity: dict[SettableName, Annotated[str, Field(min_length=1)]] = Field(
        default_factory=lambda: dict(DEFAULT_IDENTITY))
    request: Edits = Field(default_factory=Edits)
    response: ResponseEdits = Field(default_factory=ResponseEdits)

    @field_validator("request")
    @classmethod
    def _identity_headers_are_reserved(cls, value: Edits, info: ValidationInfo) -> Edits:
        reserved = {name.lower(): name for name in info.data.get("identity", {})}
        for name in (*value.add, *value.rename.values()):
            if name.lower() in reserved:
                raise ValueError(f"{name} is an identity header (set from the caller's "
                                 "identity under `identity`); it cannot be added or renamed to")
        return value
