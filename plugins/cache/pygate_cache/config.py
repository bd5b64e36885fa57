"""The ``[plugins.cache]`` table, validated (and merged per route by pygate)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pygate.plugin import Backend, Duration, Size

CACHEABLE_METHODS = ("GET", "HEAD")


class CacheConfig(BaseModel):
    """Settings of the ``cache`` plugin; see the plugin's README for each key."""

    model_config = ConfigDict(extra="forbid")

    ttl: Duration = 30.0
    backend: Backend = "memory"
    max_entries: int = Field(default=10_000, ge=1)
    max_bytes: Size = 64 * 1024 * 1024
    max_object: Size = 1024 * 1024
    methods: list[str] = Field(default_factory=lambda: list(CACHEABLE_METHODS))
    shared: bool = False
    cache_control: bool = True
    backend_timeout: Duration = 0.25
    key_prefix: str = Field(default="pygate:cache", min_length=1)

    @field_validator("ttl")
    @classmethod
    def _ttl(cls, value: float) -> float:
        if value < 0.001:
            raise ValueError(f'expected a ttl of at least "1ms", found {value!r} s')
        return value

    @field_validator("backend_timeout")
    @classmethod
    def _timeout(cls, value: float) -> float:
        if value <= 0:
            raise ValueError('expected a duration above 0, like "250ms"')
        return value

    @field_validator("max_bytes", "max_object")
    @classmethod
    def _size(cls, value: int) -> int:
        if value < 1:
            raise ValueError("expected a size of at least 1 byte")
        return value

    @field_validator("methods", mode="before")
    @classmethod
    def _methods(cls, value: Any) -> Any:
        if not isinstance(value, list):
            return value
        methods: list[str] = []
        for item in value:
            if not isinstance(item, str) or item.upper() not in CACHEABLE_METHODS:
                raise ValueError(f'only "GET" and "HEAD" responses are cached, found {item!r}')
            if item.upper() not in methods:
                methods.append(item.upper())
        if not methods:
            raise ValueError('expected at least one method: ["GET", "HEAD"]')
        return methods

    @model_validator(mode="after")
    def _object_fits(self) -> CacheConfig:
        # A memory cache cannot hold an object larger than itself.
        if self.backend == "memory" and self.max_object > self.max_bytes:
            self.max_object = self.max_bytes
        return self
