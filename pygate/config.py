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
    candidates = list(options)
    close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    if not close and len(name) >= 2:
        # short names ({ib} for {id}) fall below the ratio with a single typo
        close = [c for c in candidates if _one_typo(name.lower(), c.lower())][:1]
    return f"; did you mean '{close[0]}'?" if close else ""


def _one_typo(a: str, b: str) -> bool:
    """One character replaced, inserted, deleted, or two neighbours swapped."""
    if a == b or abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        diff = [i for i in range(len(a)) if a[i] != b[i]]
        return len(diff) == 1 or (len(diff) == 2 and diff[1] == diff[0] + 1
                                  and a[diff[0]] == b[diff[1]] and a[diff[1]] == b[diff[0]])
    short, long = (a, b) if len(a) < len(b) else (b, a)
    return any(long[:i] + long[i + 1:] == short for i in range(len(long)))


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


def parse_backend(value: Any) -> str:
    """A plugin's state backend: ``"memory"`` or a Redis URL (``redis://``, ``rediss://``,
    ``unix://``), checked with redis-py's own parser when it is installed."""
    if value == "memory":
        return "memory"
    if isinstance(value, str) and value.startswith(("redis://", "rediss://", "unix://")):
        try:
            from redis.connection import parse_url
        except ImportError:  # the plugin that needs Redis depends on redis-py
            return value
        try:
            parse_url(value)
        except ValueError as exc:
            raise ValueError(f"invalid Redis URL: {exc}") from None
        return value
    raise ValueError(f'expected "memory" or a URL like "redis://host:port/db", found {value!r}')


Duration = Annotated[float, BeforeValidator(parse_duration)]
Size = Annotated[int, BeforeValidator(parse_size)]
Listen = Annotated[str, BeforeValidator(parse_listen)]
Backend = Annotated[str, BeforeValidator(parse_backend)]  # "memory" or a Redis URL


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


# ---------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------


def _workers(value: Any) -> int | str:
    if value == "auto":
        return "auto"
    if isinstance(value, str) and value.isascii() and value.strip().isdigit():
        value = int(value)  # e.g. workers = "${PYGATE_WORKERS:-2}"
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
            value = env.get(name)
            if value is not None and (value or default is None):
                return value
            if default is not None:
                return default  # unset or empty, as in the shell
            issues.append(ConfigIssue(key_path(loc), f"environment variable {name} is not set "
                                      f"(use ${{{name}:-default}} for a default)"))
            return ""

        return _VAR.sub(replace, data)
    if isinstance(data, dict):
        return {k: interpolate(v, env, issues, (*loc, k)) for k, v in data.items()}
    if isinstance(data, list):
        return [interpolate(v, env, issues, (*loc, i)) for i, v in enumerate(data)]
    return data


def _branches(annotation: Any) -> list[Any]:
    """The annotations an annotation may stand for (through Annotated and unions)."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _branches(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return [x for arg in typing.get_args(annotation) for x in _branches(arg)]
    return [annotation]


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _model_at(model: type[BaseModel], loc: tuple[str | int, ...]) -> type[BaseModel] | None:
    """The model class that holds the last element of ``loc``.

    Each element is read the way the annotation at that point says: a field
    name of a model, a key of a dict, or an index of a list.
    """
    current: list[Any] = [model]
    for part in loc[:-1]:
        following: list[Any] = []
        for annotation in (b for a in current for b in _branches(a)):
            origin = typing.get_origin(annotation)
            if origin in (list, tuple, set, frozenset) and isinstance(part, int):
                following.extend(typing.get_args(annotation)[:1])
            elif origin is dict and isinstance(part, str):
                following.append(typing.get_args(annotation)[1])
            elif _is_model(annotation) and isinstance(part, str):
                for name, field in annotation.model_fields.items():
                    if (field.alias or name) == part:
                        following.append(field.annotation)
        current = following
    for annotation in (b for a in current for b in _branches(a)):
        if _is_model(annotation):
            found: type[BaseModel] = annotation
            return found
    return None


def _field_names(model: type[BaseModel]) -> list[str]:
    return [f.alias or name for name, f in model.model_fields.items() if not f.exclude]


def _unknown_key(name: str, options: list[str]) -> str:
    allowed = f" (allowed: {', '.join(options)})" if options else ""
    return f"unknown key{suggest(name, options) or allowed}"


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
            issues.append(ConfigIssue(path, _unknown_key(name, options)))
            continue
        if kind == "missing":
            issues.append(ConfigIssue(path, "required key is missing"))
            continue
        message = err["msg"]
        if message.startswith("Value error, "):
            issues.append(ConfigIssue(path, message[len("Value error, "):]))
            continue
        if kind in ("model_type", "dict_type"):
            message = "expected a table"  # TOML words, not pydantic's class names
        elif kind == "list_type":
            message = "expected an array"
        else:
            message = f"{message[0].lower()}{message[1:]}"
        type_error = kind in ("model_type", "dict_type", "list_type")
        if "input" in err and (type_error or not isinstance(err["input"], dict | list)):
            found = repr(err["input"])
            message = f"{message}, found {found if len(found) <= 60 else found[:57] + '...'}"
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
    except UnicodeDecodeError as exc:
        issue = ConfigIssue("", f"cannot read file: not UTF-8 text (byte {exc.start})")
        raise ConfigError(str(path), [issue]) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), [ConfigIssue("", f"invalid TOML: {exc}")]) from None


def load_data(data: dict[str, Any], *, source: str = "<config>", base_dir: str = ".",
              env: Mapping[str, str] | None = None) -> Config:
    """Validate a config tree (already parsed) and return the model, or raise ConfigError."""
    unset: list[ConfigIssue] = []
    data = interpolate(data, os.environ if env is None else env, unset)
    issues: list[ConfigIssue] = []
    if isinstance(data, dict) and any(key in data for key in _NOT_FROM_FILE):
        # model fields that record where the file came from; not keys of the file
        for key in _NOT_FROM_FILE:
            if key in data:
                issues.append(ConfigIssue(key, _unknown_key(key, _field_names(Config))))
        data = {k: v for k, v in data.items() if k not in _NOT_FROM_FILE}
    config: Config | None = None
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        issues.extend(validation_issues(exc, Config))
        issues.extend(_check_valid_part(data, exc))
    if config is not None:
        config.source = source
        config.base_dir = base_dir
        issues.extend(cross_check(config))
    if unset or issues:
        # an unset variable became "": report it once, not again as an invalid value
        unset_paths = {issue.path for issue in unset}
        raise ConfigError(source, unset + [i for i in issues if i.path not in unset_paths])
    assert config is not None
    return config


_NOT_FROM_FILE = ("source", "base_dir")


def _check_valid_part(data: Any, error: ValidationError) -> list[ConfigIssue]:
    """Cross-check the routes and upstreams that validated, so one run reports every error.

    Routes and upstreams with their own errors are left out (their errors are
    already reported), keeping the original route indices in key paths; every
    upstream name in the file still counts as defined for references.
    """
    if not isinstance(data, dict):
        return []
    bad_routes: set[int] = set()
    bad_upstreams: set[str] = set()
    bad_sections: set[str] = set()
    for err in error.errors():
        loc = err["loc"]
        if not loc:
            return []
        if loc[0] == "routes" and len(loc) > 1 and isinstance(loc[1], int):
            bad_routes.add(loc[1])
        elif loc[0] == "upstreams" and len(loc) > 1 and isinstance(loc[1], str):
            bad_upstreams.add(loc[1])
        else:
            bad_sections.add(str(loc[0]))
    if bad_sections & {"routes", "upstreams"}:
        return []
    routes = data.get("routes", [])
    upstreams = data.get("upstreams", {})
    indices = [i for i in range(len(routes)) if i not in bad_routes]
    valid = {k: v for k, v in data.items() if k not in bad_sections}
    valid["routes"] = [routes[i] for i in indices]
    valid["upstreams"] = {k: v for k, v in upstreams.items() if k not in bad_upstreams}
    try:
        config = Config.model_validate(valid)
    except ValidationError:
        return []
    return _cross_check(config, indices, list(upstreams))


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
    return _cross_check(config, range(len(config.routes)), list(config.upstreams))


_REWRITE_PLACEHOLDER = re.compile(r"\{[^{}]*\}")
_REWRITE_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::path)?\}")


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _rewrite_issues(rewrite: str, params: list[str], where: str) -> list[ConfigIssue]:
    issues = []
    outside = _REWRITE_PLACEHOLDER.sub("", rewrite)
    if "{" in outside or "}" in outside:
        issues.append(ConfigIssue(where, f"unbalanced braces in {rewrite!r}"))
    for placeholder in _REWRITE_PLACEHOLDER.findall(rewrite):
        found = _REWRITE_PARAM.fullmatch(placeholder)
        if found is None:
            issues.append(ConfigIssue(where, "expected a parameter like {id} or {rest:path}, "
                                      f"found {placeholder!r}"))
        elif found.group(1) not in params:
            name = found.group(1)
            issues.append(ConfigIssue(where, f"unknown path parameter {{{name}}}"
                                      f"{suggest(name, params)}"))
    return issues


def _cross_check(config: Config, indices: Iterable[int],
                 upstream_names: list[str]) -> list[ConfigIssue]:
    """:func:`cross_check` with the file's index of each route and every upstream name."""
    from .router import TemplateError, compile_path

    issues: list[ConfigIssue] = []
    seen: dict[str, int] = {}

    def check_upstream_ref(ref: str, loc: str) -> None:
        if is_url(ref):
            try:
                TargetConfig(url=ref)
            except ValidationError as exc:
                issues.append(ConfigIssue(loc, validation_issues(exc, TargetConfig)[0].message))
        elif ref not in upstream_names:
            hint = suggest(ref, upstream_names) or (
                f"; defined upstreams: {', '.join(upstream_names)}" if upstream_names
                else "; no [upstreams] are defined (or give a URL)")
            issues.append(ConfigIssue(loc, f"unknown upstream {ref!r}{hint}"))

    if config.admin is not None and not (config.admin.token or "").strip():
        host, _ = split_listen(config.admin.listen)
        if not _is_loopback(host):
            issues.append(ConfigIssue("admin.token", "required (and not empty) when "
                                      "admin.listen is not a loopback address"))

    for index, route in zip(indices, config.routes, strict=True):
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
            issues.extend(_rewrite_issues(route.rewrite, compiled.params, f"{where}.rewrite"))
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
            # no port: hosts are matched against the Host header without its port
            if not re.fullmatch(r"(\*\.)?[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?", host):
                issues.append(ConfigIssue(f"{where}.hosts",
                                          f'expected host names like "api.example.com" or '
                                          f'"*.example.com" (without a port), found {host!r}'))
    return issues
