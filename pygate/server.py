"""Running the gateway: start, signals, graceful drain and reload.

The server is aiohttp's low-level :class:`aiohttp.web.Server` with pygate's
protocol (:mod:`pygate.protocol`: parser refusals as problem documents,
request-head deadlines, closing idle connections for a drain).

One process serves with :func:`serve_forever`: SIGTERM/SIGINT drain and stop,
SIGHUP reloads the configuration (:mod:`pygate.reload`, then
:meth:`Running.reload`: new requests use the new gateway, in-flight ones finish
on the old one), and so do ``POST /reload`` on the admin listener
(:mod:`pygate.admin`) and ``--watch`` (:mod:`pygate.watch`). Several worker
processes are run by :mod:`pygate.workers`, each of them through
:func:`serve_forever`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import socket
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web

from .app import Gateway
from .http2 import Http2Server, protocol_factory
from .listener import AcceptSite, bind
from .logs import configure_logging, log_format, set_log_format, set_process_fields
from .pipeline import InFlight, Pipeline
from .protocol import GatewayServer, make_server
from .redirect import open_redirect
from .reload import Loader, Reloader, digest_of

if TYPE_CHECKING:
    from .admin.control import Cluster

log = structlog.get_logger("pygate")

DRAIN_POLL = 0.02
# After the drain: how long aiohttp may still wait (twice) before cancelling handlers.
CUT_GRACE = 0.1
# How often a reload checks whether the previous gateway's last request has finished.
RETIRE_POLL = 0.05
# At shutdown, how long gateways replaced by a reload may take to stop.
RETIRED_STOP_WITHIN = 5.0


class Running:
    """A started gateway: the runner, its bound address, and how to stop it."""

    def __init__(self, gateway: Gateway, runner: web.ServerRunner, host: str, port: int,
                 pipeline: Pipeline | None = None, *,
                 redirect: web.ServerRunner | None = None,
                 http2: Http2Server | None = None) -> None:
        self.gateway = gateway
        self.runner = runner
        self.redirect = redirect  # gateway.redirect_http's listener (pygate.redirect)
        self.http2 = http2  # the listener's HTTP/2 connections (pygate.http2)
        self.host = host
        self.port = port
        self.pipeline = pipeline or Pipeline(gateway)
        self._number(gateway, gateway.generation or 1)
        # Gateways replaced by a reload, until their last request has finished.
        self._retiring: dict[Gateway, asyncio.Task[None]] = {}
        self._refreeze = False  # settle the heap again once they are gone

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        scheme = "https" if self.gateway.tls is not None else "http"
        return f"{scheme}://{host}:{self.port}"

    @property
    def generation(self) -> int:
        """The number of the configuration serving: 1 at start, one more per reload (a
        worker takes its supervisor's numbers)."""
        return self.gateway.generation or 1

    @generation.setter
    def generation(self, number: int) -> None:
        self.gateway.generation = number

    def _number(self, gateway: Gateway, generation: int) -> None:
        gateway.generation = generation
        gateway.in_flight = self._in_flight
        self.config_sha256 = digest_of(gateway)

    def _in_flight(self) -> int:
        return self.pipeline.in_flight

    async def stop(self) -> None:
        """Drain (up to ``gateway.drain_timeout``), close what is left, stop the gateway."""
        await self.drain(self.gateway.config.gateway.drain_timeout)
        if self.http2 is not None:
            await self.http2.shutdown(CUT_GRACE)
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
        if self.redirect is not None:  # its answers take no time: it closes at once
            await self.redirect.cleanup()
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
        if self.http2 is not None:  # HTTP/2 connections get GOAWAY instead
            self.http2.drain()
        for gateway in [*self._retiring, self.gateway]:
            await gateway.drain()
        steps = max(1, round(within / DRAIN_POLL))
        for _ in range(steps):
            if not self.pipeline.in_flight:
                return
            await asyncio.sleep(DRAIN_POLL)

    async def reload(self, gateway: Gateway, *, generation: int | None = None) -> None:
        """Serve new requests with ``gateway``; in-flight requests finish on the old one.

        ``gateway`` (built by :func:`pygate.app.build_gateway`, so already
        valid) is started before the swap; if its start fails it is stopped
        again and the exception propagates, the old gateway still serving. The
        old gateway is stopped once its last request has finished, however
        long that takes (a WebSocket may keep it for hours).

        Upstreams whose configuration did not change keep their pools, health
        checks and breakers (:meth:`pygate.upstream.Upstream.adopt`); plugins
        keep what they hold with ``gateway.shared``. ``generation`` numbers the
        new configuration (by default, one more than the running one).
        """
        old = self.gateway
        try:
            kept = [name for name, upstream in gateway.upstreams.items()
                    if name in old.upstreams and upstream.adopt(old.upstreams[name])]
            await gateway.start()
        except BaseException:
            await gateway.stop()
            raise
        if kept:
            log.debug("upstream pools kept", upstreams=kept)
        left = self.pipeline.switch(gateway)
        server = self.runner.server
        if isinstance(server, GatewayServer):
            limits = gateway.config.gateway
            server.set_timeouts(header_timeout=limits.header_timeout,
                                keepalive_timeout=limits.keepalive_timeout)
            tls = gateway.tls
            factory, self.http2 = protocol_factory(
                server, limits, tls=tls is not None, http2=tls is not None and tls.http2,
                edge=self.http2)
            for site in self.runner.sites:
                if isinstance(site, AcceptSite):
                    site.factory = factory
        # New connections get the certificates read again; open ones keep theirs.
        context = gateway.tls.context if gateway.tls is not None else None
        for site in self.runner.sites:
            if isinstance(site, AcceptSite):
                site.ssl = context
        self._number(gateway, generation if generation is not None else self.generation + 1)
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
                socks: Sequence[socket.socket] = (), reuse_port: bool = False,
                redirect_socks: Sequence[socket.socket] | None = None) -> Running:
    """Start the gateway's resources, then bind ``host:port`` and serve.

    With ``socks`` (already bound and listening, e.g. by the workers'
    supervisor) the gateway serves on those instead of binding. With
    ``[gateway.tls]`` they speak TLS; ``gateway.redirect_http`` serves on
    ``redirect_socks`` (bound here when None).
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
        tls = gateway.tls
        context = tls.context if tls is not None else None
        factory, http2 = protocol_factory(server, limits, tls=tls is not None,
                                          http2=tls is not None and tls.http2)
        sites = [AcceptSite(runner, sock, ssl=context, factory=factory) for sock in socks]
        for site in sites:
            await site.start()
        address = socks[0].getsockname()
        redirect = await open_redirect(gateway.config, address[1], redirect_socks)
    except BaseException:
        await gateway.stop()
        raise
    return Running(gateway, runner, address[0], address[1], pipeline, redirect=redirect,
                   http2=http2)


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


async def serve_forever(gateway: Gateway, host: str, port: int, *,
                        socks: Sequence[socket.socket] = (), reuse_port: bool = False,
                        on_ready: Callable[[Running], None] | None = None,
                        reload: Loader | None = None, admin_socks: Sequence[socket.socket] = (),
                        cluster: Cluster | None = None, generation: int = 1,
                        watch: bool = False,
                        redirect_socks: Sequence[socket.socket] | None = None) -> None:
    """Serve until SIGTERM/SIGINT, then drain in-flight requests and stop.

    With ``socks`` (already bound and listening, e.g. by the workers'
    supervisor) the gateway serves on those instead of binding ``host:port``.
    With ``reload``, SIGHUP reloads the configuration (:class:`Reloader`);
    without it SIGHUP is ignored rather than killing the process; ``watch``
    also reloads when the files change (:mod:`pygate.watch`).

    With ``admin_socks`` the admin listener (:mod:`pygate.admin`) serves on
    them, from before the gateway starts (``/ready`` answers 503 until it
    listens) until after the drain. ``cluster`` is set in a worker
    (:mod:`pygate.workers`): with its private directory, the worker also
    answers the admin's questions on its control socket. ``generation`` is the
    number of the configuration ``gateway`` was loaded from. ``redirect_socks``:
    ``gateway.redirect_http``'s sockets, when bound already (:func:`start`).
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    hangup = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, hangup.set)
    admin: Any = None
    tasks: list[asyncio.Task[None]] = []
    try:
        if admin_socks or (cluster is not None and cluster.run_dir is not None):
            from .admin import AdminServer

            admin = await AdminServer.open(admin_socks, cluster, gateway)
        running = await start(gateway, host, port, socks=socks, reuse_port=reuse_port,
                              redirect_socks=redirect_socks)
        running.generation = generation
        reloader = Reloader(running, reload,
                            generation=cluster.generation if cluster is not None else None)
        reloader.listeners.append(lambda new, _: set_log_format(log_format(new)))
        if admin is not None:
            admin.attach(running, reloader)
        settle_heap()
        log.info("listening", url=running.url, routes=len(gateway.router.routes))
        if running.redirect is not None:
            log.info("redirecting to https", urls=[site.name for site in running.redirect.sites])
        if on_ready is not None:
            on_ready(running)
        tasks.append(loop.create_task(_reload_on_hangup(reloader, hangup)))
        if watch and reload is not None:
            from .watch import Watcher, watch_and_reload

            watcher = Watcher(gateway.config.source, gateway.config)
            tasks.append(loop.create_task(watch_and_reload(watcher, reloader)))
        await stop.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if admin is not None:
            admin.drain()  # /ready: 503 from now on
        log.info("draining", timeout_s=running.gateway.config.gateway.drain_timeout)
        await running.stop()
        if admin is not None:
            await admin.close()
        log.info("stopped")
    finally:
        for task in tasks:
            task.cancel()
        if admin is not None:
            await admin.close()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)


async def _reload_on_hangup(reloader: Reloader, hangup: asyncio.Event) -> None:
    # SIGHUPs arriving during a reload are folded into one more reload.
    while True:
        await hangup.wait()
        hangup.clear()
        await reloader.reload("signal")


def install_uvloop() -> bool:
    """Use uvloop when it is installed."""
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        return True
    return False


__all__ = [
    "GatewayServer",
    "Running",
    "configure_logging",  # pygate.logs, re-exported: scripts import it from here
    "make_server",
    "serve_forever",
    "set_process_fields",
    "settle_heap",
    "start",
]
