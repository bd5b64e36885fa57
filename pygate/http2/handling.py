"""What a stream's task runs: the request through ``Pipeline.handle``, or a refusal.

Either way the stream ends in :meth:`Http2Protocol.finished
<pygate.http2.connection.Http2Protocol.finished>`, which frees its place among the
connection's concurrent streams.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any, cast

import structlog
from aiohttp.web_protocol import RequestHandler
from h2.errors import ErrorCodes

from ..errors import PROBLEM_CONTENT_TYPE, problem_body
from ..sanitize import request_id

if TYPE_CHECKING:
    from aiohttp.http_parser import RawRequestMessage

    from .connection import Http2Protocol
    from .request import Refused
    from .stream import Stream

log = structlog.get_logger("pygate")


async def serve(link: Http2Protocol, stream: Stream, message: RawRequestMessage) -> None:
    """Handle the stream's request as the HTTP/1.1 server would (aiohttp's
    ``RequestHandler``: the handler, then the response finished, a 500 for a defect)."""
    try:
        if stream.reset:  # reset before it began (rapid reset): nothing to do
            return
        stream.started = True
        edge = link.edge
        task = cast("asyncio.Task[None]", asyncio.current_task())
        request = edge.server.request_factory(
            message, cast(Any, stream.body), cast(RequestHandler, stream), stream.writer, task)
        try:
            response = await edge.handler(request)
            if not stream.reset:  # a no-op when the pipeline has sent it all
                await response.prepare(request)
                await response.write_eof()
        except asyncio.CancelledError:
            if not stream.cut:  # the end of a drain
                raise
            task.uncancel()  # the protocol's: the client reset the stream, long ago
            access_line(link, stream, 499, "the client reset the stream")
        except ConnectionResetError:
            pass
        except Exception as exc:  # a defect of the gateway's
            log.error("error handling request", error=repr(exc), exc_info=exc)
            with contextlib.suppress(ConnectionResetError):
                if stream.writer.output_size or stream.response_done:
                    link.reset(stream, ErrorCodes.INTERNAL_ERROR)
                else:
                    await answer(link, stream, 500, "the gateway could not process this request",
                                 request_id(None))
    finally:
        link.finished(stream)


async def refuse(link: Http2Protocol, stream: Stream, refusal: Refused) -> None:
    """Answer a request head HTTP/1.1 would have refused (400, 431) without the pipeline."""
    try:
        rid = request_id(None)
        log.debug("HTTP/2 request refused", status=refusal.status, error=refusal.detail,
                  request_id=rid)
        with contextlib.suppress(ConnectionResetError):
            await answer(link, stream, refusal.status, refusal.detail, rid)
        access_line(link, stream, refusal.status, refusal.detail, rid)
    finally:
        link.finished(stream)


async def answer(link: Http2Protocol, stream: Stream, status: int, detail: str,
                 rid: str) -> None:
    """A problem document on ``stream``."""
    body = problem_body(status, detail, request_id=rid)
    head = [(":status", str(status)), ("content-type", PROBLEM_CONTENT_TYPE),
            ("content-length", str(len(body))), ("server", "pygate"), ("x-request-id", rid)]
    await link.send(stream, head, body, end=True)


def access_line(link: Http2Protocol, stream: Stream | Http2Protocol, status: int, detail: str,
                rid: str | None = None) -> None:
    """The ``log`` hooks' record of a request the pipeline did not answer, as HTTP/1.1's
    parser refusals get one (:meth:`pygate.pipeline.Pipeline.refused`)."""
    on_refused = link.edge.server.on_refused
    if on_refused is not None:
        on_refused(cast(RequestHandler, stream), status, detail, rid or request_id(None))


__all__ = ["access_line", "answer", "refuse", "serve"]
