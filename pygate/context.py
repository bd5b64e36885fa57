"""The per-request context handed to every hook, and the caller's identity."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from multidict import CIMultiDict

if TYPE_CHECKING:
    from .errors import GatewayError
    from .plugin import Gateway


@dataclass(frozen=True, slots=True)
class Identity:
    """Who is calling, as established by an ``authenticate`` hook.

    :param id: the subject or consumer name (``sub`` claim, API-key consumer...).
    :param roles: the roles the caller holds.
    :param consumer: the consumer name where the credential names one (key-auth).
    :param source: the plugin that established the identity.
    :param fields: extra identity fields (mapped claims), for headers and placeholders.
    """

    id: str
    roles: tuple[str, ...] = ()
    consumer: str | None = None
    source: str = ""
    fields: dict[str, Any] = field(default_factory=dict)

    def get(self, name: str, default: Any = None) -> Any:
        """An identity field by name: ``id``, ``roles``, ``consumer`` or a mapped field."""
        if name == "id":
            return self.id
        if name == "roles":
            return list(self.roles)
        if name == "consumer":
            return self.consumer if self.consumer is not None else self.id
        return self.fields.get(name, default)


@dataclass(frozen=True, slots=True)
class RouteInfo:
    """The matched route as plugins see it: its name and the path parameters."""

    name: str
    params: dict[str, str]


@dataclass(frozen=True, slots=True)
class ClientCert:
    """The client certificate verified during the TLS handshake (PRODUCT.md section 10).

    :param subject: the subject as an RFC 4514 string (``CN=payments-svc,O=Example``).
    :param cn: the subject's common name, or ``None``.
    :param sans: the subject alternative names as ``(type, value)`` pairs, types as
        the ``ssl`` module names them: ``"DNS"``, ``"email"``, ``"URI"``, ``"IP Address"``.
    :param serial: the serial number, hexadecimal.
    :param not_after: when the certificate expires, seconds since the epoch.
    """

    subject: str
    cn: str | None
    sans: tuple[tuple[str, str], ...]
    serial: str
    not_after: float


class Context:
    """Everything the gateway knows about one request, shared by the hooks.

    ``config`` is set by the chain runner to the effective config of the plugin
    being called, so a hook always reads its own settings from ``ctx.config``.
    ``state`` is a free dict for plugins to pass data between their own hooks
    during one request. ``gateway`` is the request's gateway as plugins see it
    (:class:`pygate.plugin.Gateway`): ``ctx.gateway.state(NAME)`` holds what a
    plugin keeps for the gateway's lifetime, ``ctx.gateway.client`` is the HTTP
    client session for plugins. It stays the gateway the request started on,
    even when a reload swaps in another. ``app`` is the core's own gateway
    object, not part of the plugin API.
    A plugin that needs the response body (a cache) sets ``capture_body`` to a
    byte limit in ``admit``; proxied responses up to that size then reach
    ``post_response`` whole, as a ``web.Response`` whose ``body`` is bytes. On a
    route with ``transform_response`` hooks the core raises it to their limit
    before the upstream call. Streaming media types (Server-Sent Events...) are
    never read whole.
    ``trace_id`` is the request's trace ID (32 lowercase hex digits) when a tracing
    plugin (``opentelemetry``) continued or started a trace for it, else ``None``;
    the access record carries it.
    """

    __slots__ = (
        "app",
        "body",
        "bytes_in",
        "bytes_out",
        "capture_body",
        "client_cert",
        "client_ip",
        "config",
        "end",
        "error",
        "gateway",
        "identity",
        "method",
        "path",
        "request_id",
        "route",
        "start",
        "state",
        "status",
        "target",
        "trace_id",
        "upstream",
        "upstream_time",
    )

    def __init__(
        self,
        *,
        request_id: str,
        client_ip: str,
        method: str,
        path: str,
        start: float,
    ) -> None:
        self.request_id = request_id
        self.client_ip = client_ip
        self.method = method
        self.path = path
        self.start = start
        self.end = 0.0  # when the response was sent (time.monotonic()), before the log hooks
        self.route: RouteInfo | None = None
        self.identity: Identity | None = None
        self.config: Any = None
        self.state: dict[str, Any] = {}
        self.status = 0
        self.upstream: str | None = None
        self.target: str | None = None
        # Seconds waiting on the upstream: from the first attempt to the response head
        # (retries included), or to the last failure; 0.0 without an upstream call.
        self.upstream_time = 0.0
        self.bytes_in = 0
        self.bytes_out = 0
        self.error: str | None = None
        # The core's gateway (pygate.app.Gateway), and the plugins' view of it: both
        # set by the pipeline before the first hook runs.
        self.app: Any = None
        self.gateway: Gateway = None  # type: ignore[assignment]
        # Set by a plugin (before the upstream call) to receive bodies up to this many
        # bytes whole in post_response, as a ``web.Response`` with ``.body`` (cache).
        self.capture_body = 0
        # The client's body when something read it whole before the upstream call
        # (pygate.plugin.read_body): the route sends these bytes on.
        self.body: bytes | None = None
        # The verified TLS client certificate, when the listener asked for one (section 10).
        self.client_cert: ClientCert | None = None
        # Set by a tracing plugin in pre_route: the trace this request belongs to.
        self.trace_id: str | None = None


class UpstreamRequest:
    """The request about to be sent upstream; ``transform_request`` hooks mutate it.

    ``path`` is the percent-encoded path the upstream receives and ``query`` the
    raw query string (without ``?``). ``body`` is ``None`` to stream the client's
    body through, or bytes to send instead. ``shaped_by`` is set by the core: the
    last plugin whose ``transform_request`` ran on it (named when its head is refused).

    The call's outcome, filled in by the core when the call is made (for a plugin
    that reports on calls after them, in ``log``: the ``opentelemetry`` plugin's
    client spans): ``started``, the ``time.monotonic()`` of its first attempt (0.0
    while not made); ``elapsed``, the seconds from then to the response head, or to
    the last failure, retries included; ``status``, the status of the answer that
    came back (0 without one); ``sent_to``, the target of the last attempt
    (``http://127.0.0.1:3001``); ``error``, the :class:`pygate.plugin.GatewayError`
    (502, 503, 504) the call failed with, or ``None``. A call that was cut off
    (cancelled, or never sent) has neither a status nor an error.
    """

    __slots__ = ("body", "elapsed", "error", "headers", "method", "path", "query",
                 "sent_to", "shaped_by", "started", "status", "upstream")

    def __init__(
        self,
        *,
        method: str,
        path: str,
        query: str,
        headers: CIMultiDict[str],
        upstream: str,
        body: bytes | None = None,
    ) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.upstream = upstream
        self.body = body
        self.shaped_by: str | None = None
        # The outcome, set by pygate.upstream.forward.send.
        self.started = 0.0
        self.elapsed = 0.0
        self.status = 0
        self.sent_to: str | None = None
        self.error: GatewayError | None = None

    @property
    def target(self) -> str:
        """The request target as written in the request line: ``path`` and ``?query``."""
        query = self.query
        return f"{self.path}?{query}" if query else self.path
