"""Reading pygate.toml: TOML, ``${VAR}`` interpolation, validation with key paths."""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .checks import check_routes, cross_check
from .errors import (
    ConfigError,
    ConfigIssue,
    field_names,
    key_path,
    unknown_key,
    validation_issues,
)
from .models import Config

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
                issues.append(ConfigIssue(key, unknown_key(key, field_names(Config))))
        data = {k: v for k, v in data.items() if k not in _NOT_FROM_FILE}
    config: Config | None = None
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        issues.extend(validation_issues(exc, Config))
        issues.extend(_check_valid_part(data, exc, base_dir))
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


def _check_valid_part(data: Any, error: ValidationError, base_dir: str = "."
                      ) -> list[ConfigIssue]:
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
    config.base_dir = base_dir
    from ..upstream.tls import check_upstream_tls  # the files upstreams' tls tables name

    return check_routes(config, indices, list(upstreams)) + check_upstream_tls(config)


def load(path: str | Path, env: Mapping[str, str] | None = None) -> Config:
    """Load and validate ``pygate.toml`` (plugin tables are checked by pygate.plugins)."""
    file = Path(path)
    data = parse_toml(file)
    return load_data(data, source=str(file), base_dir=str(file.resolve().parent), env=env)


def default_path() -> str:
    return os.environ.get("PYGATE_CONFIG") or "pygate.toml"
