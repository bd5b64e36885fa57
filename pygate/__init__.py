"""pygate: an API gateway in Python, extended through pluggy hooks.

The public surface for plugin authors: ``hookimpl``, ``Context``, ``Identity``,
``UpstreamRequest`` and the error types.
"""

from .context import Context, Identity, RouteInfo, UpstreamRequest
from .errors import (
    BadGateway,
    BadRequest,
    Forbidden,
    GatewayError,
    GatewayTimeout,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    ServiceUnavailable,
    TooManyRequests,
    Unauthorized,
    problem_response,
)
from .hookspecs import hookimpl

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
