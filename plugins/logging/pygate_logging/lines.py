"""One access line: the record's fields in a fixed order, redacted, rendered by structlog.

Pure: no aiohttp request, no pluggy, no I/O. The hook functions in ``__init__``
gather the inputs (the core's access record, the raw query string, the
response's ``X-Cache`` header, the request headers to copy) and hand the text
this module renders to the sink.
"""

from __future__ import annotations

import functools
import json
import random
import re
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import unquote_plus

import structlog
from multidict import MultiMapping

REDACTED = "REDACTED"

FIELDS = (
    "time",
    "request_id",
    "method",
    "path",
    "route",
    "upstream",
    "target",
    "status",
    "duration_ms",
    "bytes_in",
    "bytes_out",
    "client_ip",
    "consumer",
    "cache",
    "error",
)
"""Every line's keys, in this order (``trace_id`` follows when the request has one,
``headers`` when configured; keys the core adds to its record later follow after these)."""

ALWAYS_REDACTED = frozenset({"authorization", "proxy-authorization", "cookie"})
"""Request headers whose value is never written, even when listed in ``headers``."""

Renderer = Callable[[dict[str, Any]], str]


# ---------------------------------------------------------------------------
# Time, sampling, redaction
# ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def _second(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


def iso_utc(timestamp: float) -> str:
    """``1700000000.25`` -> ``"2023-11-14T22:13:20.250Z"`` (ISO 8601, UTC, milliseconds)."""
    seconds = int(timestamp)
    millis = int((timestamp - seconds) * 1000)
    return f"{_second(seconds)}.{millis:03d}Z"


def should_log(status: int, error: str | None, sample: float,
               draw: Callable[[], float] = random.random) -> bool:
    """Errors (status >= 400, or an error noted on a request) always; the rest by ``sample``."""
    if status >= 400 or error is not None or sample >= 1.0:
        return True
    return draw() < sample


def redact_query(query: str, names: frozenset[str]) -> str:
    """Replace the values of the parameters in ``names`` (lower-cased) by ``REDACTED``.

    Names are compared percent-decoded and case-insensitively (``?Token=`` and
    ``?%74oken=`` are redacted as ``token``); everything else is kept as sent.
    """
    if not query or not names:
        return query
    parts = query.split("&")
    changed = False
    for i, part in enumerate(parts):
        raw_name = part.partition("=")[0]
        name = unquote_plus(raw_name) if "%" in raw_name or "+" in raw_name else raw_name
        if name.lower() in names:
            parts[i] = f"{raw_name}={REDACTED}"
            changed = True
    return "&".join(parts) if changed else query


def full_path(path: str, target: str | None, names: frozenset[str]) -> str:
    """The logged path: the core's path plus the request's query, redacted.

    ``path`` is the record's: normalized and percent-decoded (a decoded ``?`` is
    shown as ``%3F``), or, when the core refused the request before normalizing
    it (a 400), the raw request target itself. ``target`` is the raw request
    target (path and query as sent), or ``None`` when unknown.
    """
    if target is None or path == target:
        path, _, query = path.partition("?")
    else:
        query = target.partition("?")[2]
        if "?" in path:
            path = path.replace("?", "%3F")
    if not query:
        return path
    return f"{path}?{redact_query(query, names)}"


def pick_headers(headers: MultiMapping[str], names: Iterable[str]) -> dict[str, str]:
    """The listed request headers present (repeated ones joined by ``", "``), credentials
    replaced by ``REDACTED``."""
    picked: dict[str, str] = {}
    for name in names:
        values = headers.getall(name, None)
        if values is None:
            continue
        picked[name] = REDACTED if name.lower() in ALWAYS_REDACTED else ", ".join(values)
    return picked


def access_fields(record: Mapping[str, Any], *, target: str | None, cache: str | None,
                  headers: dict[str, str] | None, redact: frozenset[str]) -> dict[str, Any]:
    """The fields of one line, in :data:`FIELDS` order, from the core's access record."""
    get = record.get
    stamp = get("time")
    recorded_cache = get("cache")
    fields = {
        "time": iso_utc(stamp) if stamp is not None else None,
        "request_id": get("request_id"),
        "method": get("method"),
        "path": full_path(get("path") or "", target, redact),
        "route": get("route"),
        "upstream": get("upstream"),
        "target": get("target"),
        "status": get("status"),
        "duration_ms": get("duration_ms"),
        "bytes_in": get("bytes_in"),
        "bytes_out": get("bytes_out"),
        "client_ip": get("client_ip"),
        "consumer": get("consumer"),
        "cache": cache if recorded_cache is None else recorded_cache,
        "error": get("error"),
    }
    trace_id = get("trace_id")
    if trace_id is not None:  # a tracing plugin (opentelemetry) is on for the request
        fields["trace_id"] = trace_id
    if headers is not None:
        fields["headers"] = headers
    for key in record:
        # the query is in "path", redacted; a trace_id of None is left out
        if key not in fields and key not in ("query", "trace_id"):
            fields[key] = record[key]
    return fields


# ---------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# ConsoleRenderer itself quotes (repr) values holding a tab, CR or LF, but not these:
_CONTROL_UNQUOTED = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _escape(pattern: re.Pattern[str], value: Any) -> Any:
    """Control characters escaped (``\\x0a``), so that a decoded ``%0A`` in a path cannot
    start a fake line, nor an ESC sequence repaint a terminal."""
    if isinstance(value, str) and pattern.search(value):
        return pattern.sub(lambda m: f"\\x{ord(m.group()):02x}", value)
    return value


def make_renderer(fmt: str) -> Renderer:
    """``"json"``: one compact JSON object (structlog's JSONRenderer). ``"console"``:
    ``TIME METHOD PATH STATUS key=value ...`` (structlog's ConsoleRenderer, no colours),
    leaving out empty fields."""
    if fmt == "json":
        # One encoder, made once: json.dumps with any option builds a new one per call.
        encoder = json.JSONEncoder(separators=(",", ":"), default=repr)
        json_renderer = structlog.processors.JSONRenderer(
            serializer=lambda obj, **_: encoder.encode(obj))

        def render_json(fields: dict[str, Any]) -> str:
            return str(json_renderer(None, "info", fields))

        return render_json

    console = structlog.dev.ConsoleRenderer(colors=False, sort_keys=False, pad_event_to=0)

    def render_console(fields: dict[str, Any]) -> str:
        head = _escape(_CONTROL, f"{fields['method']} {fields['path']} {fields['status']}")
        event: dict[str, Any] = {"timestamp": fields["time"], "event": head}
        for key, value in fields.items():
            if key in ("time", "method", "path", "status") or value is None:
                continue
            event[key] = _escape(_CONTROL_UNQUOTED, value)  # dicts (headers): shown as repr
        return str(console(None, "info", event))

    return render_console
