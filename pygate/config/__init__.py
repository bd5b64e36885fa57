"""pygate.toml -> typed models.

Loading goes: TOML -> ``${VAR}`` interpolation -> pydantic models -> cross-checks
(route names, route kinds, upstream references, templates). Every problem is
collected as a :class:`ConfigIssue` with its key path (``routes[2].path``), and
:class:`ConfigError` carries them all so the CLI can print every error at once.
Plugin tables are validated later, against each plugin's own schema, by
:mod:`pygate.plugins`.

The package, by stage: :mod:`.errors` (issues, key paths, "did you mean"),
:mod:`.values` (durations, sizes, listen addresses, backends: the types plugins
use in their own schemas), :mod:`.models` (the sections), :mod:`.loading`
(TOML, interpolation, validation) and :mod:`.checks` (checks across sections).
Everything is imported from ``pygate.config``.
"""

from .checks import cross_check, is_url
from .errors import ConfigError, ConfigIssue, key_path, suggest
from .loading import (
    default_path,
    interpolate,
    load,
    load_data,
    parse_toml,
    validation_issues,
)
from .models import (
    HTTP_METHODS,
    AdminSection,
    AggregateConfig,
    BreakerConfig,
    CallConfig,
    Config,
    GatewaySection,
    GraphQLConfig,
    HealthConfig,
    ResolverConfig,
    RouteConfig,
    TargetConfig,
    UpstreamConfig,
)
from .values import (
    Backend,
    Duration,
    Listen,
    Model,
    Size,
    parse_backend,
    parse_duration,
    parse_listen,
    parse_size,
    split_listen,
)

__all__ = [
    "HTTP_METHODS",
    "AdminSection",
    "AggregateConfig",
    "Backend",
    "BreakerConfig",
    "CallConfig",
    "Config",
    "ConfigError",
    "ConfigIssue",
    "Duration",
    "GatewaySection",
    "GraphQLConfig",
    "HealthConfig",
    "Listen",
    "Model",
    "ResolverConfig",
    "RouteConfig",
    "Size",
    "TargetConfig",
    "UpstreamConfig",
    "cross_check",
    "default_path",
    "interpolate",
    "is_url",
    "key_path",
    "load",
    "load_data",
    "parse_backend",
    "parse_duration",
    "parse_listen",
    "parse_size",
    "parse_toml",
    "split_listen",
    "suggest",
    "validation_issues",
]
