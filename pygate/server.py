"""Running the gateway: the aiohttp low-level server, signals, graceful drain and reload.

The server is aiohttp's low-level :class:`aiohttp.web.Server` (no aiohttp
router or middleware: pygate routes itself). Its protocol answers HTTP parser
rejections (smuggling shapes, malformed request lines) with a problem document
and closes the connection; an oversize header block gets 431.

One process serves with :func:`serve_forever`: SIGTERM/SIGINT drain and stop,
SIGHUP reloads the configuration (:meth:`Running.reload`: new requests use the
new gateway, in-flight ones finish on the old one). Several worker processes
are run by :mod:`pygate.workers`, each of them through :func:`serve_forever`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

import structlog
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong
from aiohttp.web_protocol import RequestHandler

from .app import Gateway
from .config import ConfigError
from .errors import problem_message, problem_response
from .listener import AcceptSite, bind
from .pipeline import InFlight, Pipeline
from .sanitize import request_id

log = structlog.get_logger("pygate")

# The two limits differ so that a LineTooLong (which carries its limit) tells
# an overlong request line (400) from an overlong header field (431).
MAX_LINE = 8192
MAX_FIELD = 8190
DRAIN_POLL = 0.02
# After the drain: how long aiohttp may still wait (twice) before cancelling handlers.
CUT_GRACE = 0.1
# How often a reload checks whether the previous gateway's last request has finished.
RETIRE_POLL = 0.05
# At shutdown, how long gateways replaced by a reload may take to stop.
RETIRED_STOP_WITHIN = 5.0


Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


class _Protocol(RequestHandler):
    """aiohttp's protocol with RFC 9457 answers for requests the parser refused,
    and a deadline for each request head (PRODUCT.md section 4, item 9).

    The head clock starts when a connection opens and, on a kept-alive
    connection, when the first byte of the next request arrives while the
    connection waits for one; it stops once a whole head has been parsed. A
    head that is late gets 408 and the connection closes (a connection that
    sent nothing at all is closed without an answer, as nginx does).
    """

    _head_timer: asyncio.TimerHandle | None = None
    _head_count = 0
    _head_bytes = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm_head_timer(received=False)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._head_timer is None and data:
            waiter = self._waiter
            if waiter is not None and not waiter.done():  # idle: a new head starts
                self._arm_head_timer(received=True)
        elif data:
            self._head_bytes = True
        super().data_received(data)
        if self._head_timer is not None and self._request_count > self._head_count:
            self._cancel_head_timer()

    def _arm_head_timer(self, *, received: bool) -> None:
        manager = self._manager
        if not isinstance(manager, GatewayServer):
            return
        self._head_count = self._request_count
        self._head_bytes = received
        self._head_timer = self._loop.call_later(manager.header_timeout, self._head_late)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_late(self) -> None:
        self._head_timer = None
        transport = self.transport
        if self._request_count > self._head_count or transport is None:
            return
        manager = self._manager
        if self._head_bytes:
            rid = request_id(None)
            transport.write(problem_message(408, "the request head did not arrive in time",
                                            request_id=rid))
            log.info("request head timed out", status=408, request_id=rid,
                     timeout_s=manager.header_timeout if isinstance(manager, GatewayServer)
                     else None)
            if isinstance(manager, GatewayServer) and manager.on_refused is not None:
                manager.on_refused(self, 408, "the request head did not arrive in time", rid)
        self.force_close()

    @property
    def idle(self) -> bool:
        """Waiting for a request (none in progress): a drain closes it at once."""
        waiter = self._waiter
        return waiter is not None and not waiter.done() and not self._request_in_progress

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:
            raise ConnectionError("response already started")
        if isinstance(exc, LineTooLong) and exc.args[1:2] == (MAX_FIELD,):
            status = 431
        elif isinstance(exc, BadHttpMessage) and "too many headers" in str(exc).lower():
            status = 431
        if status >= 500:
            log.error("error handling request", error=repr(exc))
            detail = "the gateway could not process this request"
        else:
            log.debug("malformed request refused", status=status, error=repr(exc))
            detail = "malformed HTTP request" if status == 400 else "request header block too large"
        rid = request_id(None)
        response = problem_response(status, detail, request_id=rid)
        response.force_close()
        manager = self._manager
        if isinstance(manager, GatewayServer) and manager.on_refused is not None:
            manager.on_refused(self, status, detail, rid)
        return response


Refused = Callable[[RequestHandler, int, str, str], None]
"""Told of a request refused before it reached the pipeline: (connection, status,
detail, request ID), so that it still gets an access line."""


class GatewayServer(web.Server):
    """aiohttp's low-level server with pygate's protocol and per-connection limits."""

    def __init__(self, handler: Handler, *, header_timeout: float,
                 on_refused: Refused | None = None, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.header_timeout = header_timeout
        self.on_refused = on_refused

    def __call__(self) -> RequestHandler:
        return _Protocol(self, loop=self._loop, **self._kwargs)

    def set_timeouts(self, *, header_timeout: float, keepalive_timeout: float) -> None:
        """New limits for connections opened from now on (a reload)."""
        self.header_timeout = header_timeout
        self._kwargs["keepalive_timeout"] = keepalive_timeout

    def close_idle(self) -> None:
        """The drain: idle connections close now, busy ones after their response."""
        for conn in self.connections:
            if isinstance(conn, _Protocol) and conn.idle:
                conn.force_close()
            else:
                conn.close()


def make_server(handler: Handler, *, header_timeout: float = 10.0,
                keepalive_timeout: float = 75.0,
                on_refused: Refused | None = None) -> GatewayServer:
    return GatewayServer(
        handler,
        header_timeout=header_timeout,
        on_refused=on_refused,
        access_log=None,
        # A proxy forwards bodies as they came: decompressing one (aiohttp's default for
        # Content-Encoding: gzip/deflate/br) would send the upstream other bytes than its
        # Content-Length says, and what followed them would be read as the next request.
        auto_decompress=False,
        max_line_size=MAX_LINE,
        max_field_size=MAX_FIELD,
        keepalive_timeout=keepalive_timeout,
    )


class Running:
    """A started gateway: the runner, its bound address, and how to stop it."""

    def __init__(self, gateway: Gateway, runner: web.ServerRunner, host: str, port: int,
                 pipeline: Pipeline | None = None) -> None:
        self.gateway = gateway
        self.runner = runner
        self.host = host
        self.port = port
        self.pipeline = pipeline or Pipeline(gateway)
        # Gateways replaced by a reload, until their last request has finished.
        self._retiring: dict[Gateway, asyncio.Task[None]] = {}
        self._refreeze = False  # settle the heap again once they are gone

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def stop(self) -> None:
        """Drain (up to ``gateway.drain_timeout``), close what is left, stop the gateway."""
        await self.drain(self.gateway.config.gateway.drain_timeout)
        await self.runner.cleanup()
        # Every handler has ended now: gateways replaced by a reload stop too.
        retiring = list(self._retiring.values())
        if retiring:
            _, pending = await asyncio.wait(retiring, timeout=RETIRED_STOP_WITHIN)
            for task in pending:
                task.cancel()
        await self.pipeline.wait_for_logs()  # access lines of the last requests
        await self.gateway.stop()

    async def drain(self, within: float) -> None:
        """Stop accepting, then wait up to ``within`` seconds for in-flight requests.

        Idle keep-alive connections are closed at once; busy ones close when
        their request is done. Whatever is still running afterwards is cut by
        ``runner.cleanup()`` within :data:`CUT_GRACE`.
        """
        for site in list(self.runner.sites):
            await site.stop()
        server = self.runner.server
        if server is None:
            return
        await asyncio.sleep(0)  # let connections accepted just now start their request
        self.pipeline.draining = True  # every response from now on: Connection: close
        if isinstance(server, GatewayServer):
            server.close_idle()
        else:
            server.pre_shutdown()
        for gateway in [*self._retiring, self.gateway]:
            await gateway.drain()
        steps = max(1, round(within / DRAIN_POLL))
        for _ in range(steps):
            if not self.pipeline.in_flight:
                return
            await asyncio.sleep(DRAIN_POLL)

    async def reload(self, gateway: Gateway) -> None:
        """Serve new requests with ``gateway``; in-flight requests finish on the old one.

        ``gateway`` (built by :func:`pygate.app.build_gateway`, so already
        valid) is started before the swap; if its start fails it is stopped
        again and the exception propagates, the old gateway still serving. The
        old gateway is stopped once its last request has finished, however
        long that takes (a WebSocket may keep it for hours).
        """
        try:
            await gateway.start()
        except BaseException:
            await gateway.stop()
            raise
        old = self.gateway
        left = self.pipeline.switch(gateway)
        server = self.runner.server
        if isinstance(server, GatewayServer):
            limits = gateway.config.gateway
            server.set_timeouts(header_timeout=limits.header_timeout,
                                keepalive_timeout=limits.keepalive_timeout)
        self.gateway = gateway
        if gc.get_freeze_count():
            # Frozen objects are never collected: let the old gateway go once retired.
            gc.unfreeze()
            self._refreeze = True
        task = asyncio.get_running_loop().create_task(_retire(old, left))
        self._retiring[old] = task
        task.add_done_callback(lambda _: self._retired(old))

    def _retired(self, old: Gateway) -> None:
        self._retiring.pop(old, None)
        if self._refreeze and not self._retiring:
            self._refreeze = False
            # Next iteration: this callback's own reference to ``old`` is gone by then.
            asyncio.get_running_loop().call_soon(settle_heap)

    @property
    def retiring(self) -> int:
        """How many replaced gateways still have requests in flight."""
        return len(self._retiring)


async def _retire(gateway: Gateway, left: InFlight) -> None:
    # Polled like the drain: Pipeline.handle only counts, it signals nobody.
    while left.count:  # noqa: ASYNC110
        await asyncio.sleep(RETIRE_POLL)
    await gateway.stop()
    log.info("previous configuration stopped")


async def start(gateway: Gateway, host: str, port: int, *,
                socks: Sequence[socket.socket] = (), reuse_port: bool = False) -> Running:
    """Start the gateway's resources, then bind ``host:port`` and serve.

    With ``socks`` (already bound and listening, e.g. by the workers'
    supervisor) the gateway serves on those instead of binding.
    """
    await gateway.start()
    try:
        if not socks:
            socks = bind(host, port, reuse_port=reuse_port)
        pipeline = Pipeline(gateway)
        limits = gateway.config.gateway
        server = make_server(pipeline.handle, header_timeout=limits.header_timeout,
                             keepalive_timeout=limits.keepalive_timeout,
                             on_refused=pipeline.refused)
        runner = web.ServerRunner(server, handle_signals=False, shutdown_timeout=CUT_GRACE)
        await runner.setup()
        sites = [AcceptSite(runner, sock) for sock in socks]
        for site in sites:
            await site.start()
    except BaseException:
        await gateway.stop()
        raise
    address = socks[0].getsockname()
    return Running(gateway, runner, address[0], address[1], pipeline)


def settle_heap() -> None:
    """Collect garbage once, then leave every object alive now out of later collections.

    What start-up built (modules, the compiled configuration, plugin state)
    lives as long as the process; without this, every full collection of the
    cyclic garbage collector walks all of it again, a pause of tens of
    milliseconds for every request in flight (benchmarks/README.md: p99 at 50
    connections about halves). A reload unfreezes, and settles again once the
    replaced gateway has stopped, so that it can be collected.
    """
    gc.collect()
    gc.freeze()


Loader = Callable[[], Gateway]
"""Reads and validates the configuration again (raises ConfigError): a reload's source."""


async def serve_forever(gateway: Gateway, host: str, port: int, *,
                        socks: Sequence[socket.socket] = (), reuse_port: bool = False,
                        on_ready: Callable[[Running], None] | None = None,
                        reload: Loader | None = None) -> None:
    """Serve until SIGTERM/SIGINT, then drain in-flight requests and stop.

    With ``socks`` (already bound and listening, e.g. by the workers'
    supervisor) the gateway serves on those instead of binding ``host:port``.
    With ``reload``, SIGHUP reloads the configuration (:func:`reload_gateway`);
    without it SIGHUP is ignored rather than killing the process.
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    hangup = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, hangup.set)
    try:
        running = await start(gateway, host, port, socks=socks, reuse_port=reuse_port)
        settle_heap()
        log.info("listening", url=running.url, routes=len(gateway.router.routes))
        if on_ready is not None:
            on_ready(running)
        reloader = loop.create_task(_reload_on_hangup(running, hangup, reload))
        await stop.wait()
        reloader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reloader
        log.info("draining", timeout_s=running.gateway.config.gateway.drain_timeout)
        await running.stop()
        log.info("stopped")
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)


async def _reload_on_hangup(running: Running, hangup: asyncio.Event,
                            reload: Loader | None) -> None:
    # SIGHUPs arriving during a reload are folded into one more reload.
    while True:
        await hangup.wait()
        hangup.clear()
        if reload is None:
            log.warning("SIGHUP ignored: no configuration file to reload")
            continue
        await reload_gateway(running, reload)


async def reload_gateway(running: Running, reload: Loader) -> bool:
    """Read and validate the configuration again; if valid, swap it in. True when swapped.

    An invalid configuration is logged (``reload refused``, with every error's
    key path) and the current one stays. Settings that only a restart can
    change (``gateway.listen``, ``gateway.workers``) are reported when they differ.
    """
    gateway = validate(reload)
    if gateway is None:
        return False
    warn_restart_only(running.gateway, gateway)
    try:
        await running.reload(gateway)
    except Exception as exc:
        log.error("reload failed: the new configuration did not start",
                  error=f"{type(exc).__name__}: {exc}", exc_info=exc)
        return False
    log.info("reloaded", file=gateway.config.source, routes=len(gateway.router.routes))
    return True


def validate(reload: Loader) -> Gateway | None:
    """Read and validate the configuration again; None (errors logged) when it is invalid."""
    log.info("reloading")
    try:
        return reload()
    except ConfigError as exc:
        log.error("reload refused", file=exc.file, errors=[str(i) for i in exc.issues])
    except Exception as exc:
        log.error("reload refused", error=f"{type(exc).__name__}: {exc}")
    return None


def warn_restart_only(old: Gateway, new: Gateway) -> None:
    """Log the settings a reload cannot apply (the listening socket, the worker count)."""
    before, after = old.config.gateway, new.config.gateway
    for key in ("listen", "workers"):
        if getattr(before, key) != getattr(after, key):
            log.warning("setting changed; it takes effect at the next restart",
                        key=f"gateway.{key}", running=getattr(before, key),
                        configured=getattr(after, key))


# Fields on every log line of this process: a worker's number and pid (pygate.workers).
_process_fields: dict[str, Any] = {}


def set_process_fields(**fields: Any) -> None:
    """Add ``fields`` to every later log line of this process (replacing earlier ones)."""
    _process_fields.clear()
    _process_fields.update(fields)


def _add_process_fields(logger: Any, method: str,
                        event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key, value in _process_fields.items():
        event_dict.setdefault(key, value)
    return event_dict


def configure_logging(level: str) -> None:
    numeric = getattr(logging, level.upper(), logging.INFO)
    logging.basicConfig(level=numeric, format="%(message)s")
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            _add_process_fields,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        # One write per line, so that the lines of several worker processes
        # sharing stderr never interleave.
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


def install_uvloop() -> bool:
    """Use uvloop when it is installed."""
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        return True
    return False
