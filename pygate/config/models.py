"""The sections of pygate.toml as pydantic models."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BeforeValidator,
    Field,
    field_validator,
)

from .errors import suggest
from .traffic import CanaryConfig, MirrorConfig
from .values import Duration, Listen, Model, Size


def _workers(value: Any) -> int | str:
    if value == "auto":
        return "auto"
    if isinstance(value, str) and value.isascii() and value.strip().isdigit():
        value = int(value)  # e.g. workers = "${PYGATE_WORKERS:-2}"
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    raise ValueError(f'expected a number of workers >= 1 or "auto", found {value!r}')


class CertPair(Model):
    cert: str = Field(min_length=1)
    key: str = Field(min_length=1)


class TlsSection(Model):
    """``[gateway.tls]`` (PRODUCT.md section 10): the listener speaks TLS only."""

    cert: str = Field(min_length=1)
    key: str = Field(min_length=1)
    certs: list[CertPair] = Field(default_factory=list)
    min_version: Literal["1.2", "1.3"] = "1.2"
    http2: bool = True
    client_ca: str | None = None
    client_cert: Literal["optional", "required"] = "optional"
    hsts: Duration | None = None

    @field_validator("min_version", mode="before")
    @classmethod
    def _version(cls, value: Any) -> Any:
        if isinstance(value, float | int) and not isinstance(value, bool):
            return str(value)  # min_version = 1.3 written as a number
        return value


class GatewaySection(Model):
    listen: Listen = "127.0.0.1:8080"
    workers: Annotated[int | str, BeforeValidator(_workers)] = 1
    trusted_proxies: list[str] = Field(default_factory=list)
    max_body: Size = 10 * 1024 * 1024
    timeout: Duration = 30.0
    drain_timeout: Duration = 10.0
    # PRODUCT.md section 4, items 7-9 (docs/security.md)
    underscore_headers: Literal["drop", "reject", "allow"] = "drop"
    path_case: Literal["sensitive", "insensitive"] = "sensitive"
    header_timeout: Duration = Field(default=10.0, gt=0)
    keepalive_timeout: Duration = Field(default=75.0, gt=0)
    # PRODUCT.md section 10: TLS and HTTP/2 at the edge
    tls: TlsSection | None = None
    redirect_http: Listen | None = None
    h2c: bool = False
    max_concurrent_streams: int = Field(default=100, ge=1, le=10_000)

    @field_validator("trusted_proxies")
    @classmethod
    def _cidrs(cls, value: list[str]) -> list[str]:
        for cidr in value:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ValueError(f"expected CIDRs like 10.0.0.0/8, found {cidr!r}") from None
        return value

    def trusted_networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        return [ipaddress.ip_network(c, strict=False) for c in self.trusted_proxies]


class AdminSection(Model):
    listen: Listen = "127.0.0.1:9901"
    token: str | None = None


class TargetConfig(Model):
    url: str
    weight: int = Field(default=1, ge=1, le=1000)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/?#\s]+/?$", value):
            raise ValueError(f'expected a target like "http://127.0.0.1:3001", found {value!r}')
        return value.rstrip("/")


def _target(value: Any) -> Any:
    return {"url": value} if isinstance(value, str) else value


class HealthConfig(Model):
    path: str = "/health"
    interval: Duration = 5.0
    timeout: Duration = 1.0
    unhealthy: int = Field(default=2, ge=1)
    healthy: int = Field(default=2, ge=1)


class UpstreamTls(Model):
    """``tls`` of an upstream: how its ``https://`` targets are verified and
    whom the gateway presents itself as (PRODUCT.md section 10)."""

    ca: str | None = None
    verify: bool = True
    server_name: str | None = None
    cert: str | None = None
    key: str | None = None


class BreakerConfig(Model):
    failures: int = Field(default=5, ge=1)
    cooldown: Duration = 30.0


class UpstreamConfig(Model):
    targets: list[Annotated[TargetConfig, BeforeValidator(_target)]] = Field(min_length=1)
    balancer: Literal["round-robin", "least-conn", "random", "hash"] = "round-robin"
    hash_on: str = "ip"
    connect_timeout: Duration = 2.0
    read_timeout: Duration = 30.0
    retries: int = Field(default=1, ge=0, le=10)
    max_connections: int = Field(default=256, ge=1)
    health: HealthConfig | None = None
    breaker: BreakerConfig | None = None
    tls: UpstreamTls | None = None

    @field_validator("hash_on")
    @classmethod
    def _hash_on(cls, value: str) -> str:
        if value in ("ip", "consumer") or (value.startswith("header:") and len(value) > 7):
            return value
        raise ValueError(f'expected "ip", "consumer" or "header:NAME", found {value!r}')


class BatchConfig(Model):
    """``batch = { key = "userId", max = 100 }``: one call for the parents of a GraphQL field."""

    key: str = Field(min_length=1)  # the items' field matched against each parent's value
    max: int = Field(default=100, ge=1)  # parents' values in one call

    @field_validator("max", mode="before")
    @classmethod
    def _not_bool(cls, value: Any) -> Any:
        if isinstance(value, bool):  # pydantic would read true as 1
            raise ValueError(f"expected a whole number >= 1, found {value!r}")
        return value


class ResolverConfig(Model):
    """An upstream call behind a GraphQL field; the base of an aggregate route's call."""

    upstream: str
    path: str = "/"
    method: str = "GET"
    query: dict[str, str] = Field(default_factory=dict)
    headers: dict[str, str] = Field(default_factory=dict)
    timeout: Duration | None = None
    body: Any = None  # a JSON body: a placeholder, or a table (or list) of them
    batch: BatchConfig | None = None  # GraphQL resolvers only


class CallConfig(ResolverConfig):
    """One call of an aggregate route: a resolver's keys plus how to shape its result."""

    fields: list[str] | None = None
    rename: dict[str, str] = Field(default_factory=dict)
    merge: bool = False
    optional: bool = False

    @field_validator("batch")
    @classmethod
    def _no_batch(cls, value: BatchConfig | None) -> None:
        if value is not None:
            raise ValueError("batch is for GraphQL resolvers: an aggregate call is made once "
                             "per request")
        return None


class AggregateConfig(Model):
    timeout: Duration = 3.0
    calls: dict[str, CallConfig] = Field(min_length=1)


class GraphQLConfig(Model):
    schema_: str = Field(alias="schema")
    max_depth: int = Field(default=8, ge=1)
    max_aliases: int = Field(default=15, ge=1)  # aliased fields in one document
    max_cost: int = Field(default=1000, ge=1)  # estimated upstream calls, before any call
    list_size: int = Field(default=10, ge=1)  # the items max_cost counts for each list
    max_calls: int = Field(default=200, ge=1)  # upstream calls one request may make
    introspection: bool = True
    persisted_queries: bool = True  # Automatic Persisted Queries (extensions.persistedQuery)
    resolvers: dict[str, ResolverConfig] = Field(default_factory=dict)

    @field_validator("max_depth", "max_aliases", "max_cost", "list_size", "max_calls",
                     mode="before")
    @classmethod
    def _not_bool(cls, value: Any) -> Any:
        if isinstance(value, bool):  # pydantic would read true as 1
            raise ValueError(f"expected a whole number >= 1, found {value!r}")
        return value


HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT")


class RouteConfig(Model):
    name: str = Field(min_length=1)
    path: str
    methods: list[str] | None = None
    hosts: list[str] | None = None
    headers: dict[str, str] | None = None
    # The route kinds' keys (exactly one is set): each is a kind in pygate.kinds.KINDS.
    upstream: str | None = None
    aggregate: AggregateConfig | None = None
    graphql: GraphQLConfig | None = None
    strip_path: bool = True
    preserve_host: bool = False
    rewrite: str | None = None
    plugins: dict[str, Any] = Field(default_factory=dict)
    # PRODUCT.md section 11, proxy routes only (pygate.config.traffic)
    canary: CanaryConfig | None = None
    mirror: MirrorConfig | None = None

    @field_validator("path", "rewrite")
    @classmethod
    def _absolute(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("/"):
            raise ValueError(f"expected a path starting with '/', found {value!r}")
        return value

    @field_validator("methods")
    @classmethod
    def _methods(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        out = []
        for method in value:
            upper = method.upper()
            if upper not in HTTP_METHODS:
                raise ValueError(
                    f"expected HTTP methods ({', '.join(HTTP_METHODS)}), found {method!r}"
                    + suggest(upper, HTTP_METHODS)
                )
            out.append(upper)
        return out

    @field_validator("plugins")
    @classmethod
    def _plugins(cls, value: dict[str, Any]) -> dict[str, Any]:
        for name, setting in value.items():
            if not isinstance(setting, dict | bool):
                raise ValueError(
                    f"plugin {name!r}: expected a table of settings, true or false, "
                    f"found {setting!r}"
                )
        return value

    @property
    def kind(self) -> str:
        """The route's kind: the one of its kind keys that is set (pygate.kinds.KINDS)."""
        from ..kinds import kind_of

        found = kind_of(self)
        return found[0].key if found is not None else "none"


class Config(Model):
    gateway: GatewaySection = Field(default_factory=GatewaySection)
    admin: AdminSection | None = None
    upstreams: dict[str, UpstreamConfig] = Field(default_factory=dict)
    plugins: dict[str, dict[str, Any]] = Field(default_factory=dict)
    routes: list[RouteConfig] = Field(default_factory=list)

    # Not part of the file: where it came from, for relative paths and messages.
    source: str = Field(default="<config>", exclude=True)
    base_dir: str = Field(default=".", exclude=True)

    def resolve_path(self, path: str) -> Path:
        """A path from the file, relative to the config file's folder."""
        candidate = Path(path)
        return candidate if candidate.is_absolute() else Path(self.base_dir) / candidate
