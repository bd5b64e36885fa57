"""Running the gateway: the aiohttp low-level server, signals and graceful drain.

The server is aiohttp's low-level :class:`aiohttp.web.Server` (no aiohttp
router or middleware: pygate routes itself). Its protocol answers HTTP parser
rejections (smuggling shapes, malformed request lines) with a problem document
and closes the connection; an oversize header block gets 431.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong
from aiohttp.web_protocol import RequestHandler

from .app import Gateway
from .errors import PROBLEM_CONTENT_TYPE, problem_body
from .pipeline import Pipeline
from .sanitize import request_id

log = structlog.get_logger("pygate")

# The two limits differ so that a LineTooLong (which carries its limit) tells
# an overlong request line (400) from an overlong header field (431).
MAX_LINE = 8192
MAX_FIELD = 8190
DRAIN_POLL = 0.02
# After the drain: how long aiohttp may still wait (twice) before cancelling handlers.
CUT_GRACE = 0.1


class _Protocol(RequestHandler):
    """aiohttp's protocol with RFC 9457 answers for requests the parser refused."""

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
        response = web.Response(
            status=status,
            body=problem_body(status, detail, request_id=rid),
            content_type=PROBLEM_CONTENT_TYPE,
            headers={"X-Request-ID": rid, "Server": "pygate"},
        )
        response.force_close()
        return response


class GatewayServer(web.Server):
    def __call__(self) -> RequestHandler:
        return _Protocol(self, loop=self._loop, **self._kwargs)


Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


def make_server(handler: Handler) -> GatewayServer:
    return GatewayServer(
        handler,
        access_log=None,
        max_line_size=MAX_LINE,
        max_field_size=MAX_FIELD,
        keepalive_timeout=75.0,
    )


class Running:
    """A started gateway: the runner, its bound address, and how to stop it."""

    def __init__(self, gateway: Gateway, runner: web.ServerRunner, site: web.BaseSite,
                 host: str, port: int, pipeline: Pipeline | None = None) -> None:
        self.gateway = gateway
        self.runner = runner
        self.site = site
        self.host = host
        self.port = port
        self.pipeline = pipeline or Pipeline(gateway)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def stop(self) -> None:
        """Drain (up to ``gateway.drain_timeout``), close what is left, stop the gateway."""
        await self.drain(self.gateway.config.gateway.drain_timeout)
        await self.runner.cleanup()
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
        server.pre_shutdown()
        await self.gateway.drain()
        steps = max(1, round(within / DRAIN_POLL))
        for _ in range(steps):
            if not self.pipeline.in_flight:
                return
            await asyncio.sleep(DRAIN_POLL)


async def start(gateway: Gateway, host: str, port: int, *,
                sock: socket.socket | None = None, reuse_port: bool = False) -> Running:
    """Start the gateway's resources, then bind and serve."""
    await gateway.start()
    try:
        pipeline = Pipeline(gateway)
        server = make_server(pipeline.handle)
        runner = web.ServerRunner(server, handle_signals=False, shutdown_timeout=CUT_GRACE)
        await runner.setup()
        site: web.BaseSite
        if sock is not None:
            site = web.SockSite(runner, sock)
        else:
            site = web.TCPSite(runner, host, port, reuse_port=reuse_port or None, backlog=1024)
        await site.start()
    except BaseException:
        await gateway.stop()
        raise
    bound_host, bound_port = host, port
    server_obj: Any = getattr(site, "_server", None)
    if server_obj is not None and server_obj.sockets:
        address = server_obj.sockets[0].getsockname()
        bound_host, bound_port = address[0], address[1]
    return Running(gateway, runner, site, bound_host, bound_port, pipeline)


async def serve_forever(gateway: Gateway, host: str, port: int, *,
                        sock: socket.socket | None = None, reuse_port: bool = False,
                        on_ready: Callable[[Running], None] | None = None) -> None:
    """Serve until SIGTERM/SIGINT, then drain in-flight requests and stop."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    running = await start(gateway, host, port, sock=sock, reuse_port=reuse_port)
    log.info("listening", url=running.url, routes=len(gateway.router.routes))
    if on_ready is not None:
        on_ready(running)
    await stop.wait()
    log.info("draining", timeout_s=gateway.config.gateway.drain_timeout)
    await running.stop()
    log.info("stopped")


def configure_logging(level: str) -> None:
    numeric = getattr(logging, level.upper(), logging.INFO)
    logging.basicConfig(level=numeric, format="%(message)s")
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


def install_uvloop() -> bool:
    """Use uvloop when it is installed."""
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        return True
    return False
