"""The plugin API: everything a pygate plugin may use, in one module.

A plugin imports from here and nothing else of ``pygate``::

    from pygate.plugin import Context, Gateway, Unauthorized, hookimpl

What is here:

- ``hookimpl``, the marker of hook implementations (the hooks are listed in
  :mod:`pygate.hookspecs` and docs/plugin-hooks.md);
- the request's view: :class:`Context`, :class:`Identity`, :class:`RouteInfo`,
  :class:`UpstreamRequest`, :class:`ClientCert`;
- the error types that become RFC 9457 problem documents: :class:`GatewayError`
  and its subclasses, and :func:`problem_response`;
- the value types of plugin config models: ``Duration``, ``Size``, ``Backend``,
  and the helpers for config error messages: :func:`suggest`, :func:`key_path`;
- :class:`ValueTemplate` and :class:`MissingValue`: configured values with the
  request placeholders of aggregate routes (``{NAME}``, ``{query.NAME}``,
  ``{header.NAME}``, ``{identity.FIELD}``), parsed at load, filled per request;
- :class:`Gateway`, the running gateway as a plugin sees it, handed to
  ``startup(gateway, config)`` and ``shutdown(gateway)`` and set on every
  request's ``ctx.gateway``; and :class:`PerLoop`, the per-event-loop holder
  behind :meth:`Gateway.shared`.

**Where a plugin keeps state.** The validated config (``ctx.config``) holds
settings, and what is derived from them alone at load (a parsed key, compiled
rules), never runtime objects. Everything a plugin keeps for the gateway's
lifetime (HTTP clients of its own, caches, sinks, background tasks) lives in
``gateway.state(NAME)``, a dict that belongs to the plugin: filled in
``startup``, read by request hooks through ``ctx.gateway.state(NAME)``; what
needs closing is closed in ``shutdown``, and the core empties the dict after
it. Objects that belong to one effective config are keyed by
``id(config)``: every config in ``gateway.configs(NAME)`` lives as long as the
gateway, and ``ctx.config`` is always one of them. What must survive a reload
(rate-limit counters, cache entries) is an object per event loop, obtained with
``gateway.shared(NAME, factory)`` in ``startup`` and put in the state like the
rest; the core releases it after the plugin's ``shutdown``, and the last
gateway on the loop to release it awaits its ``close()``. No module-level
registries, no runtime objects on configs.

**Versioning.** :data:`API_VERSION` follows semantic versioning. A name in this
module changes (or goes) only in a major version; a name that is deprecated
keeps working, with a :class:`DeprecationWarning`, for at least one minor
version before the major version that removes it (see ``_DEPRECATED``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import aiohttp
import structlog

from .aggregate.placeholders import MissingValue, ValueTemplate
from .body import read_body
from .config.errors import key_path, suggest
from .config.values import Backend, Duration, Size
from .context import ClientCert, Context, Identity, RouteInfo, UpstreamRequest
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
from .shared import SHARED as _SHARED
from .shared import PerLoop

if TYPE_CHECKING:
    from collections.abc import Iterable

    from .app import Gateway as CoreGateway
    from .shared import Closable

_log = structlog.get_logger("pygate")

API_VERSION = "1.3"
"""The version of this module's names and of the hooks' arguments (``MAJOR.MINOR``).

1.1 added :class:`ClientCert` (``ctx.client_cert``); 1.2 the ``transform_response``
hook, :class:`ValueTemplate` and :class:`MissingValue`; 1.3 ``ctx.trace_id`` (and the
access record's ``trace_id``) and a call's outcome on :class:`UpstreamRequest`
(``started``, ``elapsed``, ``status``, ``sent_to``, ``error``), :func:`read_body`
and ``ctx.body``."""

C = TypeVar("C", bound="Closable")


class Gateway:
    """The running gateway, as a plugin sees it.

    Handed to ``startup(gateway, config)`` and ``shutdown(gateway)``, and set on
    every request's context as ``ctx.gateway``. Each gateway has its own: a
    reload builds a new gateway (with new configs and new state) and the old
    one serves its last requests with its own.
    """

    __slots__ = ("_core", "_held", "_states")

    def __init__(self, core: CoreGateway, plugins: Iterable[str]) -> None:
        self._core = core
        self._states: dict[str, dict[Any, Any]] = {name: {} for name in plugins}
        self._held: dict[str, list[PerLoop[Any]]] = {}

    def __repr__(self) -> str:
        return f"<pygate.plugin.Gateway plugins={sorted(self._states)}>"

    # -- configuration ----------------------------------------------------------

    def configs(self, plugin: str) -> list[Any]:
        """Every distinct effective config of ``plugin``: the global table's and each
        route's (merged over it), as validated by its ``config_schema()`` model.

        ``ctx.config`` in a request hook is always one of these objects, so a
        ``startup`` hook can prepare what each needs (a key set per ``jwks_url``)
        before the first request, keyed by ``id(config)``.
        """
        return self._core.plugin_configs(plugin)

    @property
    def timeout(self) -> float:
        """The gateway's upstream timeout in seconds (``gateway.timeout``)."""
        return float(self._core.timeout)

    @property
    def max_body(self) -> int:
        """The largest request body the gateway accepts, in bytes (``gateway.max_body``)."""
        return int(self._core.max_body)

    @property
    def generation(self) -> int | None:
        """The number of the configuration this gateway serves, as the server counts them
        (1 for the one loaded at start, one more for each reload; a worker of ``pygate
        serve --workers N`` has its supervisor's number), or ``None`` for a gateway that
        no server has numbered (one built by hand, as in some tests)."""
        return self._core.generation

    # -- live state (read-only) -------------------------------------------------

    def upstreams(self) -> list[dict[str, Any]]:
        """The upstreams of this gateway and the live state of their targets, as plain data
        (a copy: changing it changes nothing), in configuration order::

            [{"name": "users",
              "targets": [{"label": "http://127.0.0.1:3001", "weight": 1,
                           "healthy": True, "breaker": "closed", "active": 0}, ...]}, ...]

        ``healthy`` is the active health checks' verdict (``True`` without checks),
        ``breaker`` the passive breaker's state (``"closed"``, ``"open"`` or
        ``"half-open"``; ``"closed"`` without a breaker), ``active`` the requests in
        flight to the target from this process. A route's inline upstream URL is
        listed under that URL as its name. Each worker of ``pygate serve --workers N``
        checks and counts on its own.
        """
        return [
            {"name": name,
             "targets": [{"label": t["target"], "weight": t["weight"], "healthy": t["healthy"],
                          "breaker": t["breaker"], "active": t["active"]}
                         for t in upstream.describe()]}
            for name, upstream in self._core.upstreams.items()
        ]

    @property
    def in_flight(self) -> int | None:
        """Requests this process is handling now (on this gateway and on any a reload
        replaced), or ``None`` where the server does not tell."""
        count = self._core.in_flight
        return count() if count is not None else None

    # -- resources --------------------------------------------------------------

    @property
    def client(self) -> aiohttp.ClientSession:
        """The gateway's HTTP client session for plugins (JWKS, introspection...).

        Open from before the first ``startup`` hook until after the last
        ``shutdown`` hook; do not close it.

        :raises RuntimeError: the gateway is not running.
        """
        client = self._core.client
        if client is None:
            raise RuntimeError("the gateway is not running: its HTTP client opens before the "
                               "startup hooks and closes after the shutdown hooks")
        return client

    def state(self, plugin: str) -> dict[Any, Any]:
        """The state ``plugin`` keeps for this gateway's lifetime: a dict of its own.

        Filled in ``startup``, read in request hooks (``ctx.gateway.state(NAME)``);
        ``shutdown`` closes what needs closing, and the core empties the dict
        after it. Keys are the plugin's: names, or ``id(config)`` for objects
        that belong to one effective config.

        :raises KeyError: ``plugin`` is not a plugin of this gateway.
        """
        try:
            return self._states[plugin]
        except KeyError:
            raise KeyError(f"{plugin!r} is not a plugin of this gateway"
                           f"{suggest(plugin, self._states)}") from None

    def shared(self, plugin: str, factory: Callable[[], C]) -> C:
        """The object of ``plugin`` that every gateway on this event loop shares.

        For state that must survive a reload (a reloaded gateway starts before
        the old one stops): the first gateway to ask makes it with ``factory()``,
        later ones get the same object. Call it in ``startup`` and keep the
        result in :meth:`state`. The core releases it after the plugin's
        ``shutdown``; the last gateway of the loop to release it awaits its
        ``close()``. ``factory`` (a class or a module-level function) names the
        object together with ``plugin``; asking twice returns the same object.

        :raises KeyError: ``plugin`` is not a plugin of this gateway.
        """
        self.state(plugin)  # the name is checked, as for state()
        held = self._held.setdefault(plugin, [])
        for per_loop in held:
            if per_loop.factory is factory:
                found: C = per_loop.get()
                return found
        per_loop, made = _SHARED.acquire(plugin, factory)
        held.append(per_loop)
        return made

    async def _retire(self, plugin: str | None = None) -> None:
        """After ``plugin``'s ``shutdown`` (every plugin: ``None``): release what
        :meth:`shared` gave it, then empty its :meth:`state`. Called by the core;
        never raises."""
        names = [plugin] if plugin is not None else list({*self._held, *self._states})
        for name in names:
            for per_loop in reversed(self._held.pop(name, [])):
                try:
                    await _SHARED.release(name, per_loop)
                except Exception:  # a store that fails to close must not stop the others
                    _log.exception("plugin shared state failed to close", plugin=name)
            state = self._states.get(name)
            if state is not None:
                state.clear()


# ---------------------------------------------------------------------------
# Deprecated names
# ---------------------------------------------------------------------------

_DEPRECATED: dict[str, tuple[Any, str]] = {}
"""``name -> (value, advice)`` for names on their way out.

A name moves here (out of ``__all__``) in a minor version; it keeps working with
a :class:`DeprecationWarning` that quotes ``advice`` (what to use instead, and
since when) and is removed no earlier than the next major version.
"""


def __getattr__(name: str) -> Any:
    found = _DEPRECATED.get(name)
    if found is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value, advice = found
    warnings.warn(f"pygate.plugin.{name} is deprecated: {advice}", DeprecationWarning,
                  stacklevel=2)
    return value


def __dir__() -> list[str]:
    return sorted({*__all__, *_DEPRECATED})


__all__ = [
    "API_VERSION",
    "Backend",
    "BadGateway",
    "BadRequest",
    "ClientCert",
    "Context",
    "Duration",
    "Forbidden",
    "Gateway",
    "GatewayError",
    "GatewayTimeout",
    "Identity",
    "MethodNotAllowed",
    "MissingValue",
    "NotFound",
    "PayloadTooLarge",
    "PerLoop",
    "RouteInfo",
    "ServiceUnavailable",
    "Size",
    "TooManyRequests",
    "Unauthorized",
    "UpstreamRequest",
    "ValueTemplate",
    "hookimpl",
    "key_path",
    "problem_response",
    "read_body",
    "suggest",
]
