"""The ``[plugins.oauth2-introspection]`` table, validated once per route at load."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from pygate.plugin import Duration


class IntrospectionConfig(BaseModel):
    """Settings of the ``oauth2-introspection`` plugin (see its README for each key)."""

    model_config = ConfigDict(extra="forbid")

    introspection_url: str
    client_id: str = Field(min_length=1)
    client_secret: SecretStr
    ttl: Duration = 60.0
    timeout: Duration = 2.0
    token_type_hint: str | None = "access_token"
    cache_size: int = Field(default=10_000, ge=0)
    optional: bool = False

    @field_validator("introspection_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/?#\s]+", value):
            raise ValueError('expected an http(s) URL like "https://idp/introspect", '
                             f"found {value!r}")
        return value

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("expected a duration above zero")
        return value

    def cache_key(self) -> tuple[object, ...]:
        """What makes two routes' settings share one introspection cache."""
        return (self.introspection_url, self.client_id, self.client_secret.get_secret_value(),
                self.token_type_hint, self.ttl, self.timeout, self.cache_size)
