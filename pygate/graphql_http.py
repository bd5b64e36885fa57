"""GraphQL over HTTP: what a request carries, and the media type and status of the answer.

The GraphQL-over-HTTP specification (graphql.github.io/graphql-over-http), as
its official audit (the ``graphql-http`` package's ``auditServer``) checks it:

- **Requests.** ``POST`` with ``Content-Type: application/json`` (UTF-8; another
  charset is 415) and a JSON object ``{"query", "operationName", "variables",
  "extensions"}`` (``null`` is the same as absent, other members are ignored), or
  with ``application/graphql`` and the document as the body; ``GET`` with the
  same parameters in the query string (``variables`` and ``extensions`` as JSON;
  an empty value is the same as absent). Anything else is not a well-formed
  request: 405 (another method), 415 (another content type), 413 (over
  ``gateway.max_body``), 400 (a body that is not JSON, a parameter of the wrong
  type, no ``query``), each a problem document that also carries GraphQL's
  ``errors`` list (:class:`BadGraphQLRequest`).
- **Media types** (:func:`negotiate`). The ``Accept`` header is read with its
  q-values: the client gets ``application/graphql-response+json`` or
  ``application/json``, whichever it prefers (the more specific range first, then
  the order written, ``*/*`` alone meaning ``application/json``); no ``Accept``
  means ``application/json``; an ``Accept`` naming neither is 406.
- **Status codes** (:func:`request_errors`). A request that fails before
  execution (a document that does not parse or validate, a bound, an unknown
  operation, variables that do not fit, a persisted query not found) answers
  ``{"errors": [...]}`` without ``data``: 400 under
  ``application/graphql-response+json``, 200 under ``application/json`` (the
  specification's table for each). An executed operation answers 200 with
  ``data`` (and ``errors`` for the fields that failed) under either.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final

from aiohttp import web

from .body import read_body
from .context import Context
from .errors import GatewayError, MethodNotAllowed

JSON: Final = "application/json"
GRAPHQL_RESPONSE: Final = "application/graphql-response+json"
"""The two response media types, as negotiated."""

CONTENT_TYPES: Final = {JSON: "application/json; charset=utf-8",
                        GRAPHQL_RESPONSE: "application/graphql-response+json; charset=utf-8"}
_SUPPORTED: Final = (GRAPHQL_RESPONSE, JSON)
_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_UTF8: Final = frozenset({"utf-8", "utf8"})


class BadGraphQLRequest(GatewayError):
    """A request that is not a well-formed GraphQL-over-HTTP request (400 by default).

    A problem document that also carries GraphQL's ``errors`` list, so GraphQL
    clients read it as they read any refused request.
    """

    status = 400

    def __init__(self, detail: str, *, status: int | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(detail, status=status, headers=headers,
                         extra={"errors": [{"message": detail}]})


# ---------------------------------------------------------------------------
# Accept


def negotiate(accept: str | None) -> str:
    """The response media type for an ``Accept`` header; raise 406 when it takes neither.

    For each supported type the most specific matching range decides its
    weight (``application/json;q=0.5, */*`` gives ``application/json`` 0.5); the
    heaviest wins, then the more specific match, then the one written first, and
    ``application/json`` when the only match is the same wildcard for both.
    """
    if not accept:
        return JSON
    if accept == GRAPHQL_RESPONSE or accept.startswith(GRAPHQL_RESPONSE + ","):
        return GRAPHQL_RESPONSE  # the common case, without parsing
    if accept in (JSON, "*/*"):
        return JSON
    best: dict[str, tuple[int, float, int]] = {}  # type -> (specificity, q, position)
    for position, item in enumerate(accept.split(",")):
        media, _, params = item.strip().partition(";")
        media = media.strip().lower()
        q = 1.0
        charset_ok = True
        for param in params.split(";"):
            name, _, value = param.partition("=")
            name = name.strip().lower()
            value = value.strip().strip('"').lower()
            if name == "q":
                try:
                    q = min(max(float(value), 0.0), 1.0)
                except ValueError:
                    q = 1.0  # not a weight: as if none were given
            elif name == "charset" and value not in _UTF8:
                charset_ok = False
        if not charset_ok:
            continue
        for supported in _SUPPORTED:
            specificity = _matches(media, supported)
            if specificity < 0:
                continue
            found = best.get(supported)
            if found is None or specificity > found[0]:
                best[supported] = (specificity, q, position)
    ranked = sorted(((q, specificity, -position, media == JSON, media)
                     for media, (specificity, q, position) in best.items() if q > 0),
                    reverse=True)
    if not ranked:
        raise GatewayError(
            f"this endpoint answers {GRAPHQL_RESPONSE} or {JSON}; the request's Accept "
            "takes neither", status=406,
            extra={"errors": [{"message": f"Accept takes neither {GRAPHQL_RESPONSE} nor "
                                          f"{JSON}"}]})
    return ranked[0][4]


def _matches(range_: str, media: str) -> int:
    """How specifically ``range_`` names ``media``: 2 exactly, 1 ``type/*``, 0 ``*/*``, -1 not."""
    if range_ == media:
        return 2
    if range_ == "*/*":
        return 0
    if range_.endswith("/*") and media.startswith(range_[:-1]):
        return 1
    return -1


# ---------------------------------------------------------------------------
# Parameters


class Params:
    """A well-formed GraphQL-over-HTTP request's parameters (``query`` may be None with
    a persisted query's hash in ``extensions``)."""

    __slots__ = ("extensions", "operation_name", "query", "variables")

    def __init__(self, query: str | None, operation_name: str | None,
                 variables: dict[str, Any] | None, extensions: dict[str, Any] | None) -> None:
        self.query = query
        self.operation_name = operation_name
        self.variables = variables
        self.extensions = extensions


async def read_params(request: web.BaseRequest, ctx: Context) -> Params:
    """The parameters of a GET's query string or a POST's body; raise :class:`GatewayError`.

    A POST's body is read with :func:`pygate.body.read_body` (within ``max_body``, ``100
    Continue`` first when the client waits for it), or taken from ``ctx.body`` when a
    plugin read it already.
    """
    method = request.method
    if method == "POST":
        return await _post(request, ctx)
    if method == "GET":
        get = request.query
        return _checked(get.get("query"), get.get("operationName") or None,
                        _json_param(get.get("variables"), "variables"),
                        _json_param(get.get("extensions"), "extensions"))
    raise MethodNotAllowed("GraphQL takes GET or POST", headers={"Allow": "GET, POST"},
                           extra={"errors": [{"message": "GraphQL takes GET or POST"}]})


async def _post(request: web.BaseRequest, ctx: Context) -> Params:
    kind = request.headers.get("Content-Type", "")
    media, _, params = kind.partition(";")
    media = media.strip().lower()
    if media not in (JSON, "application/graphql") or not _utf8(params):
        raise BadGraphQLRequest(
            f"expected Content-Type {JSON} (UTF-8) or application/graphql, found "
            f"{kind.strip()[:100] or 'none'}", status=415)
    body = await read_body(request, ctx)
    if media != JSON:
        text = _text(body)
        return _checked(text, None, None, None)
    if not body.strip():
        raise BadGraphQLRequest("the body is empty: expected a JSON object with a query")
    try:
        data = json.loads(body)
    except ValueError:  # UnicodeDecodeError too
        raise BadGraphQLRequest("the body is not JSON") from None
    except RecursionError:
        raise BadGraphQLRequest("the body's JSON is nested too deeply") from None
    if not isinstance(data, dict):
        raise BadGraphQLRequest("expected a JSON object with query, operationName, "
                                "variables and extensions")
    return _checked(data.get("query"), data.get("operationName"), data.get("variables"),
                    data.get("extensions"))


def _utf8(params: str) -> bool:
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in _UTF8:
            return False
    return True


def _text(body: bytes) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadGraphQLRequest("the body is not UTF-8") from None


def _json_param(text: str | None, name: str) -> Any:
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        raise BadGraphQLRequest(f"{name} is not JSON") from None
    except RecursionError:
        raise BadGraphQLRequest(f"{name} is JSON nested too deeply") from None


def _checked(query: Any, operation: Any, variables: Any, extensions: Any) -> Params:
    if query is not None and not isinstance(query, str):
        raise BadGraphQLRequest("query must be a string holding a GraphQL document")
    if operation is not None and not isinstance(operation, str):
        raise BadGraphQLRequest("operationName must be a string")
    if variables is not None and not isinstance(variables, dict):
        raise BadGraphQLRequest("variables must be a JSON object")
    if extensions is not None and not isinstance(extensions, dict):
        raise BadGraphQLRequest("extensions must be a JSON object")
    if query is None and (extensions is None or "persistedQuery" not in extensions):
        raise BadGraphQLRequest("no query: expected a GraphQL document in query")
    return Params(query, operation or None, variables, extensions)


# ---------------------------------------------------------------------------
# Answers


def json_bytes(value: Any) -> bytes:
    """``value`` as compact UTF-8 JSON (``\\u`` escapes for the lone surrogates a JSON
    string may decode to, which UTF-8 cannot hold)."""
    text = _encode(value)
    try:
        return text.encode()
    except UnicodeEncodeError:
        return json.dumps(value, separators=(",", ":")).encode()


def respond(body: bytes, media: str, status: int = 200,
            headers: Mapping[str, str] | None = None) -> web.Response:
    """A GraphQL response (``body`` is its JSON) in the negotiated media type."""
    response = web.Response(status=status, body=body)
    out = response.headers
    out["Content-Type"] = CONTENT_TYPES[media]
    out["Vary"] = "Accept"
    if headers:
        out.update(headers)
    return response


def request_errors(errors: list[dict[str, Any]], media: str,
                   headers: Mapping[str, str] | None = None) -> web.Response:
    """``{"errors": [...]}`` for a request that was not executed: 400 under
    ``application/graphql-response+json``, 200 under ``application/json``."""
    return respond(json_bytes({"errors": errors}), media,
                   400 if media == GRAPHQL_RESPONSE else 200, headers)
