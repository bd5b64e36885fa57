"""Error types and RFC 9457 problem documents.

This is the only module that builds responses for errors. The core and plugins
raise :class:`GatewayError` (or one of its subclasses); the pipeline turns it into
an ``application/problem+json`` response carrying the request ID and, where one
matched, the route name. No internal address or traceback ever reaches a body.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from aiohttp import web

PROBLEM_CONTENT_TYPE = "application/problem+json"


class GatewayError(Exception):
    """A refusal or failure that becomes a problem document with ``status``.

    :param status: the HTTP status code.
    :param detail: a human-readable explanation for the client (no secrets, no addresses).
    :param headers: extra response headers (``WWW-Authenticate``, ``Retry-After``...).
    :param extra: extra members of the problem document (``errors``...).
    :param close: close the connection after the answer (nothing more of it can be
        read safely: a body whose framing is in doubt, a stream the parser switched
        to another protocol).
    """

    status: int = 500
    close: bool = False

    def __init__(
        self,
        detail: str = "",
        *,
        status: int | None = None,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
        close: bool | None = None,
    ) -> None:
        if status is not None:
            self.status = status
        if close is not None:
            self.close = close
        super().__init__(detail or HTTPStatus(self.status).phrase)
        self.detail = detail or HTTPStatus(self.status).description
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})


class BadRequest(GatewayError):
    status = 400


class BadFraming(BadRequest):
    """A request whose body framing is in doubt (a smuggling shape): 400, and nothing
    more is read from its connection."""

    close = True


class Unauthorized(GatewayError):
    status = 401


class Forbidden(GatewayError):
    status = 403


class NotFound(GatewayError):
    status = 404


class MethodNotAllowed(GatewayError):
    status = 405


class PayloadTooLarge(GatewayError):
    status = 413


class TooManyRequests(GatewayError):
    status = 429


class BadGateway(GatewayError):
    status = 502


class ServiceUnavailable(GatewayError):
    """503: no healthy target, breaker open, or a plugin's backend is down."""

    status = 503


class GatewayTimeout(GatewayError):
    status = 504


def problem_body(
    status: int,
    detail: str,
    *,
    request_id: str | None = None,
    route: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> bytes:
    """The JSON bytes of a problem document."""
    try:
        title = HTTPStatus(status).phrase
    except ValueError:
        title = "Error"
    doc: dict[str, Any] = {
        "type": "about:blank", "title": title, "status": status, "detail": detail,
    }
    if request_id is not None:
        doc["request_id"] = request_id
    if route is not None:
        doc["route"] = route
    if extra:
        for key, value in extra.items():
            doc.setdefault(key, value)
    return json.dumps(doc, separators=(",", ":")).encode()


def problem_response(
    status: int,
    detail: str,
    *,
    request_id: str | None = None,
    route: str | None = None,
    headers: Mapping[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> web.Response:
    """A ready ``web.Response`` holding a problem document."""
    response = web.Response(
        status=status,
        body=problem_body(status, detail, request_id=request_id, route=route, extra=extra),
        content_type=PROBLEM_CONTENT_TYPE,
    )
    response.headers["Server"] = "pygate"
    if headers:
        response.headers.update(headers)
    if request_id is not None:
        response.headers["X-Request-ID"] = request_id
    return response


def from_error(
    error: GatewayError, *, request_id: str | None = None, route: str | None = None
) -> web.Response:
    """The problem response for a raised :class:`GatewayError`."""
    return problem_response(
        error.status,
        error.detail,
        request_id=request_id,
        route=route,
        headers=error.headers,
        extra=error.extra,
    )


def problem_message(status: int, detail: str, *, request_id: str) -> bytes:
    """A whole HTTP/1.1 response (head and body) holding a problem document, for the
    protocol to write itself when no request object exists (a request head that came
    too late). The connection closes after it."""
    body = problem_body(status, detail, request_id=request_id)
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Error"
    head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: {PROBLEM_CONTENT_TYPE}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\nServer: pygate\r\n"
            f"X-Request-ID: {request_id}\r\n\r\n")
    return head.encode("latin-1") + body
