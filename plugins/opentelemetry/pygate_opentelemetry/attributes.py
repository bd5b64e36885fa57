"""Span names and attributes, as the OpenTelemetry HTTP semantic conventions name them.

Pure: plain values in, plain values out (no aiohttp, no SDK). A server span is
``METHOD ROUTE-NAME`` (``GET users``; ``GET`` when no route matched), a client span
``METHOD UPSTREAM-NAME`` (PRODUCT.md section 7). Methods outside the registered set
are named ``HTTP`` and recorded as ``_OTHER`` with the original beside it, so that a
client cannot make the span names (or the method attribute) unbounded. Query
strings are left out of spans: they may carry credentials.
"""

from __future__ import annotations

from typing import Any

from opentelemetry.semconv.attributes.client_attributes import CLIENT_ADDRESS
from opentelemetry.semconv.attributes.error_attributes import ERROR_TYPE
from opentelemetry.semconv.attributes.http_attributes import (
    HTTP_REQUEST_METHOD,
    HTTP_REQUEST_METHOD_ORIGINAL,
    HTTP_RESPONSE_STATUS_CODE,
    HTTP_ROUTE,
)
from opentelemetry.semconv.attributes.network_attributes import NETWORK_PROTOCOL_VERSION
from opentelemetry.semconv.attributes.server_attributes import SERVER_ADDRESS, SERVER_PORT
from opentelemetry.semconv.attributes.url_attributes import URL_FULL, URL_PATH, URL_SCHEME
from opentelemetry.semconv.attributes.user_agent_attributes import USER_AGENT_ORIGINAL

KNOWN_METHODS = frozenset({"CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST",
                           "PUT", "QUERY", "TRACE"})
"""The methods the conventions name as they are; any other is ``_OTHER``."""

OTHER = "_OTHER"

CUT_OFF = "_OTHER"
"""``error.type`` of a call cut off before its outcome was known (an aggregate call
cancelled by the route's timeout or by a failed required call)."""

Attributes = dict[str, Any]


def method(name: str, attributes: Attributes) -> str:
    """Record the request method in ``attributes``; the method as a span name shows it."""
    if name in KNOWN_METHODS:
        attributes[HTTP_REQUEST_METHOD] = name
        return name
    attributes[HTTP_REQUEST_METHOD] = OTHER
    attributes[HTTP_REQUEST_METHOD_ORIGINAL] = name
    return "HTTP"


def server_span(method_name: str, route: str | None, attributes: Attributes, *, path: str,
                scheme: str, host: str | None, client_ip: str, user_agent: str | None,
                version: tuple[int, int]) -> str:
    """The server span's name; its request attributes go into ``attributes``."""
    shown = method(method_name, attributes)
    attributes[URL_PATH] = path
    attributes[URL_SCHEME] = scheme
    address, port = host_and_port(host, scheme)
    if address is not None:
        attributes[SERVER_ADDRESS] = address
        attributes[SERVER_PORT] = port
    if client_ip:
        attributes[CLIENT_ADDRESS] = client_ip
    if user_agent is not None:
        attributes[USER_AGENT_ORIGINAL] = user_agent
    attributes[NETWORK_PROTOCOL_VERSION] = protocol_version(version)
    if route is None:
        return shown
    attributes[HTTP_ROUTE] = route
    return f"{shown} {route}"


def server_outcome(status: int, attributes: Attributes) -> bool:
    """The response's attributes; whether the span is an error (5xx: a server span's
    4xx is the client's doing, not the server's error)."""
    if status:
        attributes[HTTP_RESPONSE_STATUS_CODE] = status
    if status >= 500:
        attributes[ERROR_TYPE] = str(status)
        return True
    return False


def client_outcome(method_name: str, attributes: Attributes, *, path: str, sent_to: str | None,
                   status: int, error: str | None, made: bool) -> bool:
    """A call's attributes (its target, its answer) into ``attributes``; whether the span
    is an error (any 4xx or 5xx answer, a failure, a call cut off).

    :param sent_to: the target of the last attempt (``http://127.0.0.1:3001``), if any.
    :param error: the name of the error type the call failed with, if it failed.
    :param made: whether the call was made (the core recorded its start): one made
        without a status or an error was cut off (cancelled) before its outcome.
    """
    method(method_name, attributes)
    if sent_to is not None:
        scheme, _, rest = sent_to.partition("://")
        authority = rest.partition("/")[0]
        address, port = host_and_port(authority, scheme)
        if address is not None:
            attributes[SERVER_ADDRESS] = address
            attributes[SERVER_PORT] = port
        attributes[URL_FULL] = sent_to.rstrip("/") + path
    if status:
        attributes[HTTP_RESPONSE_STATUS_CODE] = status
        if status >= 400:
            attributes[ERROR_TYPE] = str(status)
            return True
        return False
    if error is not None:
        attributes[ERROR_TYPE] = error
        return True
    if made:
        attributes[ERROR_TYPE] = CUT_OFF
        return True
    return False


def host_and_port(host: str | None, scheme: str) -> tuple[str | None, int]:
    """``Host`` (or a target's authority) as ``(address, port)``; the scheme's port when
    it names none; ``(None, 0)`` for a value that is not a host (a client's to send)."""
    default = 443 if scheme in ("https", "wss") else 80
    if not host or len(host) > 255 or not host.isascii():
        return None, 0
    if host.startswith("["):  # an IPv6 literal
        end = host.find("]")
        if end < 2:
            return None, 0
        address, rest = host[1:end], host[end + 1:]
        if not rest:
            return address, default
        if not rest.startswith(":"):
            return None, 0
        port_text = rest[1:]
    else:
        address, colon, port_text = host.rpartition(":")
        if not colon:
            return host, default
        if not address or ":" in address:
            return None, 0
    if not port_text.isdigit() or len(port_text) > 5 or int(port_text) > 65535:
        return None, 0
    return address, int(port_text)


def protocol_version(version: tuple[int, int]) -> str:
    """``(1, 1)`` -> ``"1.1"``; ``(2, 0)`` -> ``"2"``, as the conventions write them."""
    major, minor = version
    return str(major) if major >= 2 and minor == 0 else f"{major}.{minor}"
