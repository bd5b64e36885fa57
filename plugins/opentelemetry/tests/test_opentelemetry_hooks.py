"""The plugin in a real in-process gateway (pygate.testing), real upstreams and a real
OTLP/HTTP receiver: traces started and continued, spans and their attributes, the
traceparent each upstream call carries, sampling, the access log's trace_id."""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pygate_logging
import pygate_opentelemetry
import pytest
from aiohttp import web
from otlp_collector import CLIENT, ERROR, SERVER, UNSET, Collector, Received

from pygate.testing import Recorded, free_port, start_gateway

if TYPE_CHECKING:
    from pygate.testing import TestGateway

pytest_plugins = ["pygate.testing"]

PLUGINS = {"opentelemetry": pygate_opentelemetry}
TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"


def settings(receiver: Collector, **extra: Any) -> dict[str, Any]:
    """The plugin's table, exporting to ``receiver`` every 50 ms."""
    return {"endpoint": receiver.url, "flush_interval": "50ms", **extra}


def proxy(upstream: str, name: str = "api", path: str = "/api", **extra: Any) -> dict[str, Any]:
    return {"name": name, "path": path, "upstream": upstream, **extra}


def sent_traceparent(request: Recorded) -> tuple[str, str, int]:
    """``(trace_id, span_id, flags)`` of the traceparent an upstream received."""
    values = request.headers.getall("traceparent")
    assert len(values) == 1, values
    match = TRACEPARENT.match(values[0])
    assert match is not None, values[0]
    return match.group(1), match.group(2), int(match.group(3), 16)


def one(spans: list[Received], kind: int) -> Received:
    found = [span for span in spans if span.kind == kind]
    assert len(found) == 1, spans
    return found[0]


async def teapot(request: web.Request) -> web.Response:
    return web.Response(status=418, text="short and stout")


def answering(value: Any) -> Any:
    """A handler answering ``value`` as JSON."""
    async def handler(request: web.Request) -> web.Response:
        return web.json_response(value)

    return handler


# ---------------------------------------------------------------------------
# Starting and continuing traces
# ---------------------------------------------------------------------------


async def test_hook_pre_route_starts_a_trace_and_the_call_carries_its_client_span(
        collector, pygate_gateway, fake_upstream) -> None:
    upstream = await fake_upstream()
    receiver = await collector()
    gateway = await pygate_gateway(
        {"plugins": {"opentelemetry": settings(receiver)}, "routes": [proxy(upstream.url)]},
        PLUGINS)
    status, _, _ = await gateway.request("GET", "/api/users/7?page=2",
                                         headers={"User-Agent": "probe/1.0"})
    assert status == 200
    trace_id, span_id, flags = sent_traceparent(upstream.requests[-1])
    assert flags & 0x01  # sampled: sample = 1.0 records every new trace
    assert "tracestate" not in upstream.requests[-1].headers

    spans = await receiver.wait_for(2, trace_id=trace_id)
    server, client = one(spans, SERVER), one(spans, CLIENT)
    assert server.parent_span_id == ""  # a new trace: the server span is its root
    assert client.span_id == span_id  # the upstream was told the client span's id
    assert client.parent_span_id == server.span_id
    assert (server.name, client.name) == ("GET api", f"GET {upstream.url}")
    assert server.resource["service.name"] == "pygate"
    assert server.scope == "pygate_opentelemetry"


async def test_hook_transform_request_continues_a_valid_traceparent_with_its_tracestate(
        collector, pygate_gateway, fake_upstream) -> None:
    upstream = await fake_upstream()
    receiver = await collector()
    gateway = await pygate_gateway(
        {"plugins": {"opentelemetry": settings(receiver)}, "routes": [proxy(upstream.url)]},
        PLUGINS)
    status, _, _ = await gateway.request("GET", "/api/x", headers={
        "traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01",
        "tracestate": "congo=t61rcWkgMzE, rojo=00f067aa0ba902b7"})
    assert status == 200
    trace_id, span_id, _ = sent_traceparent(upstream.requests[-1])
    assert trace_id == CALLER_TRACE  # the caller's trace goes on
    assert span_id != CALLER_SPAN
    assert upstream.requests[-1].headers.getall("tracestate") == [
        "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"]

    spans = await receiver.wait_for(2, trace_id=CALLER_TRACE)
    server, client = one(spans, SERVER), one(spans, CLIENT)
    assert server.parent_span_id == CALLER_SPAN  # the caller's span is the parent
    assert client.parent_span_id == server.span_id and client.span_id == span_id
    assert server.trace_state == "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"


INVALID_TRACEPARENTS = [
    f"00-{CALLER_TRACE.upper()}-{CALLER_SPAN}-01",  # upper-case hex
    f"00-{'0' * 32}-{CALLER_SPAN}-01",  # all-zero trace id
    f"00-{CALLER_TRACE}-{'0' * 16}-01",  # all-zero parent id
    f"ff-{CALLER_TRACE}-{CALLER_SPAN}-01",  # version ff
    f"00-{CALLER_TRACE}-{CALLER_SPAN}-01-extra",  # version 00 has nothing after the flags
    f"00-{CALLER_TRACE}-{CALLER_SPAN}-1",  # short flags
    f"00-{CALLER_TRACE[:-1]}-{CALLER_SPAN}-01",  # short trace id
    f"00_{CALLER_TRACE}_{CALLER_SPAN}_01",
    f"0-{CALLER_TRACE}-{CALLER_SPAN}-01",
    f"{CALLER_TRACE}",
    "",
    "-",
    "00---",
    f"00-{CALLER_TRACE}-{CALLER_SPAN}-zz",
    f"01-{CALLER_TRACE}-{CALLER_SPAN}-01-" + "x" * 1000,  # longer than any version
    f"00-{CALLER_TRACE}-{CALLER_SPAN}-01, 00-{CALLER_TRACE}-{CALLER_SPAN}-01",
    "null",
    "\u00e9t\u00e9",
]


@pytest.mark.parametrize("value", INVALID_TRACEPARENTS)
async def test_an_invalid_traceparent_is_ignored_and_a_new_trace_starts(
        collector, pygate_gateway, fake_upstream, value: str) -> None:
    upstream = await fake_upstream()
    receiver = await collector()
    gateway = await pygate_gateway(
        {"plugins": {"opentelemetry": settings(receiver)}, "routes": [proxy(upstream.url)]},
        PLUGINS)
    status, _, _ = await gateway.request("GET", "/api/x", headers={
        "traceparent": value, "tracestate": "congo=t61rcWkgMzE"})
    assert status == 200
    trace_id, _, flags = sent_traceparent(upstream.requests[-1])
    assert trace_id != CALLER_TRACE and flags & 0x01
    # an invalid traceparent takes its tracestate with it
    assert "tracestate" not in upstream.requests[-1].headers
    server = one(await receiver.wait_for(2, trace_id=trace_id), SERVER)
    assert server.parent_span_id == "" and server.trace_state == ""


async def test_two_traceparent_lines_are_no_parent(collector, pygate_gateway,
                                                    fake_upstream) -> None:
    upstream = await fake_upstream()
    receiver = await collector()
    gateway = await pygate_gateway(
        {"plugins": {"opentelemetry": settings(receiver)}, "routes": [proxy(upstream.url)]},
        PLUGINS)
    line = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"
    status, _, _ = await gateway.request("GET", "/api/x", headers=[
        ("traceparent", line), ("traceparent", line)])
    assert status == 200
    assert sent_traceparent(upstream.requests[-1])[0] != CALLER_TRACE


@pytest.mark.parametrize("value", [
    "congo=t61rcWkgMzE,congo=again",  # a repeated key
    "Congo=t61rcWkgMzE",  # keys are lower case
    "congo",  # no value
    "congo=",  # an empty value
    "congo=a=b",  # "=" in a value
    ",".join(f"k{i}=v" for i in range(33)),  # more than 32 members
    "congo=\u00e9",
])
async def test_a_malformed_tracestate_is_dropped_and_the_trace_goes_on(
        collector, pygate_gateway, fake_upstream, value: str) -> None:
    upstream = await fake_upstream()
    receiver = await collector()
    gateway = await pygate_gateway(
        {"plugins": {"opentelemetry": settings(receiver)}, "routes": [proxy(upstream.url)]},
        PLUGINS)
    status, _, _ = await gateway.request("GET", "/api/x", headers={
        "traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01", "tracestate": value})
    assert status == 200
    assert sent_traceparent(upstream.requests[-1])[0] == CALLER_TRACE
    assert "tracestate" not in upstream.requests[-1].headers


async def test_header_bytes_no_client_library_would_send_are_no_error(
        collector, pygate_gateway, fake_upstream) -> None:
    """Raw bytes (Latin-1, controls, a huge value) in both headers: the request is
    answered as if they were absent, never with a 500."""
    upstream = await fake_upstream()
    receiver = await collector()
    gateway = await pygate_gateway(
        {"plugins": {"opentelemetry": settings(receiver)}, "routes": [proxy(upstream.url)]},
        PLUGINS)
    host, port = gateway.url.removeprefix("http://").rsplit(":", 1)
    heads = [
        b"traceparent: 00-\xff\xfe-01\r\ntracestate: a=\xff\xfe\r\n",
        b"traceparent: 00-" + CALLER_TRACE.encode() + b"-" + CALLER_SPAN.encode()
        + b"-01\r\ntracestate: caf\xc3\xa9=\xc3\xa9\r\n",
        b"traceparent: 00-" + CALLER_TRACE.encode() + b"-" + CALLER_SPAN.encode()
        + b"-01\r\ntracestate: k=" + b"v" * 8000 + b"\r\n",
        b"traceparent:\r\ntracestate:\r\n",
        b"traceparent: \t00-" + CALLER_TRACE.encode() + b"-" + CALLER_SPAN.encode()
        + b"-01\t\r\ntracestate: ,,,\r\n",
    ]
    for head in heads:
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"GET /api/raw HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + head
                     + b"\r\n")
        await writer.drain()
        answer = await reader.read()
        writer.close()
        assert answer.startswith(b"HTTP/1.1 200"), (head, answer[:200])
        sent_traceparent(upstream.requests[-1])  # a valid one went upstream
    assert len(upstream.requests) == len(heads)


# ---------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------


async def test_sample_zero_records_no_new_trace_but_follows_a_sampled_parent(
        collector, pygate_gateway, fake_upstream) -> None:
    upstream = await fake_upstream()
    receiver = await collector()
    gateway = await pygate_gateway(
        {"plugins": {"opentelemetry": settings(receiver, sample=0)},
         "routes": [proxy(upstream.url)]}, PLUGINS)
    for _ in range(5):
        assert (await gateway.request("GET", "/api/new"))[0] == 200
        # the trace is still propagated, marked as not recorded
        assert sent_traceparent(upstream.requests[-1])[2] & 0x01 == 0
    unsampled = "0af7651916cd43dd8448eb211c80319c"
    assert (await gateway.request("GET", "/api/followed", headers={
        "traceparent": f"00-{unsampled}-b7ad6b7169203331-00"}))[0] == 200
    assert sent_traceparent(upstream.requests[-1])[:3:2] == (unsampled, 0)
    assert (await gateway.request("GET", "/api/followed", headers={
        "traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"}))[0] == 200
    assert sent_traceparent(upstream.requests[-1])[0] == CALLER_TRACE

    await receiver.wait_for(2, trace_id=CALLER_TRACE)
    await asyncio.sleep(0.2)  # four more flush intervals: anything else would be here
    assert {span.trace_id for span in receiver.spans} == {CALLER_TRACE}


async def test_sample_one_follows_an_unsampled_parent(collector, pygate_gateway,
                                                     fake_upstream) -> None:
    upstream = await fake_upstream()
    receiver = await collector()
    gateway = await pygate_gateway(
        {"plugins": {"opentelemetry": settings(receiver)}, "routes": [proxy(upstream.url)]},
        PLUGINS)
    unsampled = "0af7651916cd43dd8448eb211c80319c"
    await gateway.request("GET", "/api/a", headers={
        "traceparent": f"00-{unsampled}-b7ad6b7169203331-00"})
    assert sent_traceparent(upstream.requests[-1])[:3:2] == (unsampled, 0)
    await gateway.request("GET", "/api/b")
    traced = sent_traceparent(upstream.requests[-1])[0]
    await receiver.wait_for(2, trace_id=traced)
    await asyncio.sleep(0.2)
    assert receiver.in_trace(unsampled) == []


async def test_a_route_may_sample_otherwise(
        collector, pygate_gateway, fake_upstream) -> None:
    upstream = await fake_upstream()
    receiver = await collector()
    gateway = await pygate_gateway(
        {"plugins": {"opentelemetry": settings(receiver)},
         "routes": [proxy(upstream.url),
                    proxy(upstream.url, name="quiet", path="/quiet",
                          plugins={"opentelemetry": {"sample": 0}}),
                    proxy(upstream.url, name="untraced", path="/untraced",
                          plugins={"opentelemetry": False})]}, PLUGINS)
    await gateway.request("GET", "/quiet")
    assert sent_traceparent(upstream.requests[-1])[2] & 0x01 == 0
    await gateway.request("GET", "/untraced", headers={"traceparent": "kept as sent"})
    assert upstream.requests[-1].headers["traceparent"] == "kept as sent"  # plugin off
    await gateway.request("GET", "/api")
    traced = sent_traceparent(upstream.requests[-1])[0]
    await receiver.wait_for(2, trace_id=traced)
    await asyncio.sleep(0.2)
    assert {span.trace_id for span in receiver.spans} == {traced}


# ---------------------------------------------------------------------------
# Spans and their attributes
# ---------------------------------------------------------------------------


async def test_spans_have_the_http_semantic_convention_attributes_and_times(
        collector, pygate_gateway, fake_upstream) -> None:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(0.05)
        return web.json_response({"ok": True})

    upstream = await fake_upstream(handler=slow)
    receiver = await collector()
    gateway = await pygate_gateway(
        {"plugins": {"opentelemetry": settings(receiver, service_name="edge")},
         "routes": [proxy(upstream.url, name="users", path="/api/users/{id}")]}, PLUGINS)
    before = time.time_ns()
    status, _, _ = await gateway.request("POST", "/api/users/7?token=secret",
                                         headers={"User-Agent": "probe/1.0"}, data=b"{}")
    after = time.time_ns()
    assert status == 200
    trace_id = sent_traceparent(upstream.requests[-1])[0]
    spans = await receiver.wait_for(2, trace_id=trace_id)
    server, client = one(spans, SERVER), one(spans, CLIENT)
    port = int(gateway.url.rsplit(":", 1)[1])
    assert server.name == "POST users"
    assert server.attributes == {
        "http.request.method": "POST", "url.path": "/api/users/7", "url.scheme": "http",
        "http.route": "users", "server.address": "127.0.0.1", "server.port": port,
        "client.address": "127.0.0.1", "user_agent.original": "probe/1.0",
        "network.protocol.version": "1.1", "http.response.status_code": 200}
    upstream_port = int(upstream.url.rsplit(":", 1)[1])
    assert client.attributes == {
        "http.request.method": "POST", "server.address": "127.0.0.1",
        "server.port": upstream_port, "url.full": upstream.url + upstream.requests[-1].path,
        "http.response.status_code": 200}
    assert "secret" not in json.dumps([server.attributes, client.attributes])
    assert server.status == client.status == UNSET
    assert server.resource["service.name"] == "edge"
    # the request's arrival to its end, the call inside it, the upstream's 50 ms within
    assert before <= server.start <= client.start <= client.end <= server.end <= after
    assert client.duration >= 0.05


async def test_server_errors_mark_both_spans(
        collector, pygate_gateway, fake_upstream) -> None:
    async def broken(request: web.Request) -> web.Response:
        return web.Response(status=500, text="boom")

    upstream = await fake_upstream(handler=broken)
    receiver = await collector()
    gateway = await pygate_gateway(
        {"plugins": {"opentelemetry": settings(receiver)}, "routes": [proxy(upstream.url)]},
        PLUGINS)
    assert (await gateway.request("GET", "/api/x"))[0] == 500
    trace_id = sent_traceparent(upstream.requests[-1])[0]
    spans = await receiver.wait_for(2, trace_id=trace_id)
    server, client = one(spans, SERVER), one(spans, CLIENT)
    assert server.status == client.status == ERROR
    assert server.attributes["error.type"] == client.attributes["error.type"] == "500"
    assert server.attributes["http.response.status_code"] == 500


async def test_a_client_error_marks_the_call_not_the_server_span(
        collector, pygate_gateway, fake_upstream) -> None:
    upstream = await fake_upstream(handler=teapot)
    receiver = await collector()
    gateway = await pygate_gateway(
        {"plugins": {"opentelemetry": settings(receiver)}, "routes": [proxy(upstream.url)]},
        PLUGINS)
    assert (await gateway.request("GET", "/api/x"))[0] == 418
    spans = await receiver.wait_for(2, trace_id=sent_traceparent(upstream.requests[-1])[0])
    server, client = one(spans, SERVER), one(spans, CLIENT)
    assert server.status == UNSET and "error.type" not in server.attributes
    assert client.status == ERROR and client.attributes["error.type"] == "418"


async def test_an_upstream_that_refuses_is_a_failed_call_and_a_502(
        collector, pygate_gateway) -> None:
    receiver = await collector()
    dead = f"http://127.0.0.1:{free_port()}"
    gateway = await pygate_gateway(
        {"plugins": {"opentelemetry": settings(receiver)}, "routes": [proxy(dead)]}, PLUGINS)
    status, _, body = await gateway.request("GET", "/api/x")
    assert status == 502
    server = one(await receiver.wait_for(2), SERVER)
    client = one(receiver.in_trace(server.trace_id), CLIENT)
    assert server.status == ERROR and server.attributes["error.type"] == "502"
    assert server.status_message == body["detail"]
    assert client.status == ERROR and client.attributes["error.type"] == "BadGateway"
    assert "http.response.status_code" not in client.attributes
    assert client.attributes["server.port"] == int(dead.rsplit(":", 1)[1])


async def test_no_route_and_unknown_methods_keep_span_names_bounded(
        collector, pygate_gateway, fake_upstream) -> None:
    upstream = await fake_upstream()
    receiver = await collector()
    gateway = await pygate_gateway(
        {"plugins": {"opentelemetry": settings(receiver)}, "routes": [proxy(upstream.url)]},
        PLUGINS)
    assert (await gateway.request("GET", "/nowhere"))[0] == 404
    assert (await gateway.request("PROPFIND", "/api/x"))[0] == 200
    spans = await receiver.wait_for(3)
    servers = sorted((span for span in spans if span.kind == SERVER), key=lambda s: s.start)
    missing, odd = servers
    assert missing.name == "GET" and "http.route" not in missing.attributes
    assert missing.attributes["http.response.status_code"] == 404 and missing.status == UNSET
    assert odd.name == "HTTP api"
    assert odd.attributes["http.request.method"] == "_OTHER"
    assert odd.attributes["http.request.method_original"] == "PROPFIND"
    assert one(receiver.in_trace(odd.trace_id), CLIENT).name == f"HTTP {upstream.url}"


async def test_every_call_of_an_aggregate_route_has_its_client_span(
        collector, pygate_gateway, fake_upstream) -> None:
    users = await fake_upstream(handler=answering({"id": "7", "name": "Ada"}))
    orders = await fake_upstream(handler=answering([{"id": "100"}]))
    receiver = await collector()
    gateway = await pygate_gateway({
        "plugins": {"opentelemetry": settings(receiver)},
        "upstreams": {"users": {"targets": [users.url]}, "orders": {"targets": [orders.url]}},
        "routes": [{"name": "profile", "path": "/profile/{id}", "aggregate": {"calls": {
            "user": {"upstream": "users", "path": "/users/{id}"},
            "orders": {"upstream": "orders", "path": "/orders",
                       "query": {"userId": "{user.id}"}},
            "again": {"upstream": "users", "path": "/users/{id}/settings"}}}}]}, PLUGINS)
    status, _, body = await gateway.request("GET", "/profile/7")
    assert status == 200 and body["user"]["name"] == "Ada"
    sent = [sent_traceparent(r) for r in [*users.requests, *orders.requests]]
    trace_id = sent[0][0]
    assert {s[0] for s in sent} == {trace_id} and len({s[1] for s in sent}) == 3
    spans = await receiver.wait_for(4, trace_id=trace_id)
    server = one(spans, SERVER)
    clients = {span.span_id: span for span in spans if span.kind == CLIENT}
    assert set(clients) == {s[1] for s in sent}  # each call named its own span upstream
    assert all(span.parent_span_id == server.span_id for span in clients.values())
    assert sorted(span.name for span in clients.values()) == [
        "GET orders", "GET users", "GET users"]
    assert sorted(span.attributes["url.full"] for span in clients.values()) == sorted(
        [f"{users.url}/users/7", f"{users.url}/users/7/settings", f"{orders.url}/orders"])


async def test_graphql_calls_have_client_spans(
        collector, pygate_gateway, fake_upstream,
                                               tmp_path: Path) -> None:
    users = await fake_upstream(handler=answering({"id": "7", "name": "Ada"}))
    orders = await fake_upstream(handler=answering([{"id": "100"}, {"id": "101"}]))
    receiver = await collector()
    (tmp_path / "schema.graphql").write_text(
        "type Query { user(id: ID!): User }\n"
        "type User { id: ID! name: String orders: [Order] }\n"
        "type Order { id: ID! }\n")
    gateway = await pygate_gateway({
        "plugins": {"opentelemetry": settings(receiver)},
        "upstreams": {"users": {"targets": [users.url]}, "orders": {"targets": [orders.url]}},
        "routes": [{"name": "graphql", "path": "/graphql", "graphql": {
            "schema": "schema.graphql",
            "resolvers": {
                "Query.user": {"upstream": "users", "path": "/users/{args.id}"},
                "User.orders": {"upstream": "orders", "path": "/orders",
                                "query": {"userId": "{parent.id}"}}}}}]},
        PLUGINS, base_dir=str(tmp_path))
    status, _, body = await gateway.request(
        "POST", "/graphql", json={"query": '{ user(id: "7") { name orders { id } } }'})
    assert status == 200 and body["data"]["user"]["orders"] == [{"id": "100"}, {"id": "101"}]
    user_call, orders_call = sent_traceparent(users.requests[-1]), sent_traceparent(
        orders.requests[-1])
    assert user_call[0] == orders_call[0] and user_call[1] != orders_call[1]
    spans = await receiver.wait_for(3, trace_id=user_call[0])
    server = one(spans, SERVER)
    assert server.name == "POST graphql"
    clients = {span.span_id: span.name for span in spans if span.kind == CLIENT}
    assert clients == {user_call[1]: "GET users", orders_call[1]: "GET orders"}


async def test_a_websocket_is_one_call_as_long_as_the_session(
        collector, pygate_gateway, fake_upstream) -> None:
    async def echo_socket(request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        async for message in socket:
            await socket.send_str(message.data)
        return socket

    upstream = await fake_upstream(handler=echo_socket)
    receiver = await collector()
    gateway = await pygate_gateway(
        {"plugins": {"opentelemetry": settings(receiver)}, "routes": [proxy(upstream.url)]},
        PLUGINS)
    async with gateway.session.ws_connect(gateway.url + "/api/socket") as socket:
        await socket.send_str("hello")
        assert (await socket.receive()).data == "hello"
        await asyncio.sleep(0.1)
    trace_id, span_id, _ = sent_traceparent(upstream.requests[-1])
    spans = await receiver.wait_for(2, trace_id=trace_id)
    server, client = one(spans, SERVER), one(spans, CLIENT)
    assert client.span_id == span_id and client.parent_span_id == server.span_id
    assert server.attributes["http.response.status_code"] == 101
    assert server.status == client.status == UNSET
    assert client.duration >= 0.1  # the session, not just the handshake


# ---------------------------------------------------------------------------
# The access log
# ---------------------------------------------------------------------------


async def test_the_access_log_line_carries_the_trace_id(collector, fake_upstream,
                                                        tmp_path: Path) -> None:
    upstream = await fake_upstream()
    receiver = await collector()
    log_path = tmp_path / "access.log"
    gateway = await start_gateway(
        {"plugins": {"opentelemetry": settings(receiver), "logging": {"path": str(log_path)}},
         "routes": [proxy(upstream.url),
                    proxy(upstream.url, name="plain", path="/plain",
                          plugins={"opentelemetry": False})]},
        {**PLUGINS, "logging": pygate_logging})
    try:
        await gateway.request("GET", "/api/x", headers={
            "traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"})
        await gateway.request("GET", "/api/y")
        started = sent_traceparent(upstream.requests[-1])[0]
        await gateway.request("GET", "/plain")
    finally:
        await gateway.close()  # writes the buffered lines
    lines = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert [line.get("trace_id") for line in lines] == [CALLER_TRACE, started, None]
    assert "trace_id" not in lines[2]  # no tracing on that route: no key


# ---------------------------------------------------------------------------
# A collector in trouble costs the client nothing
# ---------------------------------------------------------------------------


async def timed_requests(gateway: TestGateway, count: int) -> tuple[list[int], float]:
    """The statuses of ``count`` requests one after the other, and the slowest's time."""
    statuses, slowest = [], 0.0
    for index in range(count):
        began = time.monotonic()
        statuses.append((await gateway.request("GET", f"/api/{index}"))[0])
        slowest = max(slowest, time.monotonic() - began)
    return statuses, slowest


@pytest.mark.parametrize("mode", ["down", "slow", "fail"])
async def test_a_collector_in_trouble_changes_no_answer(
        collector, fake_upstream, mode: str) -> None:
    """Down (nothing listens), slow (it holds every export for 30 s: longer than any
    request here may take) or failing (500): every request is answered as usual and
    none waits for the export; the gateway still stops within its bounded wait."""
    upstream = await fake_upstream()
    if mode == "down":
        endpoint = f"http://127.0.0.1:{free_port()}/v1/traces"
    else:
        receiver = await collector(mode=mode, delay=30.0)
        endpoint = receiver.url
    gateway = await start_gateway(
        {"plugins": {"opentelemetry": {"endpoint": endpoint, "flush_interval": "10ms",
                                       "max_batch": 2, "timeout": "30s"}},
         "routes": [proxy(upstream.url)]}, PLUGINS)
    try:
        statuses, slowest = await timed_requests(gateway, 30)
    finally:
        began = time.monotonic()
        await gateway.close()
        closing = time.monotonic() - began
    assert statuses == [200] * 30
    assert slowest < 5.0  # an export in the way would have held a request for 30 s
    assert closing < 15.0  # shutdown waits 5 s at most for the collector
    assert all(TRACEPARENT.match(r.headers["traceparent"]) for r in upstream.requests)


async def test_spans_beyond_the_queue_are_dropped(collector, fake_upstream) -> None:
    """A collector that takes 1 s per export, a queue of 4: a burst of 40 spans keeps
    at most the queue's worth waiting; the rest are dropped, never held."""
    upstream = await fake_upstream()
    receiver = await collector(mode="slow", delay=1.0)
    gateway = await start_gateway(
        {"plugins": {"opentelemetry": {"endpoint": receiver.url, "flush_interval": "10ms",
                                       "max_queue": 4, "max_batch": 2}},
         "routes": [proxy(upstream.url)]}, PLUGINS)
    try:
        statuses, _ = await timed_requests(gateway, 20)
        assert statuses == [200] * 20
        await receiver.wait_for(2, within=10)  # the first export came through
        await asyncio.sleep(3.0)  # the collector's pace: what was queued arrives
    finally:
        await gateway.close()
    assert 2 <= len(receiver.spans) <= 2 + 4 + 2, len(receiver.spans)


async def test_headers_go_with_every_export(
        collector, pygate_gateway, fake_upstream,
                                            monkeypatch) -> None:
    monkeypatch.setenv("OTEL_TEST_TOKEN", "s3cret")
    upstream = await fake_upstream()
    receiver = await collector()
    gateway = await pygate_gateway(
        {"plugins": {"opentelemetry": settings(
            receiver, headers={"Authorization": "Bearer ${OTEL_TEST_TOKEN}",
                               "X-Tenant": "blue"})},
         "routes": [proxy(upstream.url)]}, PLUGINS)
    await gateway.request("GET", "/api/1")
    await receiver.wait_for(2)
    await gateway.request("GET", "/api/2")
    await receiver.wait_for(4)
    assert len(receiver.exports) >= 2
    for headers in receiver.exports:
        assert headers["Authorization"] == "Bearer s3cret"
        assert headers["X-Tenant"] == "blue"
        assert headers["Content-Type"] == "application/x-protobuf"


async def test_shutdown_sends_what_is_queued(collector, fake_upstream) -> None:
    upstream = await fake_upstream()
    receiver = await collector()
    gateway = await start_gateway(
        {"plugins": {"opentelemetry": {"endpoint": receiver.url, "flush_interval": "1h"}},
         "routes": [proxy(upstream.url)]}, PLUGINS)
    try:
        for index in range(3):
            await gateway.request("GET", f"/api/{index}")
        await asyncio.sleep(0.1)
        assert receiver.spans == []  # an hour's interval: nothing sent yet
    finally:
        await gateway.close()
    assert len(receiver.spans) == 6

