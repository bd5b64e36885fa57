"""The ``[plugins.logging]`` table, validated once per distinct setting at configuration load.

Everything the request path needs from the settings is derived here once: the
lower-cased sets of query parameter names to redact, the header names to copy,
and the renderer for the chosen format. The sinks (the buffered writers of the
destinations) are runtime state: ``startup`` keeps them in ``gateway.state``.
"""

from __future__ import annotations

import os
import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from pygate.plugin import Duration

from .lines import Renderer, make_renderer

_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")

DEFAULT_REDACT_QUERY = ["access_token", "api_key", "token"]
"""Query parameters redacted unless ``redact_query`` says otherwise: the bearer token
parameter of RFC 6750 and the usual API-key and token names."""


def _header_name(value: str) -> str:
    if not _TOKEN.match(value):
        raise ValueError(f"expected a header name like User-Agent, found {value!r}")
    return value


def _query_name(value: str) -> str:
    if not value:
        raise ValueError("expected a query parameter name, found an empty string")
    return value


HeaderName = Annotated[str, AfterValidator(_header_name)]
QueryName = Annotated[str, AfterValidator(_query_name)]


class LoggingConfig(BaseModel):
    """Settings of the ``logging`` plugin; see the plugin's README for each key."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["json", "console"] = "json"
    sample: float = Field(default=1.0, ge=0.0, le=1.0)
    redact_query: list[QueryName] = Field(default_factory=lambda: list(DEFAULT_REDACT_QUERY))
    path: str | None = None
    headers: list[HeaderName] = Field(default_factory=list)
    flush_interval: Duration = 0.2
    buffer: int = Field(default=50_000, ge=1)

    _redact: frozenset[str] = PrivateAttr(default=frozenset())
    _renderer: Renderer | None = PrivateAttr(default=None)

    @field_validator("path")
    @classmethod
    def _path(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        if not value.strip():
            raise ValueError("expected a file path, found an empty string")
        context = info.context
        base = context.get("base_dir") if isinstance(context, dict) else None
        path = os.path.expanduser(value)
        if not os.path.isabs(path):
            path = os.path.join(base if isinstance(base, str) else os.getcwd(), path)
        path = os.path.normpath(path)
        if os.path.isdir(path):
            raise ValueError(f"{path} is a directory; expected a file path")
        folder = os.path.dirname(path)
        if not os.path.isdir(folder):
            raise ValueError(f"the folder {folder} does not exist")
        if not os.access(path if os.path.exists(path) else folder, os.W_OK):
            raise ValueError(f"{path} is not writable by this user")
        return path

    @field_validator("flush_interval")
    @classmethod
    def _interval(cls, value: float) -> float:
        if value < 0.001:
            raise ValueError('expected a duration of at least "1ms", like "200ms"')
        return value

    @model_validator(mode="after")
    def _derive(self) -> LoggingConfig:
        self._redact = frozenset(name.lower() for name in self.redact_query)
        self._renderer = make_renderer(self.format)
        return self

    # The properties below read pydantic's private storage directly: a plain
    # ``self._redact`` goes through ``BaseModel.__getattr__``, which raises and catches
    # an AttributeError on every access (about 2 us each, measured with pydantic 2.14),
    # and the log hook reads them on every request.

    @property
    def redact(self) -> frozenset[str]:
        """Lower-cased names of the query parameters whose values are replaced."""
        redact: frozenset[str] = self._private["_redact"]
        return redact

    @property
    def renderer(self) -> Renderer:
        """Turns one line's fields into text (structlog's JSON or console renderer)."""
        renderer: Renderer = self._private["_renderer"]
        return renderer

    @property
    def destination(self) -> str | None:
        """The file path, or ``None`` for standard output."""
        return self.path

    @property
    def _private(self) -> dict[str, Any]:
        private = self.__pydantic_private__
        assert private is not None
        return private
