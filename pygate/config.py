"""pygate.toml -> typed models.

Loading goes: TOML -> ``${VAR}`` interpolation -> pydantic models -> cross-checks
(route names, route kinds, upstream references, templates). Every problem is
collected as a :class:`ConfigIssue` with its key path (``routes[2].path``), and
:class:`ConfigError` carries them all so the CLI can print every error at once.
Plugin tables are validated later, against each plugin's own schema, by
:mod:`pygate.plugins`.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import tomllib
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)

# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ConfigIssue:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ConfigError(Exception):
    """One or more configuration problems, each with its key path."""

    def __init__(self, file: str, issues: list[ConfigIssue]) -> None:
        self.file = file
        self.issues = issues
        super().__init__(self.render())

    def render(self) -> str:
        count = len(self.issues)
        head = f"{self.file}: {count} configuration error{'s' if count != 1 else ''}"
        return "\n".join([head, *(f"  {issue}" for issue in self.issues)])


def key_path(loc: Iterable[str | int]) -> str:
    """``("routes", 2, "path")`` -> ``routes[2].path``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            text = str(part)
            if not re.fullmatch(r"[A-Za-z0-9_-]+", text):
                text = '"' + text.replace('"', '\\"') + '"'
            out += f".{text}" if out else text
    return out


def suggest(name: str, options: Iterable[str]) -> str:
    """`` did you mean 'x'?`` for the nearest valid name, or an empty string."""
    close = difflib.get_close_matches(name, list(options), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


# ---------------------------------------------------------------------------
# Durations, sizes, listen addresses
# ---------------------------------------------------------------------------

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|KiB|MiB|GiB)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"b": 1, "kb": 1024, "mb": 1024**2, "gb": 1024**3, "kib": 1024, "mib": 1024**2,
               "gib": 1024**3}


def parse_duration(value: Any) -> float:
    """``"250ms"``, ``"2s"``, ``"1m"``, ``"1h"`` (or a number of seconds) -> seconds."""
    if isinstance(value, bool):
        raise ValueError(f'expected a duration like "2s", found {value!r}')
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"expected a non-negative duration, found {value!r}")
        return float(value)
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            return float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    raise ValueError(f'expected a duration like "250ms", "2s", "1m" or "1h", found {value!r}')


def parse_size(value: Any) -> int:
    """``"512KB"``, ``"10MB"`` (or a number of bytes) -> bytes (1KB = 1024 bytes)."""
    if isinstance(value, bool):
        raise ValueError(f'expected a size like "10MB", found {value!r}')
    if isinstance(value, int) and value >= 0:
        return value
    if isinstance(value, str):
        match = _SIZE.match(value)
        if match:
            unit = (match.group(2) or "B").lower()
            return int(float(match.group(1)) * _SIZE_UNITS[unit])
    raise ValueError(f'expected a size like "512KB" or "10MB", found {value!r}')


def parse_listen(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f'expected "HOST:PORT", found {value!r}')
    _, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f'expected "HOST:PORT" with a port 0-65535, found {value!r}')
    return value


def split_listen(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


Duration = Annotated[float, BeforeValidator(parse_duration)]
Size = Annotated[int, BeforeValidator(parse_size)]
Listen = Annotated[str, BeforeValidator(parse_listen)]


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


# ---------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------


def _workers(value: Any) -> int | str:
    if value == "auto":
        return "auto"
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    raise ValueError(f'expected a number of workers >= 1 or "auto", found {value!r}')


class GatewaySection(Model):
    listen: Listen = "127.0.0.1:8080"
    workers: Annotated[int | str, BeforeValidator(_workers)] = 1
    trusted_proxies: list[str] = Field(default_factory=list)
    max_body: Size = 10 * 1024 * 1024
    timeout: Duration = 30.0
    drain_timeout: Duration = 10.0

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

    @field_validator("hash_on")
    @classmethod
    def _hash_on(cls, value: str) -> str:
        if value in ("ip", "consumer") or (value.startswith("header:") and len(value) > 7):
            return value
        raise ValueError(f'expected "ip", "consumer" or "header:NAME", found {value!r}')


class CallConfig(Model):
    upstream: str
    path: str = "/"
    method: str = "GET"
    query: dict[str, str] = Field(default_factory=dict)
    headers: dict[str, str] = Field(default_factory=dict)
    body: Any = None
    fields: list[str] | None = None
    rename: dict[str, str] = Field(default_factory=dict)
    merge: bool = False
    optional: bool = False
    timeout: Duration | None = None


class AggregateConfig(Model):
    timeout: Duration = 3.0
    calls: dict[str, CallConfig] = Field(min_length=1)


class ResolverConfig(Model):
    upstream: str
    path: str = "/"
    method: str = "GET"
    query: dict[str, str] = Field(default_factory=dict)
    headers: dict[str, str] = Field(default_factory=dict)
    timeout: Duration | None = None


class GraphQLConfig(Model):
    schema_: str = Field(alias="schema")
    max_depth: int = Field(default=8, ge=1)
    introspection: bool = True
    resolvers: dict[str, ResolverConfig] = Field(default_factory=dict)


HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT")


class RouteConfig(Model):
    name: str = Field(min_length=1)
    path: str
    methods: list[str] | None = None
    hosts: list[str] | None = None
    headers: dict[str, str] | None = None
    upstream: str | None = None
    aggregate: AggregateConfig | None = None
    graphql: GraphQLConfig | None = None
    strip_path: bool = True
    preserve_host: bool = False
    rewrite: str | None = None
    plugins: dict[str, Any] = Field(default_factory=dict)

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
        if self.aggregate is not None:
            return "aggregate"
        if self.graphql is not None:
            return "graphql"
        return "upstream"


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


# ---------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-(.*?))?\}")


def interpolate(data: Any, env: Mapping[str, str], issues: list[ConfigIssue],
                loc: tuple[str | int, ...] = ()) -> Any:
    """Replace ``${VAR}`` and ``${VAR:-default}`` in every string of the tree."""
    if isinstance(data, str):
        if "${" not in data:
            return data

        def replace(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            issues.append(ConfigIssue(key_path(loc), f"environment variable {name} is not set "
                                      f"(use ${{{name}:-default}} for a default)"))
            return ""

        return _VAR.sub(replace, data)
    if isinstance(data, dict):
        return {k: interpolate(v, env, issues, (*loc, k)) for k, v in data.items()}
    if isinstance(data, list):
        return [interpolate(v, env, issues, (*loc, i)) for i, v in enumerate(data)]
    return data


def _unwrap(annotation: Any) -> list[Any]:
    """The model classes an annotation may hold (through Optional, list, dict, Annotated)."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if origin in (list, tuple, set, frozenset):
        return [x for arg in typing.get_args(annotation) for x in _unwrap(arg)]
    if origin is dict:
        return _unwrap(typing.get_args(annotation)[1])
    if origin in (typing.Union, types.UnionType):
        return [x for arg in typing.get_args(annotation) for x in _unwrap(arg)]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return []


def _model_at(model: type[BaseModel], loc: tuple[str | int, ...]) -> type[BaseModel] | None:
    """The model class that holds the last element of ``loc``."""
    current: type[BaseModel] | None = model
    for part in loc[:-1]:
        if current is None:
            return None
        if isinstance(part, int):
            continue
        field = current.model_fields.get(str(part))
        if field is None:
            # a dict key (upstream name, call name) or a list index: stay on current type
            continue
        models = _unwrap(field.annotation)
        current = models[0] if models else None
    return current


def _field_names(model: type[BaseModel]) -> list[str]:
    return [f.alias or name for name, f in model.model_fields.items() if not f.exclude]


def validation_issues(error: ValidationError, model: type[BaseModel],
                      prefix: tuple[str | int, ...] = ()) -> list[ConfigIssue]:
    """pydantic errors -> issues with key paths, expected vs found, and name suggestions."""
    issues = []
    for err in error.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and "[" in p))
        path = key_path((*prefix, *loc))
        kind = err["type"]
        if kind == "extra_forbidden":
            owner = _model_at(model, loc)
            options = _field_names(owner) if owner else []
            name = str(loc[-1]) if loc else ""
            allowed = f" (allowed: {', '.join(options)})" if options else ""
            issues.append(ConfigIssue(path, f"unknown key{suggest(name, options) or allowed}"))
            continue
        if kind == "missing":
            issues.append(ConfigIssue(path, "required key is missing"))
            continue
        message = err["msg"]
        if message.startswith("Value error, "):
            message = message[len("Value error, "):]
        elif "input" in err and not isinstance(err["input"], dict | list):
            message = f"{message[0].lower()}{message[1:]}, found {err['input']!r}"
        issues.append(ConfigIssue(path, message))
    return issues


def parse_toml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(str(path), [ConfigIssue("", "file not found")]) from None
    except OSError as exc:
        issue = ConfigIssue("", f"cannot read file: {exc.strerror}")
        raise ConfigError(str(path), [issue]) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), [ConfigIssue("", f"invalid TOML: {exc}")]) from None


def load_data(data: dict[str, Any], *, source: str = "<config>", base_dir: str = ".",
              env: Mapping[str, str] | None = None) -> Config:
    """Validate a config tree (already parsed) and return the model, or raise ConfigError."""
    issues: list[ConfigIssue] = []
    data = interpolate(data, os.environ if env is None else env, issues)
    config: Config | None = None
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        issues.extend(validation_issues(exc, Config))
    if config is not None:
        config.source = source
        config.base_dir = base_dir
        issues.extend(cross_check(config))
    if issues:
        raise ConfigError(source, issues)
    assert config is not None
    return config


def load(path: str | Path, env: Mapping[str, str] | None = None) -> Config:
    """Load and validate ``pygate.toml`` (plugin tables are checked by pygate.plugins)."""
    file = Path(path)
    data = parse_toml(file)
    return load_data(data, source=str(file), base_dir=str(file.resolve().parent), env=env)


def default_path() -> str:
    return os.environ.get("PYGATE_CONFIG") or "pygate.toml"


def is_url(value: str) -> bool:
    return value.startswith(("http://", "https://"))


def cross_check(config: Config) -> list[ConfigIssue]:
    """Checks that span sections: unique names, route kinds, references, templates."""
    from .router import TemplateError, compile_path

    issues: list[ConfigIssue] = []
    seen: dict[str, int] = {}
    upstream_names = list(config.upstreams)

    def check_upstream_ref(ref: str, loc: str) -> None:
        if is_url(ref):
            try:
                TargetConfig(url=ref)
            except ValidationError as exc:
                issues.append(ConfigIssue(loc, validation_issues(exc, TargetConfig)[0].message))
        elif ref not in config.upstreams:
            hint = suggest(ref, upstream_names) or (
                f"; defined upstreams: {', '.join(upstream_names)}" if upstream_names
                else "; no [upstreams] are defined (or give a URL)")
            issues.append(ConfigIssue(loc, f"unknown upstream {ref!r}{hint}"))

    if config.admin is not None and config.admin.token is None:
        host, _ = split_listen(config.admin.listen)
        if host not in ("127.0.0.1", "::1", "localhost"):
            issues.append(ConfigIssue("admin.token",
                                      "required when admin.listen is not a loopback address"))

    for index, route in enumerate(config.routes):
        where = f"routes[{index}]"
        if route.name in seen:
            issues.append(ConfigIssue(f"{where}.name", f"duplicate route name {route.name!r} "
                                      f"(also routes[{seen[route.name]}])"))
        else:
            seen[route.name] = index
        kinds = [k for k in ("upstream", "aggregate", "graphql")
                 if getattr(route, k) is not None]
        if len(kinds) != 1:
            found = ", ".join(kinds) if kinds else "none"
            issues.append(ConfigIssue(where, "a route needs exactly one of upstream, aggregate "
                                      f"or graphql (found {found})"))
        try:
            compiled = compile_path(route.path)
        except TemplateError as exc:
            issues.append(ConfigIssue(f"{where}.path", str(exc)))
            compiled = None
        if route.rewrite is not None and compiled is not None:
            for name in re.findall(r"\{([^}:]+)(?::path)?\}", route.rewrite):
                if name not in compiled.params:
                    issues.append(ConfigIssue(f"{where}.rewrite", f"unknown path parameter "
                                              f"{{{name}}}{suggest(name, compiled.params)}"))
        if route.upstream is not None:
            check_upstream_ref(route.upstream, f"{where}.upstream")
        if route.aggregate is not None:
            for call_name, call in route.aggregate.calls.items():
                check_upstream_ref(call.upstream,
                                   f"{where}.aggregate.calls.{key_path([call_name])}.upstream")
        if route.graphql is not None:
            for field_name, resolver in route.graphql.resolvers.items():
                check_upstream_ref(resolver.upstream,
                                   f"{where}.graphql.resolvers.{key_path([field_name])}.upstream")
        for host in route.hosts or []:
            if not re.fullmatch(r"(\*\.)?[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?(:\d+)?", host):
                issues.append(ConfigIssue(f"{where}.hosts",
                                          f'expected host names like "api.example.com" or '
                                          f'"*.example.com", found {host!r}'))
    return issues
