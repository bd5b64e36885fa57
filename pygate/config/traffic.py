"""``[routes.canary]`` and ``[routes.mirror]``: traffic management (PRODUCT.md section 11).

The two tables of a proxy route: a canary upstream that takes a share of the
requests instead of the route's ``upstream``, and a mirror upstream that gets a
copy of them. Their keys are checked here (pydantic, with key paths), and the
checks across sections (an upstream that does not exist, a canary on a route that
is not a proxy route) are :func:`traffic_issues`, run with the other route checks.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, field_validator

from .errors import ConfigIssue
from .values import Model, Size

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # an RFC 9110 header (or cookie) name
_NUMBER = re.compile(r"\s*\d+(\.\d+)?\s*")


def _percent(value: Any) -> Any:
    """A share of requests, 0 to 100: a number, or its text (``"${CANARY_WEIGHT:-10}"``)."""
    if isinstance(value, str) and _NUMBER.fullmatch(value):
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"expected a number from 0 to 100, found {value!r}")
    if not 0 <= value <= 100:
        raise ValueError(f"expected a number from 0 to 100, found {value!r}")
    return value


Percent = Annotated[float, BeforeValidator(_percent)]

STICKY = ('"none"', '"ip"', '"consumer"', '"header:NAME"', '"cookie:NAME"')


class CanaryConfig(Model):
    """``[routes.canary]``: a share of the route's requests goes to another upstream."""

    upstream: str = Field(min_length=1)  # a name from [upstreams], or a URL
    weight: Percent  # percent of requests sent to the canary instead of the route's upstream
    sticky: str = "none"  # "ip" | "consumer" | "header:NAME" | "cookie:NAME": one caller, one side
    header: str | None = None  # "NAME: always" pins a request to the canary, "NAME: never" away

    @field_validator("sticky")
    @classmethod
    def _sticky(cls, value: str) -> str:
        if value in ("none", "ip", "consumer"):
            return value
        kind, sep, name = value.partition(":")
        if sep and kind in ("header", "cookie") and _TOKEN.fullmatch(name):
            return value
        raise ValueError(f"expected {', '.join(STICKY[:-1])} or {STICKY[-1]}, found {value!r}")

    @field_validator("header")
    @classmethod
    def _header(cls, value: str | None) -> str | None:
        if value is not None and not _TOKEN.fullmatch(value):
            raise ValueError(f'expected a header name like "X-Canary", found {value!r}')
        return value


class MirrorConfig(Model):
    """``[routes.mirror]``: a copy of the route's requests goes to another upstream."""

    upstream: str = Field(min_length=1)  # a name from [upstreams], or a URL
    percent: Percent = 100.0  # share of requests mirrored
    max_body: Size = 1024 * 1024  # requests with larger bodies are not mirrored


def traffic_refs(route: Any) -> list[tuple[str, str]]:
    """``(upstream name or URL, key path below the route)`` for a route's canary and mirror."""
    refs = []
    if route.canary is not None:
        refs.append((route.canary.upstream, "canary.upstream"))
    if route.mirror is not None:
        refs.append((route.mirror.upstream, "mirror.upstream"))
    return refs


def traffic_issues(route: Any, where: str) -> list[ConfigIssue]:
    """What is wrong with a route's canary and mirror besides their own keys.

    Both need a proxy route (``upstream = ...``), and each must name an upstream other
    than the route's: a canary that is the route's upstream splits nothing, and a
    mirror that is the route's upstream (or its canary) would get every request twice
    and feed that upstream's breaker with the copies.
    """
    issues = []
    canary, mirror = route.canary, route.mirror
    for key, table in (("canary", canary), ("mirror", mirror)):
        if table is not None and route.upstream is None:
            issues.append(ConfigIssue(f"{where}.{key}", f"{key} is for proxy routes (with "
                                      "upstream = ...), not aggregate or graphql routes"))
    if route.upstream is None:
        return issues
    if canary is not None and canary.upstream == route.upstream:
        issues.append(ConfigIssue(f"{where}.canary.upstream", "the canary must be another "
                                  f"upstream than the route's ({route.upstream!r})"))
    if mirror is not None:
        if mirror.upstream == route.upstream:
            issues.append(ConfigIssue(f"{where}.mirror.upstream", "the mirror must be another "
                                      f"upstream than the route's ({route.upstream!r})"))
        elif canary is not None and mirror.upstream == canary.upstream:
            issues.append(ConfigIssue(f"{where}.mirror.upstream", "the mirror must be another "
                                      f"upstream than the route's canary ({canary.upstream!r})"))
    return issues
