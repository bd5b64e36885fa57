"""The HTTP/1.1 protocol of the gateway's listener: aiohttp's low-level server, plus.

pygate serves through aiohttp's low-level :class:`aiohttp.web.Server` (no aiohttp
router or middleware: pygate routes itself). Its protocol answers HTTP parser
rejections (smuggling shapes, malformed request lines) with a problem document
and closes the connection; an oversize header block gets 431; a request head
that comes too late gets 408; a drain closes idle connections at once.
:mod:`pygate.server` runs it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong
from aiohttp.web_protocol import RequestHandler

from .errors import problem_message, problem_response
from .sanitize import request_id

log = structlog.get_logger("pygate")

# The two limits differ so that a LineTooLong (which carries its limit) tells
# an overlong request line (400) from an overlong header field (431).
MAX_LINE = 8192
MAX_FIELD = 8190


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


__all__ = ["MAX_FIELD", "MAX_LINE", "GatewayServer", "Handler", "Refused", "make_server"]
