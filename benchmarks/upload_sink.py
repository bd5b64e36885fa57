"""The upload upstream of ``bench_streaming.py``: reads every request body to its end.

A POST (or PUT) is answered only once its whole body has been read, with
``{"received": N}`` (N the body's bytes), so a proxy that passes the answer on
has passed the whole body first. ``GET /stats`` answers the counters since the
start: complete bodies, their bytes, bodies whose size was not
``--expect-size``, and bodies cut short by a closed connection. Any other GET
answers a small JSON document (for readiness checks).

It is an ``asyncio.Protocol`` with the httptools parser (on uvloop when
importable), so that receiving is cheap next to the gateways measured: one
process, meant to share the load CPU with wrk.

    python benchmarks/upload_sink.py --listen 127.0.0.1:9000 [--expect-size BYTES]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from dataclasses import asdict, dataclass
from typing import cast

import httptools

READY_BODY = b'{"id":1,"name":"demo","ok":true}'


@dataclass
class Stats:
    bodies: int = 0
    bytes: int = 0
    wrong_size: int = 0
    cut_short: int = 0


class Sink(asyncio.Protocol):
    """One client connection: parse requests, count their bodies, answer each."""

    def __init__(self, stats: Stats, expect_size: int | None) -> None:
        self.stats = stats
        self.expect_size = expect_size
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.received = 0
        self.in_body = False
        self.expect_continue = False

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._answer(400, b'{"error":"bad request"}', keep_alive=False)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.in_body:
            self.stats.cut_short += 1

    # httptools callbacks

    def on_message_begin(self) -> None:
        self.url = b""
        self.received = 0
        self.expect_continue = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"expect" and value.lower() == b"100-continue":
            self.expect_continue = True

    def on_headers_complete(self) -> None:
        self.in_body = self.parser.get_method() in (b"POST", b"PUT")
        if self.expect_continue and self.transport is not None:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self.received += len(body)

    def on_message_complete(self) -> None:
        if self.in_body:
            self.in_body = False
            stats = self.stats
            stats.bodies += 1
            stats.bytes += self.received
            if self.expect_size is not None and self.received != self.expect_size:
                stats.wrong_size += 1
            body = b'{"received":%d}' % self.received
        elif self.url.split(b"?", 1)[0] == b"/stats":
            body = json.dumps(asdict(self.stats)).encode()
        else:
            body = READY_BODY
        self._answer(200, body, keep_alive=self.parser.should_keep_alive())

    def _answer(self, status: int, body: bytes, keep_alive: bool) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        reason = b"OK" if status == 200 else b"Bad Request"
        self.transport.write(
            b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
            b"Connection: %s\r\n\r\n%s"
            % (status, reason, len(body), b"keep-alive" if keep_alive else b"close", body)
        )
        if not keep_alive:
            self.transport.close()


async def serve(host: str, port: int, expect_size: int | None) -> None:
    loop = asyncio.get_running_loop()
    stats = Stats()
    server = await loop.create_server(lambda: Sink(stats, expect_size), host, port,
                                      backlog=4096)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, metavar="HOST:PORT")
    parser.add_argument("--expect-size", type=int, default=None, metavar="BYTES",
                        help="count bodies of any other size as wrong")
    args = parser.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(host or "127.0.0.1", int(port), args.expect_size))
    else:
        uvloop.run(serve(host or "127.0.0.1", int(port), args.expect_size))


if __name__ == "__main__":
    main()
