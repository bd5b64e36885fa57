"""The ``[plugins.rate-limit]`` table, validated (and merged per route by pygate)."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from pygate.plugin import Backend, Duration

from .algorithms import Limit

_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


class LimitConfig(BaseModel):
    """One entry of ``limits``: ``{ limit = 10, window = "1s" }``."""

    model_config = ConfigDict(extra="forbid")

    limit: int = Field(ge=1)
    window: Duration

    @field_validator("window")
    @classmethod
    def _window(cls, value: float) -> float:
        return _check_window(value)


def _check_window(value: float) -> float:
    if value < 0.001:
        raise ValueError(f'expected a window of at least "1ms", found {value!r} s')
    return value


class RateLimitConfig(BaseModel):
    """Settings of the ``rate-limit`` plugin; see the plugin's README for each key."""

    model_config = ConfigDict(extra="forbid")

    limit: int | None = Field(default=None, ge=1)
    window: Duration | None = None
    limits: list[LimitConfig] | None = None
    algorithm: Literal["sliding-window", "fixed-window", "token-bucket"] = "sliding-window"
    key: str = "ip"
    scope: Literal["route", "global"] = "route"
    backend: Backend = "memory"
    on_backend_error: Literal["allow", "deny"] = "allow"
    backend_timeout: Duration = 0.25
    key_prefix: str = Field(default="pygate:rl", min_length=1)

    _limits: tuple[Limit, ...] = PrivateAttr(default=())

    @field_validator("window")
    @classmethod
    def _window(cls, value: float | None) -> float | None:
        return None if value is None else _check_window(value)

    @field_validator("key")
    @classmethod
    def _key(cls, value: str) -> str:
        if value in ("ip", "consumer"):
            return value
        kind, sep, name = value.partition(":")
        if kind == "header" and sep and _HEADER_NAME.match(name):
            return value
        raise ValueError(f'expected "ip", "consumer" or "header:NAME", found {value!r}')

    @field_validator("backend_timeout")
    @classmethod
    def _timeout(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("expected a duration above 0, like \"250ms\"")
        return value

    @model_validator(mode="after")
    def _one_form(self) -> RateLimitConfig:
        single = self.limit is not None or self.window is not None
        if single and self.limits is not None:
            raise ValueError("give either limit and window, or limits, not both")
        if self.limits is not None and not self.limits:
            raise ValueError("limits must hold at least one { limit = N, window = \"1m\" }")
        if self.limits is None and (self.limit is None or self.window is None):
            raise ValueError('set limit and window (limit = 100, window = "1m"), '
                             "or limits = [{ limit = 10, window = \"1s\" }, ...]")
        if self.limits is not None:
            pairs = [(item.limit, item.window) for item in self.limits]
        else:
            assert self.limit is not None and self.window is not None
            pairs = [(self.limit, self.window)]
        limits = (Limit(limit, max(1, round(window * 1000))) for limit, window in pairs)
        self._limits = tuple(dict.fromkeys(limits))  # duplicates would share one counter
        return self

    @property
    def effective_limits(self) -> tuple[Limit, ...]:
        """Every limit that applies (windows in whole milliseconds), computed once."""
        # read directly: pydantic's lookup of private attributes costs microseconds
        return self.__pydantic_private__["_limits"]  # type: ignore[index]
