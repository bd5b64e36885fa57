"""A lean HTTP/1.1 client for upstream calls: keep-alive pools, streaming both ways.

The proxy path does the same small thing for every request: write a request head
(and maybe a body) on a pooled connection, read a response head, stream the body
back. aiohttp's general-purpose ``ClientSession`` spends most of a proxied
request's CPU time on features a gateway does not use there (cookie jars,
redirects, auto headers, tracing, per-request timers), so upstream HTTP calls
go through this client instead: one ``asyncio.Protocol`` per connection with
llhttp (through ``httptools``) parsing responses, flow control in both
directions, and a bounded pool per target. WebSockets and plugins keep using
aiohttp's client.

Errors are :class:`UpstreamError` subclasses (:mod:`pygate.upstream.response`, and
:class:`TlsError` here), mapped to 502/504 by :mod:`pygate.upstream.forward`.

An ``https`` pool is given its upstream's ``SSLContext`` and the name to send as SNI
and check (:mod:`pygate.upstream.tls`, built at load); a plain pool has neither and
does no TLS work at all.
"""

from __future__ import annotations

import asyncio
import collections
import re
import ssl
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any

import httptools
from multidict import CIMultiDict

from .response import (
    BodyLengthMismatch,
    ConnectError,
    ConnectTimeout,
    Disconnected,
    ProtocolError,
    ReadTimeout,
    UpstreamError,
    UpstreamResponse,
)
from .tls import handshake_failure

__all__ = [
    "BodyLengthMismatch",
    "ConnectError",
    "ConnectTimeout",
    "Connection",
    "Disconnected",
    "InvalidHead",
    "Pool",
    "ProtocolError",
    "ReadTimeout",
    "TlsError",
    "UpstreamError",
    "UpstreamResponse",
    "build_head",
    "head_problem",
]


class TlsError(ConnectError):
    """The TLS handshake with a target failed: its certificate did not verify (an unknown
    CA, another name, expired) or it refused the gateway's. ``detail`` says why, for logs
    and the breaker; clients are only told that the handshake failed."""

    reason = "failed the TLS handshake"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


# Methods sent again on a new connection when a reused one closes before any answer
# (the target may have processed a request and then died; only these are safe twice).
RESENDABLE = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})


class Connection(asyncio.Protocol):
    """One keep-alive connection to a target; one request at a time."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self.idle_since = 0.0
        self._parser: Any = None
        self._head: asyncio.Future[UpstreamResponse] | None = None
        self._response: UpstreamResponse | None = None
        self._status_reason = b""
        self._raw_headers: list[tuple[bytes, bytes]] = []
        self._head_only = False
        self._received = False
        self._informational = False
        self._reading_paused = False
        self._writing_paused: asyncio.Future[None] | None = None
        self.writer: asyncio.Task[None] | None = None

    # -- asyncio.Protocol ------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        self._received = True
        parser = self._parser
        if parser is None:  # the upstream talks while idle: it cannot be trusted with more
            self._abort()
            return
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._error(ProtocolError())
        except httptools.HttpParserError:
            self._error(ProtocolError())

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost = True
        self.pool.forget(self)
        response = self._response
        if self._head is not None and not self._head.done():
            # a TLS 1.3 server checks the client certificate after the client's handshake
            # is over: its refusal arrives as an alert instead of a response
            self._head.set_exception(TlsError(handshake_failure(exc))
                                     if isinstance(exc, ssl.SSLError) else Disconnected())
        elif response is not None and not response._done:
            if exc is None and response.close_delimited:
                response._finish()  # a body delimited by the connection's end
            else:
                # fewer bytes than Content-Length, no last chunk, or a reset:
                # never passed off as complete (PRODUCT.md section 4, item 10)
                response._fail(Disconnected())
        if self._writing_paused is not None and not self._writing_paused.done():
            self._writing_paused.set_exception(Disconnected())

    def pause_writing(self) -> None:
        self._writing_paused = self.loop.create_future()

    def resume_writing(self) -> None:
        waiter, self._writing_paused = self._writing_paused, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def pause_reading(self) -> None:
        if not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._reading_paused and self.transport is not None and not self.lost:
            self._reading_paused = False
            self.transport.resume_reading()

    # -- httptools callbacks -------------------------------------------------------
    def on_status(self, status: bytes) -> None:
        self._status_reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        self._raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            self._informational = True  # 100 Continue, 103 Early Hints: wait for the real one
            return
        headers: CIMultiDict[str] = CIMultiDict(
            (n.decode("latin-1"), v.decode("utf-8", "surrogateescape"))
            for n, v in self._raw_headers)
        response = UpstreamResponse(self, status, self._status_reason.decode("latin-1"),
                                    headers)
        # Decided from the framing now: the proxy strips Transfer-Encoding later.
        response.close_delimited = (response.content_length is None
                                    and "Transfer-Encoding" not in headers)
        self._response = response
        if self._head_only:
            # a HEAD answer has no body, whatever its length says: the message ends here
            response._done = True
            if not self._parser.should_keep_alive():
                self.idle_since = -1.0
            self._parser = None
        head = self._head
        self._head = None
        if head is not None and not head.done():
            head.set_result(response)

    def on_body(self, body: bytes) -> None:
        if self._response is not None:
            self._response._feed(body)

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            self._raw_headers = []
            self._status_reason = b""
            return
        if self._parser is not None and not self._parser.should_keep_alive():
            self.idle_since = -1.0  # not reusable
        self._parser = None
        if self._response is not None:
            self._response._finish()

    # -- requests ------------------------------------------------------------------
    async def wait(self, waiter: asyncio.Future[Any]) -> Any:
        """Await ``waiter`` under the upstream's read timeout."""
        timeout = self.pool.read_timeout
        timer = self.loop.call_later(timeout, self._read_timed_out, waiter)
        try:
            return await waiter
        finally:
            timer.cancel()

    def _read_timed_out(self, waiter: asyncio.Future[Any]) -> None:
        if not waiter.done():
            waiter.set_exception(ReadTimeout())
        self._abort()

    def start(self, head: bytes, body: bytes | AsyncIterator[bytes] | None, *,
              chunked: bool, head_only: bool, length: int | None = None
              ) -> asyncio.Future[UpstreamResponse]:
        """Write a request; the future resolves to its response once the head has arrived.

        A streamed body is written by a task of its own (``self.writer``), so that
        an upstream may answer before the whole body was sent.
        """
        transport = self.transport
        assert transport is not None
        self._parser = httptools.HttpResponseParser(self)
        self._raw_headers = []
        self._status_reason = b""
        self._response = None
        self._head_only = head_only
        self._received = False
        self._head = waiter = self.loop.create_future()
        self.writer = None
        if body is None:
            transport.write(head)
        elif isinstance(body, bytes):
            transport.write(head + body)
        else:
            transport.write(head)
            self.writer = self.loop.create_task(self._write_body(body, chunked, length))
        return waiter

    def cancel_writer(self) -> None:
        if self.writer is not None and not self.writer.done():
            self.writer.cancel()
        self.writer = None

    async def _write_body(self, body: AsyncIterator[bytes], chunked: bool,
                          length: int | None) -> None:
        """Write a streamed body: chunked, or exactly ``length`` bytes.

        A body that runs past or short of the Content-Length already sent would
        leave the upstream reading the next request from the wrong place: the
        connection is dropped instead (:class:`BodyLengthMismatch`).
        """
        transport = self.transport
        assert transport is not None
        written = 0
        try:
            async for chunk in body:
                if not chunk:
                    continue
                if chunked:
                    transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
                else:
                    written += len(chunk)
                    if length is not None and written > length:
                        raise BodyLengthMismatch()
                    transport.write(chunk)
                if self._writing_paused is not None:
                    await self._writing_paused
            if chunked:
                transport.write(b"0\r\n\r\n")
            elif length is not None and written != length:
                raise BodyLengthMismatch()
        except BaseException as exc:
            # the request can't be completed: the connection is unusable
            head = self._head
            if head is not None and not head.done():
                head.set_exception(exc if isinstance(exc, Exception) else Disconnected())
            self._abort()
            if not isinstance(exc, Exception):
                raise

    def done_with(self, *, reusable: bool) -> None:
        self._response = None
        if self.writer is not None:
            if not self.writer.done():  # the upstream answered before the body was sent
                reusable = False
                self.writer.cancel()
            self.writer = None
        if reusable and not self.lost and self.idle_since >= 0 and self._parser is None:
            self.resume_reading()
            self.idle_since = time.monotonic()
            self.pool.put_back(self)
        else:
            self._abort()

    def _error(self, exc: UpstreamError) -> None:
        head = self._head
        if head is not None and not head.done():
            head.set_exception(exc)
        elif self._response is not None:
            self._response._fail(exc)
        self._abort()

    def _abort(self) -> None:
        self._parser = None
        if self.transport is not None and not self.lost:
            self.transport.abort()
        self.lost = True
        self.pool.forget(self)


class Pool:
    """Keep-alive connections to one target (``http://host:port`` or https).

    :param ssl_context: an https target's context (its upstream's, built at load); the
        system's default one when not given.
    :param server_name: the name an https target is asked for (SNI) and checked
        against; its host when not given.
    """

    def __init__(self, scheme: str, host: str, port: int, *, limit: int,
                 connect_timeout: float, read_timeout: float,
                 keepalive_timeout: float = 30.0, ssl_context: ssl.SSLContext | None = None,
                 server_name: str | None = None) -> None:
        self.loop = asyncio.get_event_loop()
        self.scheme = scheme
        self.host = host
        self.port = port
        self.limit = limit
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.keepalive_timeout = keepalive_timeout
        https = scheme == "https"
        self.ssl: ssl.SSLContext | None = (
            (ssl_context or ssl.create_default_context()) if https else None)
        self.server_hostname = (server_name or host) if https else None
        self._idle: collections.deque[Connection] = collections.deque()
        self._open: set[Connection] = set()
        self._waiters: collections.deque[asyncio.Future[Connection | None]] = collections.deque()
        self.closed = False

    @property
    def size(self) -> int:
        """Open connections (idle and busy)."""
        return len(self._open)

    def idle_connection(self) -> Connection | None:
        """A kept-alive connection ready for a request, if there is one."""
        idle = self._idle
        if not idle:
            return None
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if not conn.lost and now - conn.idle_since < self.keepalive_timeout:
                return conn
            conn._abort()
        return None

    async def acquire(self) -> tuple[Connection, bool]:
        """A connection and whether it was reused from the idle set.

        At the limit, callers wait in line, for at most ``connect_timeout``
        (then :class:`ConnectTimeout`): a connection given back goes straight
        to the first in line (:meth:`put_back`), so a request that arrives
        later cannot take it first, and a place freed by a closed connection
        lets the first in line open a new one.
        """
        conn = self.idle_connection()
        if conn is not None:
            return conn, True
        first = False
        deadline = self.loop.time() + self.connect_timeout
        while len(self._open) >= self.limit:
            waiter: asyncio.Future[Connection | None] = self.loop.create_future()
            if first:
                self._waiters.appendleft(waiter)  # woken, then outrun: keep its place
            else:
                self._waiters.append(waiter)
            try:
                async with asyncio.timeout_at(deadline):
                    handed = await waiter
            except (asyncio.CancelledError, TimeoutError) as exc:
                if waiter.done() and not waiter.cancelled():
                    self._pass_on(waiter.result())  # handed over just as we gave up
                elif waiter in self._waiters:
                    self._waiters.remove(waiter)
                if isinstance(exc, TimeoutError):
                    raise ConnectTimeout() from None
                raise
            if handed is not None:
                if not handed.lost:
                    return handed, True
                continue  # closed meanwhile: its place is free
            first = True
        return await self._connect(), False

    async def _connect(self) -> Connection:
        conn = Connection(self)
        self._open.add(conn)
        try:
            async with asyncio.timeout(self.connect_timeout):
                await self.loop.create_connection(
                    lambda: conn, self.host, self.port, ssl=self.ssl,
                    server_hostname=self.server_hostname)
        except TimeoutError:
            self.forget(conn)
            raise ConnectTimeout() from None
        except ssl.SSLError as exc:  # an OSError too: told apart for the logs and retries
            self.forget(conn)
            raise TlsError(handshake_failure(exc)) from exc
        except OSError as exc:
            self.forget(conn)
            raise ConnectError() from exc
        except BaseException:
            self.forget(conn)
            raise
        return conn

    def put_back(self, conn: Connection) -> None:
        if self.closed:
            conn._abort()
            return
        self._pass_on(conn)

    def forget(self, conn: Connection) -> None:
        if conn in self._open:
            self._open.discard(conn)
            self._pass_on(None)

    def _pass_on(self, conn: Connection | None) -> None:
        """Hand ``conn`` (or, with ``None``, a free place) to the first caller waiting."""
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        if conn is not None:
            self._idle.append(conn)

    async def request(self, method: str, target: str, headers: Iterable[tuple[str, str]],
                      body: bytes | AsyncIterator[bytes] | None = None) -> UpstreamResponse:
        """Send one request; return when the response head has arrived.

        A reused keep-alive connection that turns out closed before any byte of
        the response arrived is replaced once by a new one, when the request can
        be sent again (an idempotent method, no streamed body).
        """
        head, chunked, length = build_head(method, target, headers, self.host, self.port,
                                           body)
        head_only = method == "HEAD"
        while True:
            conn = self.idle_connection()  # the common case, without a coroutine
            reused = conn is not None
            if conn is None:
                conn, reused = await self.acquire()
            waiter = conn.start(head, body, chunked=chunked, length=length,
                                head_only=head_only)
            timer = self.loop.call_later(self.read_timeout, conn._read_timed_out, waiter)
            try:
                return await waiter
            except Disconnected:
                conn.cancel_writer()
                conn.done_with(reusable=False)
                if (reused and not conn._received and method in RESENDABLE
                        and not isinstance(body, AsyncIterator)):
                    continue  # a stale keep-alive connection: try a fresh one
                raise
            except BaseException:
                conn.cancel_writer()
                conn.done_with(reusable=False)
                raise
            finally:
                timer.cancel()

    async def close(self) -> None:
        self.closed = True
        for conn in list(self._open):
            conn._abort()
        self._idle.clear()
        self._open.clear()


class InvalidHead(ValueError):
    """A request head that would put bytes on the wire it must not (a header
    injection): the call is refused and nothing is written."""


_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_METHOD = re.compile(_TOKEN)
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# Byte sets for bytes.translate(None, delete=...): what is left after deleting the
# allowed bytes is what is wrong (a scan in C, several times faster than a regex).
_TOKEN_BYTES = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_HIGH = bytes(range(0x80, 0x100))  # obs-text: UTF-8, or bytes kept by surrogateescape
_VALUE_BYTES = b"\t" + bytes(range(0x20, 0x7F)) + _HIGH  # RFC 9110 field-value
_TARGET_BYTES = bytes(range(0x21, 0x7F)) + _HIGH  # no space, no control character
_HEAD_BYTES = _VALUE_BYTES + b"\r\n"


def _raw(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def head_problem(method: str, target: str,
                 headers: Iterable[tuple[str, str]] | CIMultiDict[str]) -> str | None:
    """What makes a request head unsafe to write, or ``None``.

    The method and every header name must be RFC 9110 tokens; the target and
    the header values must hold no control character (no CR/LF to start a
    header or a request of their own, no NUL; a value may hold a tab) and the
    target no space.
    """
    if not _METHOD.fullmatch(method):
        return f"the method {method[:32]!r} is not a token"
    if not target or _raw(target).translate(None, _TARGET_BYTES):
        return "the request target is empty or holds a space or control character"
    if isinstance(headers, CIMultiDict):
        names, values = list(headers.keys()), "\t".join(headers.values())
    else:
        pairs = headers if isinstance(headers, list) else list(headers)
        names, values = [n for n, _ in pairs], "\t".join([v for _, v in pairs])
    if ("" in names or _raw("".join(names)).translate(None, _TOKEN_BYTES)
            or _raw(values).translate(None, _VALUE_BYTES)):
        items = list(headers.items()) if isinstance(headers, CIMultiDict) else list(headers)
        for name, value in items:
            if not _METHOD.fullmatch(name):
                return f"the header name {name[:64]!r} is not a token"
            if _BAD_VALUE.search(value):
                return f"the value of header {name[:64]!r} holds a control character"
    return None


def build_head(method: str, target: str, headers: Iterable[tuple[str, str]], host: str,
               port: int, body: bytes | AsyncIterator[bytes] | None
               ) -> tuple[bytes, bool, int | None]:
    """The request head, whether a streamed body goes chunked, and else its length.

    A body in bytes gets its own Content-Length; a streamed body keeps the one
    given in ``headers`` (exactly one, digits only), which the writer then
    holds it to (:meth:`Connection.start`), or goes chunked without one.

    :raise InvalidHead: the method, target or a header would inject bytes
        (:func:`head_problem`), or a streamed body's Content-Length is not one
        number; nothing is written then.
    """
    sent: list[tuple[str, str]] = []
    has_host = False
    lengths: list[str] = []
    for name, value in headers:
        lower = name.lower()
        if lower == "host":
            has_host = True
        elif lower == "content-length":
            if not (isinstance(body, bytes) or body is None):
                lengths.append(value)
            continue  # written below: recomputed for bytes, checked for a stream
        elif lower == "transfer-encoding":
            continue
        sent.append((name, value))
    lines = [f"{method} {target} HTTP/1.1"]
    lines.extend([f"{name}: {value}" for name, value in sent])
    if not has_host:
        lines.append(f"Host: {host}:{port}" if port not in (80, 443) else f"Host: {host}")
    chunked = False
    length: int | None = None
    if isinstance(body, bytes):
        lines.append(f"Content-Length: {len(body)}")
    elif body is not None and lengths:
        if len(lengths) > 1 or not (lengths[0].isascii() and lengths[0].isdigit()):
            raise InvalidHead("a streamed body needs exactly one numeric Content-Length")
        length = int(lengths[0])
        lines.append(f"Content-Length: {length}")
    elif body is not None:
        lines.append("Transfer-Encoding: chunked")
        chunked = True
    elif method in ("POST", "PUT", "PATCH"):
        lines.append("Content-Length: 0")
    lines.append("\r\n")
    data = _raw("\r\n".join(lines))
    names = [n for n, _ in sent]
    # One CR LF per line (none hidden in a method, target, name or value), no other
    # control byte, then the method, the target and the names as head_problem wants.
    if (data.count(b"\n") != len(lines) or data.count(b"\r") != len(lines)
            or data.translate(None, _HEAD_BYTES)
            or not _METHOD.fullmatch(method) or not target
            or _raw(target).translate(None, _TARGET_BYTES)
            or _raw("".join(names)).translate(None, _TOKEN_BYTES)
            or "" in names):
        raise InvalidHead(head_problem(method, target, sent)
                          or "the request head holds a line break or control character")
    return data, chunked, length
