"""W3C Trace Context: the ``traceparent`` and ``tracestate`` a request came with, read;
the ones its upstream calls carry, written.

Pure: no aiohttp, no I/O, and nothing logged. Whatever a client sends in these
headers is its own business: a header that does not parse is ignored (a new trace
starts, or the trace goes on without the tracestate), never a warning per request
and never an error. The grammar is the W3C Trace Context recommendation's
(https://www.w3.org/TR/trace-context/, sections 3.2 and 3.3).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from opentelemetry.trace import SpanContext, TraceFlags, TraceState

MAX_TRACEPARENT = 512
"""The longest traceparent read (a later version may append fields; none is this long)."""

MAX_TRACESTATE = 8192
"""The longest tracestate read, its header lines together; a longer one is dropped."""

MAX_MEMBERS = 32
"""The most list-members a tracestate may have (W3C: 32)."""

KNOWN_FLAGS = 0x03
"""The trace-flags bits this version knows (sampled, random trace ID); others are zeroed."""

_TRACEPARENT = re.compile(
    r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?", re.DOTALL)

# key = simple-key / multi-tenant-key; value = 0*255(chr) nblk-chr (W3C section 3.3.1)
_KEY = (r"[a-z][_0-9a-z\-*/]{0,255}"
        r"|[a-z0-9][_0-9a-z\-*/]{0,240}@[a-z][_0-9a-z\-*/]{0,13}")
_VALUE = r"[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]"
_MEMBER = re.compile(f"({_KEY})=({_VALUE})")


def remote_parent(traceparents: Sequence[str] | None,
                  tracestates: Sequence[str] | None) -> SpanContext | None:
    """The caller's span, from the request's header lines, or ``None`` when it has no
    valid ``traceparent`` (none, several, or one that does not parse).

    A version-00 traceparent is exactly ``00-TRACEID-PARENTID-FLAGS``; a later version
    may append ``-...`` fields, which are ignored; version ``ff``, an all-zero trace ID or
    parent ID, upper-case hex are invalid. The tracestate goes with a valid traceparent
    only, and only when it parses whole (:func:`trace_state`).
    """
    if traceparents is None or len(traceparents) != 1:
        return None
    value = traceparents[0]
    if len(value) > MAX_TRACEPARENT:
        return None
    match = _TRACEPARENT.fullmatch(value)
    if match is None:
        return None
    version, trace_hex, span_hex, flags_hex, rest = match.groups()
    if version == "ff" or (version == "00" and rest is not None):
        return None
    trace_id = int(trace_hex, 16)
    span_id = int(span_hex, 16)
    if not trace_id or not span_id:
        return None
    return SpanContext(trace_id, span_id, is_remote=True,
                       trace_flags=TraceFlags(int(flags_hex, 16) & KNOWN_FLAGS),
                       trace_state=trace_state(tracestates))


def trace_state(values: Sequence[str] | None) -> TraceState | None:
    """The tracestate of the request's header lines (several lines are one list), or
    ``None`` when there is none, or when any member is malformed, a key repeats, there
    are more than :data:`MAX_MEMBERS` members or more than :data:`MAX_TRACESTATE`
    characters (W3C: a tracestate that does not parse is discarded whole)."""
    if not values:
        return None
    if sum(len(value) for value in values) > MAX_TRACESTATE:
        return None
    pairs: dict[str, str] = {}
    for value in values:
        for member in value.split(","):
            member = member.strip(" \t")
            if not member:  # empty list-members are allowed
                continue
            match = _MEMBER.fullmatch(member)
            if match is None:
                return None
            key, item = match.groups()
            if key in pairs or len(pairs) == MAX_MEMBERS:
                return None
            pairs[key] = item
    return TraceState(list(pairs.items())) if pairs else None


def traceparent(span: SpanContext) -> str:
    """The ``traceparent`` naming ``span`` as the parent of whatever receives it."""
    return f"00-{span.trace_id:032x}-{span.span_id:016x}-{int(span.trace_flags):02x}"


def tracestate(span: SpanContext) -> str | None:
    """The ``tracestate`` to send with ``span``'s traceparent, or ``None`` for none."""
    state = span.trace_state
    return state.to_header() if state else None
