"""The ``[plugins.opentelemetry]`` table, validated once per distinct setting at load.

The keys of PRODUCT.md (``endpoint``, ``service_name``, ``sample``, ``headers``) and
the batching settings of the export. What the table leaves unset follows the
OpenTelemetry conventions: the ``OTEL_EXPORTER_OTLP_*`` environment variables, then
the OTLP/HTTP default endpoint. The tracer providers themselves are runtime state:
``startup`` keeps them in ``gateway.state("opentelemetry")``.
"""

from __future__ import annotations

import re
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from pygate.plugin import Duration

_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def _header_name(value: str) -> str:
    if not _TOKEN.match(value):
        raise ValueError(f"expected a header name like Authorization, found {value!r}")
    return value


def _header_value(value: str) -> str:
    if _CONTROL.search(value):
        raise ValueError("a header value may not contain control characters")
    return value


HeaderName = Annotated[str, AfterValidator(_header_name)]
HeaderValue = Annotated[str, AfterValidator(_header_value)]


class OpenTelemetryConfig(BaseModel):
    """Settings of the ``opentelemetry`` plugin; the plugin's README explains each key."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    endpoint: str | None = None
    service_name: str = Field(default="pygate", min_length=1)
    sample: float = Field(default=1.0, ge=0.0, le=1.0)
    headers: dict[HeaderName, HeaderValue] = Field(default_factory=dict)
    flush_interval: Duration = 5.0
    timeout: Duration = 10.0
    max_queue: int = Field(default=2048, ge=1)
    max_batch: int = Field(default=512, ge=1)

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 (raises ValueError for a port that is no number)
        except ValueError:
            parts = None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("expected the collector's OTLP/HTTP URL, like "
                             f"http://127.0.0.1:4318/v1/traces, found {value!r}")
        return value

    @field_validator("flush_interval", "timeout")
    @classmethod
    def _positive(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("expected a duration above zero, like \"5s\"")
        return value

    @model_validator(mode="after")
    def _batch_fits_the_queue(self) -> OpenTelemetryConfig:
        if self.max_batch > self.max_queue:
            raise ValueError(f"max_batch ({self.max_batch}) cannot exceed max_queue "
                             f"({self.max_queue})")
        return self

    def export_key(self) -> str:
        """What decides the tracer provider: configs equal in it share one."""
        return self.model_dump_json()
