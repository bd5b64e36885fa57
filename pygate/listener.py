"""Listening sockets, and accepting every pending connection at once.

The event loop's own server (``loop.create_server``) is not used for the
gateway's listener: under uvloop, libuv accepts one pending connection per
loop iteration, so when the loop is busy a burst of new connections waits one
iteration each (measured: 200 connections arriving together against a loaded
gateway, the last accepted about a second later, its first request answered
that late; see benchmarks/README.md). :class:`AcceptSite` watches the
listening socket itself and accepts everything pending (up to
:data:`ACCEPT_BATCH`) whenever it is readable, on uvloop and asyncio alike,
then hands each connection to the loop with ``connect_accepted_socket``.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import ssl
from collections.abc import Callable
from typing import Any

import structlog
from aiohttp import web

log = structlog.get_logger("pygate")

ACCEPT_BATCH = 512
"""At most this many connections are accepted per readiness of the listening socket."""

BACKLOG = 1024
"""The listen queue length of the gateway's sockets."""

HANDSHAKE_TIMEOUT = 10.0
"""Seconds a client has to complete the TLS handshake."""

ACCEPT_PAUSE = 1.0
"""Seconds without accepting after the process ran out of descriptors or memory."""

_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})

MAX_OPEN_FILES = 1 << 20
"""The most the soft limit on open files is raised to when the hard limit has none."""


def raise_open_files_limit() -> tuple[int, int]:
    """Raise the soft limit on open files to the hard limit; ``(before, after)``.

    Every client connection and every upstream connection holds a descriptor,
    and the soft limit is often 1,024 while the hard one is far higher; a
    gateway is meant to use what the system allows (Go programs do the same at
    start-up; nginx has ``worker_rlimit_nofile``). Where the limit cannot be
    changed, it stays as it is.
    """
    try:
        import resource
    except ImportError:  # not on this platform
        return 0, 0
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = MAX_OPEN_FILES if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError):  # e.g. above the kernel's own maximum
            return soft, soft
        return soft, wanted
    return soft, soft


def bind(host: str, port: int, *, reuse_port: bool) -> list[socket.socket]:
    """Non-blocking listening sockets for ``host:port``, one per address of ``host``.

    Port 0 picks a free port for the first address and uses it for the others.
    ``reuse_port`` sets ``SO_REUSEPORT`` (several processes accept on the port).
    """
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                               flags=socket.AI_PASSIVE)
    socks: list[socket.socket] = []
    seen: set[Any] = set()
    try:
        for family, kind, proto, _, address in infos:
            if address in seen:
                continue
            seen.add(address)
            sock = socket.socket(family, kind, proto)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if port == 0 and len(socks) > 1:
                address = (address[0], socks[0].getsockname()[1], *address[2:])
            sock.bind(address)
            sock.listen(BACKLOG)
            sock.setblocking(False)
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks


class _Listening(asyncio.AbstractServer):
    """What aiohttp keeps as a site's server: the socket, and how to stop accepting."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
        self._loop = loop
        self.sockets = (sock,)
        self._serving = True

    def close(self) -> None:
        if not self._serving:
            return
        self._serving = False
        sock = self.sockets[0]
        self._loop.remove_reader(sock.fileno())
        sock.close()

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def is_serving(self) -> bool:
        return self._serving

    async def start_serving(self) -> None:
        return None

    async def serve_forever(self) -> None:
        raise NotImplementedError("pygate serves through aiohttp's runner")

    async def wait_closed(self) -> None:
        return None


ProtocolFactory = Callable[[], asyncio.BaseProtocol]


class AcceptSite(web.BaseSite):
    """Serve a bound, listening socket through ``runner``, accepting in batches.

    Each accepted connection gets a protocol from ``factory`` (by default the
    runner's server: HTTP/1.1) and, with ``ssl``, a TLS handshake first. Both
    are read per connection, so a reload may replace them (a renewed
    certificate): open connections keep what they started with.
    """

    __slots__ = ("_connecting", "_sock", "factory", "ssl")

    def __init__(self, runner: web.BaseRunner, sock: socket.socket, *,
                 factory: ProtocolFactory | None = None,
                 ssl: ssl.SSLContext | None = None) -> None:
        super().__init__(runner)
        self._sock = sock
        self._connecting: set[asyncio.Task[Any]] = set()
        self.factory = factory
        self.ssl = ssl

    @property
    def name(self) -> str:
        host, port = self._sock.getsockname()[:2]
        host = f"[{host}]" if ":" in host else host
        scheme = "https" if self.ssl is not None else "http"
        return f"{scheme}://{host}:{port}"

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        self._sock.setblocking(False)
        self._server = _Listening(loop, self._sock)
        loop.add_reader(self._sock.fileno(), self._accept, loop)

    def _accept(self, loop: asyncio.AbstractEventLoop) -> None:
        server = self._server
        for _ in range(ACCEPT_BATCH):
            if server is None or not server.is_serving():
                return
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue  # the client gave up while queued
            except OSError as exc:
                if exc.errno not in _OUT_OF_RESOURCES:
                    raise
                log.error("cannot accept connections", error=exc.strerror,
                          retry_in_s=ACCEPT_PAUSE)
                self._pause(loop)
                return
            conn.setblocking(False)
            task = loop.create_task(self._connect(loop, conn))
            self._connecting.add(task)
            task.add_done_callback(self._connecting.discard)

    def _pause(self, loop: asyncio.AbstractEventLoop) -> None:
        fd = self._sock.fileno()
        loop.remove_reader(fd)

        def resume() -> None:
            if self._server is not None and self._server.is_serving():
                loop.add_reader(fd, self._accept, loop)

        loop.call_later(ACCEPT_PAUSE, resume)

    async def _connect(self, loop: asyncio.AbstractEventLoop, conn: socket.socket) -> None:
        server = self._runner.server
        if server is None:
            conn.close()
            return
        factory = self.factory or server
        try:
            if self.ssl is None:
                await loop.connect_accepted_socket(factory, conn)
            else:
                await loop.connect_accepted_socket(factory, conn, ssl=self.ssl,
                                                   ssl_handshake_timeout=HANDSHAKE_TIMEOUT)
        except (OSError, ssl.SSLError) as exc:  # reset meanwhile, or a failed handshake
            log.debug("accepted connection lost", error=repr(exc))
            conn.close()
