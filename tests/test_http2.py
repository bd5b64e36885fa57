"""The pieces of pygate.http2 on their own: request heads as HTTP/1.1 would have them,
response heads as HTTP/2 wants them, budgets, the listener's protocol choice, and a
gateway in-process (its ``log`` hooks see every stream, as over HTTP/1.1)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp import web
from multidict import CIMultiDict

from pygate.http2 import Http2Server, Http2Settings, protocol_factory
from pygate.http2.connection import Http2Protocol
from pygate.http2.limits import Budget, hard_stream_limit, reset_burst
from pygate.http2.negotiate import PREFACE, PrefaceSniffer
from pygate.http2.request import HTTP2, Refused, request_message
from pygate.http2.stream import interim_status, response_head
from pygate.protocol import make_server
from tests.conftest import Recorder, UpstreamFactory, echo
from tests.h2client import H2Client


def head(method: bytes = b"GET", path: bytes = b"/api/x?q=1", *fields: tuple[bytes, bytes],
         scheme: bytes = b"https", authority: bytes = b"api.example.com"
         ) -> list[tuple[bytes, bytes]]:
    return [(b":method", method), (b":scheme", scheme), (b":authority", authority),
            (b":path", path), *fields]


# ---------------------------------------------------------------------------
# Request heads
# ---------------------------------------------------------------------------


def test_a_request_head_becomes_the_message_http11_would_have_made() -> None:
    message = request_message(head(b"POST", b"/api/x?q=1#frag", (b"user-agent", b"t"),
                                   (b"x-name", "é".encode())))
    assert (message.method, message.path, message.version) == ("POST", "/api/x?q=1#frag", HTTP2)
    assert list(message.headers.items()) == [("Host", "api.example.com"),
                                             ("user-agent", "t"), ("x-name", "é")]
    assert message.url.path == "/api/x" and message.url.query_string == "q=1"
    assert not message.should_close and not message.upgrade and not message.chunked


def test_host_stands_in_for_a_missing_authority() -> None:
    fields = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"),
              (b"host", b"gw.example")]
    message = request_message(fields)
    assert message.headers.getall("Host") == ["gw.example"]


@pytest.mark.parametrize(("fields", "status", "detail"), [
    (head(b"get"), 400, "unknown method"),
    (head(b"BREW"), 400, "unknown method"),
    (head(scheme=b"ftp"), 400, "invalid :scheme"),
    (head(path=b"http://internal/admin"), 400, "invalid :path"),
    (head(path=b"/a b"), 400, "invalid :path"),
    (head(path="/é".encode()), 400, "invalid :path"),
    (head(path=b"*"), 400, "invalid :path"),
    (head(path=b"/" + b"a" * 9000), 400, "request target too long"),
    (head(authority=b"user@host"), 400, "invalid :authority"),
    (head(authority=b""), 400, "invalid :authority"),
    (head(b"GET", b"/", (b"x-a", b"1\x7f")), 400, "control character in a header value"),
    (head(b"GET", b"/", (b"x(a)", b"1")), 400, "invalid header name"),
    (head(b"GET", b"/", (b"x-large", b"a" * 9000)), 431, "request header field too large"),
    (head(b"GET", b"/", *[(b"x-%d" % i, b"1") for i in range(128)]), 431,
     "too many request header fields"),
    ([(b":method", b"CONNECT"), (b":protocol", b"websocket"), (b":scheme", b"https"),
      (b":authority", b"a"), (b":path", b"/chat")], 400, "extended CONNECT is not supported"),
])
def test_heads_http11_could_not_carry_are_refused(fields: list[tuple[bytes, bytes]],
                                                  status: int, detail: str) -> None:
    with pytest.raises(Refused) as refused:
        request_message(fields)
    assert (refused.value.status, refused.value.detail) == (status, detail)


def test_options_asterisk_and_connect_keep_their_forms() -> None:
    assert request_message(head(b"OPTIONS", b"*")).path == "*"
    connect = request_message([(b":method", b"CONNECT"), (b":authority", b"db.internal:5432")])
    assert (connect.method, connect.path) == ("CONNECT", "db.internal:5432")


def test_a_content_length_on_a_request_that_ended_with_its_head_is_refused() -> None:
    with pytest.raises(Refused):
        request_message(head(b"POST", b"/", (b"content-length", b"5")), ended=True)
    assert request_message(head(b"POST", b"/", (b"content-length", b"0")), ended=True)
    assert request_message(head(b"POST", b"/", (b"content-length", b"5")), ended=False)


# ---------------------------------------------------------------------------
# Response heads
# ---------------------------------------------------------------------------


def test_response_head_drops_connection_specific_fields() -> None:
    headers = CIMultiDict([("Content-Type", "text/plain"), ("Connection", "close, X-Hop"),
                           ("Transfer-Encoding", "chunked"), ("Keep-Alive", "5"),
                           ("X-Hop", "1"), ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")])
    assert response_head("HTTP/2.0 201 Created", headers) == [
        (":status", "201"), ("content-type", "text/plain"), ("set-cookie", "a=1"),
        ("set-cookie", "b=2")]


def test_interim_responses_written_as_http11_are_recognized() -> None:
    assert interim_status(b"HTTP/1.1 100 Continue\r\n\r\n") == "100"
    assert interim_status(memoryview(b"HTTP/1.1 103 Early Hints\r\n\r\n")) == "103"
    assert interim_status(b"HTTP/1.1 200 OK\r\n\r\n") is None
    assert interim_status(b"body") is None


# ---------------------------------------------------------------------------
# Budgets and limits
# ---------------------------------------------------------------------------


def test_budget_allows_a_burst_then_refills_at_its_rate(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr("pygate.http2.limits.time.monotonic", lambda: now[0])
    budget = Budget(3, 1.0)
    assert [budget.spend() for _ in range(4)] == [True, True, True, False]
    now[0] += 2.0  # two tokens back (from -1: one to spend)
    assert budget.spend() is True
    assert budget.spend() is False
    now[0] += 100.0  # never more than the burst
    assert [budget.spend() for _ in range(4)] == [True, True, True, False]


def test_reset_budget_and_h2_headroom_follow_max_concurrent_streams() -> None:
    assert reset_burst(100) == 200 and reset_burst(10) == 200 and reset_burst(1000) == 2000
    assert hard_stream_limit(4) == 104 and hard_stream_limit(500) == 1000


# ---------------------------------------------------------------------------
# The listener's choice
# ---------------------------------------------------------------------------


class FakeTransport(asyncio.Transport):
    """A transport that records what it is told (set_protocol, writes, close)."""

    def __init__(self) -> None:
        super().__init__()
        self.protocol: Any = None
        self.written = b""
        self.closing = False

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self.protocol

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += bytes(data)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8080)}.get(
            name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def can_write_eof(self) -> bool:
        return False

    def abort(self) -> None:
        self.closing = True


async def handler(request: web.BaseRequest) -> web.StreamResponse:
    return web.Response(text="ok")


@pytest.mark.parametrize(("first", "chosen"), [
    (b"GET / HTTP/1.1\r\n", "HTTP/1.1"),
    (b"PUT / HTTP/1.1\r\n", "HTTP/1.1"),
    (b"POST / HTTP/1.1\r\n", "HTTP/1.1"),
    (PREFACE, "HTTP/2"),
])
async def test_h2c_listener_tells_http2_from_http11_by_the_first_bytes(
        first: bytes, chosen: str) -> None:
    edge = Http2Server(make_server(handler), Http2Settings())
    transport = FakeTransport()
    sniffer = PrefaceSniffer(edge)
    sniffer.connection_made(transport)
    for byte in first[:-1]:  # byte by byte: no choice while it could still be either
        sniffer.data_received(bytes([byte]))
        if transport.protocol is not None:
            break
    if chosen == "HTTP/2":
        assert transport.protocol is None
    sniffer.data_received(first[-1:])
    assert type(transport.protocol) is (Http2Protocol if chosen == "HTTP/2" else
                                        type(edge.server()))
    if chosen == "HTTP/2":  # and it answered the preface with its SETTINGS
        assert transport.written[3] == 0x4
        transport.protocol.abort()
    else:
        transport.protocol.connection_lost(None)


async def test_plain_listener_without_h2c_keeps_the_http11_server() -> None:
    from pygate.config.models import GatewaySection

    server = make_server(handler)
    assert protocol_factory(server, GatewaySection(), tls=False, http2=True) == (None, None)
    assert protocol_factory(server, GatewaySection(), tls=True, http2=False) == (None, None)
    factory, edge = protocol_factory(server, GatewaySection(h2c=True,
                                                            max_concurrent_streams=7),
                                     tls=False, http2=False)
    assert factory is not None and edge is not None
    assert edge.settings.max_concurrent_streams == 7


# ---------------------------------------------------------------------------
# In process: the log hooks see every stream
# ---------------------------------------------------------------------------


async def test_log_hooks_get_one_record_per_stream(upstream: UpstreamFactory) -> None:
    from pygate.testing import start_gateway

    up = await upstream(echo)
    recorder = Recorder()
    gw = await start_gateway({
        "gateway": {"h2c": True},
        "plugins": {"recorder": {}},
        "routes": [{"name": "api", "path": "/api", "upstream": up.url}],
    }, plugins={"recorder": recorder})
    try:
        async with await H2Client.connect(gw.running.port) as client:
            ids = [client.start("GET", f"/api/{i}", [("x-request-id", f"rec-{i}")])
                   for i in range(3)]
            ids.append(client.start("GET", "/missing", [("x-request-id", "rec-404")]))
            statuses = [(await client.response(i)).status for i in ids]
        for _ in range(200):
            if len(recorder.records) >= 4:
                break
            await asyncio.sleep(0.01)
    finally:
        await gw.close()
    assert statuses == [200, 200, 200, 404]
    records = {r["request_id"]: r for r in recorder.records}
    assert {(r["method"], r["path"], r["status"], r["route"]) for r in records.values()} == {
        ("GET", "/api/0", 200, "api"), ("GET", "/api/1", 200, "api"),
        ("GET", "/api/2", 200, "api"), ("GET", "/missing", 404, None)}
