"""Which traceparent/tracestate values a trace is continued with (W3C Trace Context),
what goes upstream, and how a request's Host becomes server.address/port."""

from __future__ import annotations

import pytest
from opentelemetry.trace import SpanContext, TraceFlags, TraceState
from pygate_opentelemetry.attributes import host_and_port, protocol_version
from pygate_opentelemetry.propagation import remote_parent, trace_state, traceparent, tracestate

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"


def test_a_version_00_traceparent_is_the_parent() -> None:
    parent = remote_parent([f"00-{TRACE}-{SPAN}-01"], None)
    assert parent is not None and parent.is_remote
    assert (f"{parent.trace_id:032x}", f"{parent.span_id:016x}") == (TRACE, SPAN)
    assert parent.trace_flags.sampled and parent.trace_state == TraceState()


def test_a_later_version_may_append_fields_and_unknown_flags_are_zeroed() -> None:
    parent = remote_parent([f"cc-{TRACE}-{SPAN}-ff-what-comes-later"], None)
    assert parent is not None and int(parent.trace_flags) == 0x03


@pytest.mark.parametrize("values", [
    None, [], [""], [f"00-{TRACE}-{SPAN}-01"] * 2, [f"00-{TRACE}-{SPAN}-01-x"],
    [f"ff-{TRACE}-{SPAN}-01"], [f"00-{'0' * 32}-{SPAN}-01"], [f"00-{TRACE}-{'0' * 16}-01"],
    [f"00-{TRACE.upper()}-{SPAN}-01"], [f"00-{TRACE}-{SPAN}-01\n"], [f" 00-{TRACE}-{SPAN}-01"],
    [f"cc-{TRACE}-{SPAN}-01" + "-x" * 300], [f"cc-{TRACE}-{SPAN}-01x"],
])
def test_no_parent_from_an_invalid_traceparent(values: list[str] | None) -> None:
    assert remote_parent(values, ["congo=t61rcWkgMzE"]) is None


def test_tracestate_lines_are_one_list_kept_in_order() -> None:
    state = trace_state(["rojo=00f067aa0ba902b7 ,congo=t61rcWkgMzE", "", "  ,a@b=c d"])
    assert state is not None
    assert state.to_header() == "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE,a@b=c d"


@pytest.mark.parametrize("values", [
    None, [], [""], [",, ,"],  # nothing to keep
    ["a=1,a=2"], ["A=1"], ["a"], ["a="], ["a=b=c"], ["a= "], ["1a=b"], ["a@1=b"],
    [",".join(f"k{i}=v" for i in range(33))], ["k=" + "v" * 257], ["k=v" + "," * 9000],
    ["caf\u00e9=1"], ["k=\u00e9"], ["k=a\tb"],
])
def test_an_invalid_tracestate_is_dropped_whole(values: list[str] | None) -> None:
    assert trace_state(values) is None


def test_32_members_are_kept() -> None:
    state = trace_state([",".join(f"k{i}=v" for i in range(32))])
    assert state is not None and len(state) == 32


def test_what_goes_upstream() -> None:
    span = SpanContext(int(TRACE, 16), int(SPAN, 16), is_remote=False,
                       trace_flags=TraceFlags(0x03),
                       trace_state=TraceState([("congo", "t61rcWkgMzE")]))
    assert traceparent(span) == f"00-{TRACE}-{SPAN}-03"
    assert tracestate(span) == "congo=t61rcWkgMzE"
    plain = SpanContext(int(TRACE, 16), int(SPAN, 16), is_remote=False)
    assert traceparent(plain) == f"00-{TRACE}-{SPAN}-00" and tracestate(plain) is None


@pytest.mark.parametrize(("host", "scheme", "expected"), [
    ("api.example.com", "http", ("api.example.com", 80)),
    ("api.example.com", "https", ("api.example.com", 443)),
    ("api.example.com:8080", "http", ("api.example.com", 8080)),
    ("127.0.0.1:3001", "http", ("127.0.0.1", 3001)),
    ("[::1]:8443", "https", ("::1", 8443)),
    ("[::1]", "https", ("::1", 443)),
    (None, "http", (None, 0)), ("", "http", (None, 0)), (":80", "http", (None, 0)),
    ("host:", "http", (None, 0)), ("host:99999", "http", (None, 0)),
    ("host:8o", "http", (None, 0)), ("host:\u0661\u0662", "http", (None, 0)),
    ("::1", "http", (None, 0)), ("[::1", "http", (None, 0)), ("[]:80", "http", (None, 0)),
    ("[::1]x", "http", (None, 0)), ("h" * 300, "http", (None, 0)),
    ("h\u00e9te", "http", (None, 0)),
])
def test_server_address_and_port_of_a_host(host: str | None, scheme: str,
                                            expected: tuple[str | None, int]) -> None:
    assert host_and_port(host, scheme) == expected


def test_protocol_versions_as_the_conventions_write_them() -> None:
    assert [protocol_version(v) for v in [(1, 0), (1, 1), (2, 0), (3, 0)]] == [
        "1.0", "1.1", "2", "3"]
