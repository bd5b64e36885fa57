"""pygate: an API gateway in Python, extended through pluggy hooks.

Plugins import from :mod:`pygate.plugin`, the one module of the plugin API
(versioned by ``pygate.plugin.API_VERSION``). The names below are re-exported
from it so that plugins written as ``from pygate import hookimpl, Context``
keep working.
"""

from .plugin import (
    BadGateway,
    BadRequest,
    Context,
    Forbidden,
    GatewayError,
    GatewayTimeout,
    Identity,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    RouteInfo,
    ServiceUnavailable,
    TooManyRequests,
    Unauthorized,
    UpstreamRequest,
    hookimpl,
    problem_response,
)

__version__ = "0.1.0"

__all__ = [
    "BadGateway",
    "BadRequest",
    "Context",
    "Forbidden",
    "GatewayError",
    "GatewayTimeout",
    "Identity",
    "MethodNotAllowed",
    "NotFound",
    "PayloadTooLarge",
    "RouteInfo",
    "ServiceUnavailable",
    "TooManyRequests",
    "Unauthorized",
    "UpstreamRequest",
    "__version__",
    "hookimpl",
    "problem_response",
]
