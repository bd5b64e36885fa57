"""The hooks a pygate plugin may implement.

A plugin is a module (or any object) whose functions are marked with
``pygate.hookimpl`` and whose names match the specs below. It is published
through the entry point group ``pygate``::

    [project.entry-points.pygate]
    my-plugin = "my_plugin"

Implementations may be ``async def`` or plain functions, and may accept any
subset of a hook's arguments (keyword names are the contract; parameters are
only ever added, never renamed). A module-level ``PRIORITY`` integer orders the
plugins of a route: higher runs first on the request side and last on the
response side, as in Kong.

pygate does not dispatch through pluggy's ``firstresult``: it compiles, for
every route, the ordered implementations of the plugins enabled there once, at
configuration load, and its own chain runner applies the result rule stated in
each docstring. ``ctx.config`` is set to the calling plugin's effective
configuration (the pydantic model from :func:`config_schema`, or a dict) before
each call.

A hook may raise :class:`pygate.GatewayError` (or a subclass such as
``Unauthorized``) to refuse the request with that status. Any other exception
gives 500, is logged with the plugin's name, and the gateway keeps serving;
raise :class:`pygate.ServiceUnavailable` when the plugin's own backend is down.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from aiohttp import web
    from pydantic import BaseModel

    from .context import Context, Identity, UpstreamRequest
    from .plugin import Gateway

hookspec = pluggy.HookspecMarker("pygate")
hookimpl = pluggy.HookimplMarker("pygate")

# ---------------------------------------------------------------------------
# Request hooks, in the order a request meets them
# ---------------------------------------------------------------------------


@hookspec
def pre_route(request: web.BaseRequest, ctx: Context) -> web.StreamResponse | None:
    """Runs first, before the route is enforced (before 404 and 405 are decided).

    The plugins called are those of the route whose path, host and headers match
    (so a per-route CORS table applies to a preflight even where the route does
    not list ``OPTIONS``), or the globally enabled ones when no route matches.
    ``ctx.route`` is that route or ``None``; ``ctx.identity`` is not set yet.

    :param request: the client's request (headers only; do not read the body).
    :param ctx: the request context.
    :return: a response to answer now (CORS preflight, IP deny), or ``None``.

    Result rule: the first non-``None`` response answers the request and stops
    the chain; ``post_response`` hooks still run on it.
    """


@hookspec
def authenticate(request: web.BaseRequest, ctx: Context) -> Identity | None:
    """Runs after routing, to establish who is calling.

    :param request: the client's request.
    :param ctx: the request context; ``ctx.route`` is the matched route.
    :return: an :class:`pygate.Identity`, or ``None`` when this plugin finds no
        credential it handles (raise ``Unauthorized`` for a bad one).

    Result rule: the first identity wins; it is stored in ``ctx.identity`` and
    later ``authenticate`` hooks are skipped.
    """


@hookspec
def admit(request: web.BaseRequest, ctx: Context) -> web.StreamResponse | None:
    """Runs after authentication, to refuse or answer the request.

    :param request: the client's request.
    :param ctx: the request context, with ``ctx.identity`` set (or ``None``).
    :return: a response to send instead of calling the upstream (a cache hit),
        or ``None`` to go on. Refusals usually raise ``Forbidden`` or
        ``TooManyRequests`` instead of building a response.

    Result rule: the first non-``None`` response answers the request.
    """


@hookspec
def transform_request(
    request: web.BaseRequest, ctx: Context, upstream_request: UpstreamRequest
) -> None:
    """Runs before each upstream call (every call of an aggregate route, too).

    :param request: the client's request.
    :param ctx: the request context.
    :param upstream_request: the outgoing request; mutate its ``headers``,
        ``path``, ``query`` or ``body`` in place.
    :return: nothing.

    Result rule: every implementation runs, in priority order.
    """


@hookspec
def aggregate(request: web.BaseRequest, ctx: Context, results: dict[str, Any]) -> Any:
    """Runs on aggregate routes after the calls, to shape the response body.

    :param request: the client's request.
    :param ctx: the request context.
    :param results: the composed body pygate built (call name -> result).
    :return: the JSON-serialisable body to send instead, or ``None`` to keep
        pygate's default composition.

    Result rule: the first non-``None`` body is used.
    """


@hookspec
def transform_response(request: web.BaseRequest, ctx: Context, response: web.Response) -> None:
    """Runs after the upstream answered, before ``post_response`` and before the head
    goes out, on the route's own answer (proxied, aggregate and GraphQL responses; not
    on plugin answers such as cache hits, nor on problem documents).

    Only chains with an implementation pay for it: they get the upstream body buffered,
    up to the plugin's limit (its config's ``max_body``, in bytes, else 1 MiB), decided
    at load. A body over the limit, a ``HEAD`` answer, a WebSocket upgrade and a
    streaming media type (``text/event-stream``...) stream through untouched and the
    hook is not called.

    :param request: the client's request.
    :param ctx: the request context; ``ctx.status`` is not set yet.
    :param response: the buffered response: ``response.body`` is the body as bytes
        (still in its ``Content-Encoding``, if the upstream used one). Replace
        ``response.body``, ``response.headers`` entries or the status
        (``response.set_status``) in place.
    :return: nothing. Afterwards the core computes ``Content-Length`` from the body;
        when the body changed and the ``ETag`` did not, a strong ``ETag`` becomes weak
        and ``Content-MD5``/``Content-Digest``/``Repr-Digest`` are dropped.

    Result rule: every implementation runs, in reverse priority order (the response
    side, as ``post_response``), each only while the body is within its own limit.

    .. versionadded:: plugin API 1.2
    """


@hookspec
def post_response(request: web.BaseRequest, ctx: Context, response: web.StreamResponse) -> None:
    """Runs before the response headers go out (also for problem documents).

    :param request: the client's request.
    :param ctx: the request context; ``ctx.status`` is the response status.
    :param response: the response, not yet sent; mutate ``response.headers``.
        For a streamed upstream body only headers may change.
    :return: nothing.

    Result rule: every implementation runs, in reverse priority order.
    """


@hookspec
def log(ctx: Context, record: dict[str, Any]) -> None:
    """Runs after the response has been sent completely.

    :param ctx: the request context.
    :param record: the access record: time, request_id, method, path, route,
        upstream, target, status, duration_ms, bytes_in, bytes_out, client_ip,
        consumer, error, query (the raw query string: redact before writing it),
        cache (the response's X-Cache header, or None). Built only when some log
        implementation of the chain names ``record``; one that does not reads ``ctx``
        (``ctx.end - ctx.start`` is the request's duration in seconds).
    :return: nothing. The call is scheduled after the response; it never delays
        the client, and an exception is logged, never raised.
    """


# ---------------------------------------------------------------------------
# Lifecycle hooks
# ---------------------------------------------------------------------------


@hookspec
def config_schema() -> type[BaseModel] | None:
    """Called once when the configuration is loaded.

    :return: the pydantic model class that validates this plugin's
        ``[plugins.NAME]`` table merged with each route's override. Its
        instance becomes ``ctx.config``. ``None`` passes the table as a dict.
    """


@hookspec
def startup(gateway: Gateway, config: Any, app: Any) -> None:
    """Called once before the gateway accepts connections, in plugin load order.

    :param gateway: the running gateway as plugins see it
        (:class:`pygate.plugin.Gateway`): ``gateway.configs(NAME)`` lists every
        effective config of the plugin, ``gateway.client`` is the HTTP client
        session for plugins, ``gateway.state(NAME)`` is the plugin's own dict for
        what it keeps until ``shutdown``, ``gateway.shared(NAME, factory)`` the
        object it shares with the other gateways of the event loop (reloads).
    :param config: the plugin's global effective config, or ``None`` when only
        routes enable the plugin.
    :param app: deprecated since plugin API 1.0, kept until 2.0: the core's
        gateway object, passed (with a ``DeprecationWarning``) to implementations
        written before :mod:`pygate.plugin` that name this argument. Name it
        ``gateway`` instead.
    :return: nothing. Open pools and start background tasks here; an exception
        stops the gateway from starting.

    .. versionchanged:: 1.0 ``gateway`` added; ``app`` deprecated.
    """


@hookspec
def shutdown(gateway: Gateway, app: Any) -> None:
    """Called once after the gateway stopped serving, in reverse startup order.

    :param gateway: the :class:`pygate.plugin.Gateway` that ``startup`` got.
    :param app: deprecated since plugin API 1.0, as for :func:`startup`.
    :return: nothing. Close what ``startup`` opened and empty the plugin's
        ``gateway.state(NAME)``; what ``gateway.shared`` gave is released by the
        core afterwards. An exception is logged, and the other plugins still
        shut down.

    .. versionchanged:: 1.0 ``gateway`` added; ``app`` deprecated.
    """


REQUEST_HOOKS = (
    "pre_route",
    "authenticate",
    "admit",
    "transform_request",
    "aggregate",
    "transform_response",
    "post_response",
    "log",
)
LIFECYCLE_HOOKS = ("config_schema", "startup", "shutdown")
HOOK_ARGS: dict[str, tuple[str, ...]] = {
    "pre_route": ("request", "ctx"),
    "authenticate": ("request", "ctx"),
    "admit": ("request", "ctx"),
    "transform_request": ("request", "ctx", "upstream_request"),
    "aggregate": ("request", "ctx", "results"),
    "transform_response": ("request", "ctx", "response"),
    "post_response": ("request", "ctx", "response"),
    "log": ("ctx", "record"),
    "config_schema": (),
    "startup": ("gateway", "config", "app"),
    "shutdown": ("gateway", "app"),
}
DEPRECATED_ARGS: dict[str, tuple[str, ...]] = {
    "startup": ("app",),
    "shutdown": ("app",),
}
"""Arguments still passed to implementations that name them, with a
``DeprecationWarning``; the docs show each hook's signature without them."""

__all__ = ["DEPRECATED_ARGS", "HOOK_ARGS", "LIFECYCLE_HOOKS", "REQUEST_HOOKS", "hookimpl",
           "hookspec"]
