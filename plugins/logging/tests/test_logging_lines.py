"""The pure part: time, sampling, redaction, field order, rendering."""

from __future__ import annotations

import json
from typing import Any

from multidict import CIMultiDict, CIMultiDictProxy
from pygate_logging.lines import (
    FIELDS,
    access_fields,
    full_path,
    iso_utc,
    make_renderer,
    pick_headers,
    redact_query,
    should_log,
)

NAMES = frozenset({"token", "api_key"})


def record(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "time": 1700000000.25, "request_id": "r1", "method": "GET", "path": "/a",
        "route": "a", "upstream": "u", "target": "http://127.0.0.1:1", "status": 200,
        "duration_ms": 1.5, "bytes_in": 0, "bytes_out": 10, "client_ip": "10.0.0.1",
        "consumer": None, "error": None,
    }
    return {**base, **changes}


def test_iso_utc():
    assert iso_utc(1700000000.25) == "2023-11-14T22:13:20.250Z"
    assert iso_utc(1700000000.9999) == "2023-11-14T22:13:20.999Z"
    assert iso_utc(0) == "1970-01-01T00:00:00.000Z"


def test_should_log():
    never = 0.999999
    assert not should_log(200, None, 0.0, lambda: 0.0)
    assert not should_log(399, None, 0.5, lambda: never)
    assert should_log(200, None, 0.5, lambda: 0.1)
    assert should_log(200, None, 1.0, lambda: never)
    assert should_log(400, None, 0.0, lambda: never)
    assert should_log(503, None, 0.0, lambda: never)
    assert should_log(200, "client disconnected", 0.0, lambda: never)


def test_redact_query():
    assert redact_query("", NAMES) == ""
    assert redact_query("a=1&b=2", NAMES) == "a=1&b=2"
    assert redact_query("a=1&b=2", frozenset()) == "a=1&b=2"
    assert redact_query("token=x&a=1&TOKEN=y&api%5Fkey=z&api+key=w", NAMES) == \
        "token=REDACTED&a=1&TOKEN=REDACTED&api%5Fkey=REDACTED&api+key=w"
    assert redact_query("token&token=", NAMES) == "token=REDACTED&token=REDACTED"
    assert redact_query("tokens=1&x_token=2", NAMES) == "tokens=1&x_token=2"


def test_full_path():
    assert full_path("/a", "/a", NAMES) == "/a"
    assert full_path("/a", "/a?", NAMES) == "/a"
    assert full_path("/a b", "/x/../a%20b?token=1&b=2", NAMES) == "/a b?token=REDACTED&b=2"
    # a decoded "?" is not mistaken for the query
    assert full_path("/a?b", "/a%3Fb?token=1", NAMES) == "/a%3Fb?token=REDACTED"
    # the raw target of a request the core refused before normalizing it
    assert full_path("/a/%2F?token=1", "/a/%2F?token=1", NAMES) == "/a/%2F?token=REDACTED"
    assert full_path("/a?token=1", None, NAMES) == "/a?token=REDACTED"


def test_pick_headers_redacts_credentials_always():
    headers = CIMultiDictProxy(CIMultiDict([
        ("authorization", "Bearer x"), ("Cookie", "a=1"), ("Cookie", "b=2"),
        ("Proxy-Authorization", "Basic y"), ("Accept", "a/b"), ("accept", "c/d"),
    ]))
    names = ["Authorization", "COOKIE", "Proxy-Authorization", "Accept", "Missing"]
    assert pick_headers(headers, names) == {
        "Authorization": "REDACTED", "COOKIE": "REDACTED", "Proxy-Authorization": "REDACTED",
        "Accept": "a/b, c/d",
    }


def test_access_fields_order_and_extra_record_keys():
    fields = access_fields(record(extra=1), target="/a?token=1", cache="HIT",
                           headers={"Accept": "x"}, redact=NAMES)
    assert list(fields) == [*FIELDS, "headers", "extra"]
    assert fields["time"] == "2023-11-14T22:13:20.250Z"
    assert fields["path"] == "/a?token=REDACTED"
    assert fields["cache"] == "HIT"


def test_trace_id_follows_error_when_the_request_has_one():
    traced = access_fields(record(trace_id="4bf92f3577b34da6a3ce929d0e0e4736", extra=1),
                           target="/a", cache=None, headers={"Accept": "x"}, redact=NAMES)
    assert list(traced) == [*FIELDS, "trace_id", "headers", "extra"]
    assert traced["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    untraced = access_fields(record(trace_id=None), target="/a", cache=None, headers=None,
                             redact=NAMES)
    assert list(untraced) == list(FIELDS)  # no tracing plugin: no key at all


def test_a_cache_field_from_the_core_wins():
    fields = access_fields(record(cache="BYPASS"), target="/a", cache="HIT", headers=None,
                           redact=NAMES)
    assert fields["cache"] == "BYPASS"
    assert "headers" not in fields


def test_json_renderer_is_one_compact_line():
    text = make_renderer("json")(access_fields(record(path="/a\nb"), target=None, cache=None,
                                               headers=None, redact=NAMES))
    assert "\n" not in text
    assert json.loads(text)["path"] == "/a\nb"
    assert text.startswith('{"time":"2023-11-14T22:13:20.250Z","request_id":"r1",')


def test_console_renderer():
    fields = access_fields(record(consumer="al\x1b[2Jice", error="boom\r\nfake line"),
                           target="/a?q=1", cache=None, headers=None, redact=NAMES)
    text = make_renderer("console")(fields)
    assert text.startswith("2023-11-14T22:13:20.250Z GET /a?q=1 200 request_id=r1 route=a ")
    assert "consumer=al\\x1b[2Jice" in text
    assert "error='boom\\r\\nfake line'" in text
    assert "cache=" not in text and "\n" not in text
