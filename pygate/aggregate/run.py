"""Running an aggregate plan for one request.

Calls that need nothing start at once; each finished call starts the calls
waiting only for it, so a dependent call never waits for a whole stage. The
outcome is decided as soon as it is known: a required call that fails gives
502 (504 when it timed out) naming it, and the route's ``timeout`` bounds the
whole; then every call still in flight is cancelled (its connection closes, so
the upstream sees the request go away). A failed optional call is ``null`` and
listed in ``X-Pygate-Partial``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import structlog
from aiohttp import web
from multidict import CIMultiDict

from ..context import Context, UpstreamRequest
from ..errors import BadGateway, GatewayError, GatewayTimeout
from ..sanitize import forwarded_headers
from ..upstream.client import UpstreamResponse
from ..upstream.forward import send
from .placeholders import Missing, Scope
from .plan import AggregatePlan, CallPlan
from .shape import project, rename

log = structlog.get_logger("pygate")

Transform = Callable[[UpstreamRequest, Context], Awaitable[None]]
"""Runs the route chain's ``transform_request`` hooks on one call's request."""

JSON_HEADERS = {"Content-Type": "application/json"}


class CallFailed:
    """Why one call gave no result: 502 (failed) or 504 (timed out)."""

    __slots__ = ("detail", "status")

    def __init__(self, status: int, detail: str) -> None:
        self.status = status
        self.detail = detail

    def error(self, call: str) -> GatewayError:
        kind = GatewayTimeout if self.status == 504 else BadGateway
        return kind(self.detail, extra={"call": call})


class Composed:
    """The default body (call name -> shaped result) and the failed optional calls."""

    __slots__ = ("body", "partial")

    def __init__(self, body: dict[str, Any], partial: list[str]) -> None:
        self.body = body
        self.partial = partial

    def response(self, body: Any) -> web.Response:
        """``body`` as a JSON response, with ``X-Pygate-Partial`` when calls failed."""
        data = json_bytes(body)
        headers = dict(JSON_HEADERS)
        if self.partial:
            headers["X-Pygate-Partial"] = ",".join(self.partial)
        return web.Response(body=data, headers=headers)


def json_bytes(value: Any) -> bytes:
    """``value`` as compact UTF-8 JSON.

    Strings decoded from JSON may hold lone surrogates (``"\\udc80"`` is valid
    JSON): those cannot be UTF-8, so such a document is written with ``\\u``
    escapes instead.
    """
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    try:
        return text.encode()
    except UnicodeEncodeError:
        return json.dumps(value, separators=(",", ":")).encode()


def call_headers(request: web.BaseRequest, ctx: Context, forwarded_for: str,
                 trusted: bool) -> CIMultiDict[str]:
    """What every call carries before its own headers and the plugins' ones.

    X-Forwarded-For/-Proto/-Host (the trust rule the proxy applies), the
    request ID, and ``Accept: application/json``. Nothing else of the client's.
    """
    headers: CIMultiDict[str] = CIMultiDict()
    headers["Accept"] = "application/json"
    forwarded_headers(headers, request.headers, request.secure, forwarded_for, trusted)
    headers["X-Request-ID"] = ctx.request_id
    return headers


def fork(ctx: Context) -> Context:
    """A copy of ``ctx`` sharing ``state`` and ``identity``, for one concurrent call.

    Async ``transform_request`` hooks read ``ctx.config`` after awaiting; with
    calls running side by side each needs its own.
    """
    copy = Context.__new__(Context)
    for name in Context.__slots__:
        setattr(copy, name, getattr(ctx, name))
    return copy


async def execute(plan: AggregatePlan, request: web.BaseRequest, ctx: Context, *,
                  params: Mapping[str, str], query: str, headers: CIMultiDict[str],
                  transform: Transform | None, fork_ctx: bool, deadline: float,
                  max_body: int) -> Composed:
    """Make the plan's calls; return the composed body or raise the deciding error."""
    loop = asyncio.get_running_loop()
    scope = Scope(params, query, request.headers, ctx.identity)
    execution = _Execution(plan, ctx, scope, headers, transform, fork_ctx, deadline,
                           max_body, loop)
    try:
        return await execution.wait()
    finally:
        ctx.target = None  # calls went to several targets; none is "the" target


class _Execution:
    """The calls of one request, started as their needs are met."""

    __slots__ = ("ctx", "deadline", "decided", "failed", "finished", "fork_ctx", "headers",
                 "left", "loop", "max_body", "plan", "scope", "tasks", "transform", "waiting")

    def __init__(self, plan: AggregatePlan, ctx: Context, scope: Scope,
                 headers: CIMultiDict[str], transform: Transform | None, fork_ctx: bool,
                 deadline: float, max_body: int, loop: asyncio.AbstractEventLoop) -> None:
        self.plan = plan
        self.ctx = ctx
        self.scope = scope
        self.headers = headers
        self.transform = transform
        self.fork_ctx = fork_ctx
        self.deadline = deadline
        self.max_body = max_body
        self.loop = loop
        self.tasks: dict[str, asyncio.Task[Any]] = {}
        self.failed: dict[str, CallFailed] = {}
        self.waiting: dict[str, int] = {}
        self.left = len(plan.calls)
        self.finished: asyncio.Future[None] = loop.create_future()
        self.decided: BaseException | None = None

    async def wait(self) -> Composed:
        plan = self.plan
        for call in plan.calls:
            if call.needs:
                self.waiting[call.name] = len(call.needs)
        for call in plan.roots:
            self._start(call)
        try:
            if not self.finished.done():
                async with asyncio.timeout_at(self.deadline):
                    await self.finished
        except TimeoutError:
            self._timed_out()
        finally:
            for task in self.tasks.values():
                task.cancel()
            self.tasks.clear()
        if self.decided is not None:
            raise self.decided
        return self._compose()

    def _start(self, call: CallPlan) -> None:
        task = self.loop.create_task(self._call(call))
        self.tasks[call.name] = task
        task.add_done_callback(lambda done: self._done(call, done))

    def _done(self, call: CallPlan, task: asyncio.Task[Any]) -> None:
        if self.tasks.pop(call.name, None) is None or task.cancelled():
            return
        error = task.exception()
        if error is not None:  # a plugin refused or failed in transform_request
            self._decide(error)
            return
        self._settle(call, task.result())

    def _settle(self, call: CallPlan, outcome: Any) -> None:
        if self.finished.done():
            return
        if isinstance(outcome, CallFailed):
            log.warning("aggregate call failed", route=self.plan.route, call=call.name,
                        optional=call.optional, status=outcome.status, error=outcome.detail,
                        request_id=self.ctx.request_id)
            if not call.optional:
                self._decide(outcome.error(call.name))
                return
            self.failed[call.name] = outcome
        else:
            self.scope.results[call.name] = outcome
        self.left -= 1
        for dependent in call.dependents:
            count = self.waiting[dependent.name] - 1
            self.waiting[dependent.name] = count
            if count == 0:
                lost = [n for n in dependent.needs if n in self.failed]
                if lost:
                    self._settle(dependent, CallFailed(
                        502, f"call {dependent.name!r} was not made: it reads call "
                        f"{lost[0]!r}, which failed"))
                else:
                    self._start(dependent)
                if self.finished.done():
                    return
        if self.left == 0:
            self.finished.set_result(None)

    def _decide(self, error: BaseException) -> None:
        if not self.finished.done():
            self.decided = error
            self.finished.set_result(None)

    def _timed_out(self) -> None:
        """The route's timeout: required calls still open decide 504; optional ones are null."""
        done = self.scope.results.keys() | self.failed.keys()
        for call in self.plan.calls:
            if call.name in done:
                continue
            detail = (f"call {call.name!r} did not finish within the route's timeout "
                      f"({self.plan.timeout:g}s)")
            if not call.optional:
                self.decided = CallFailed(504, detail).error(call.name)
                log.warning("aggregate call failed", route=self.plan.route, call=call.name,
                            optional=False, status=504, error=detail,
                            request_id=self.ctx.request_id)
                return
            self.failed[call.name] = CallFailed(504, detail)

    def _compose(self) -> Composed:
        body: dict[str, Any] = {}
        results = self.scope.results
        for call in self.plan.calls:
            value = results.get(call.name)
            if value is not None:
                if call.fields is not None:
                    value = project(value, call.fields)
                if call.rename:
                    value = rename(value, call.rename)
            if call.merge:
                if isinstance(value, dict):
                    body.update(value)
            else:
                body[call.name] = value
        partial = [c.name for c in self.plan.calls if c.name in self.failed]
        return Composed(body, partial)

    async def _call(self, call: CallPlan) -> Any:
        try:
            upstream_request = render_call(call, self.scope, self.headers)
        except Missing as missing:
            return CallFailed(502, f"call {call.name!r} was not made: {missing}")
        return await make_call(call, upstream_request, self.ctx, transform=self.transform,
                               fork_ctx=self.fork_ctx, deadline=self.deadline,
                               max_body=self.max_body)


def render_call(call: CallPlan, scope: Scope, base_headers: CIMultiDict[str]
                ) -> UpstreamRequest:
    """The request of one call for this scope; raise :class:`Missing`."""
    path, query = call.render_target(scope)
    headers = base_headers.copy()
    for header_name, header_value in call.render_headers(scope):
        headers[header_name] = header_value
    body = call.body.render(scope) if call.body is not None else None
    return UpstreamRequest(method=call.method, path=path, query=query, headers=headers,
                           upstream=call.upstream.name, body=body)


async def make_call(call: CallPlan, upstream_request: UpstreamRequest, request_ctx: Context,
                    *, transform: Transform | None, fork_ctx: bool, deadline: float,
                    max_body: int, label: str | None = None) -> Any:
    """One rendered call: transform, send, read; a JSON value or :class:`CallFailed`.

    ``label`` names the call in errors (the call's name by default; a GraphQL
    resolver's ``Type.field``).
    """
    name = label or call.name
    loop = asyncio.get_running_loop()
    ctx = fork(request_ctx) if fork_ctx else request_ctx
    if transform is not None:
        await transform(upstream_request, ctx)
    if call.timeout is not None:
        deadline = min(deadline, loop.time() + call.timeout)
    try:
        response = await send(call.upstream, ctx, upstream_request, deadline=deadline,
                              data=upstream_request.body)
    except GatewayError as error:
        verb = "timed out" if error.status == 504 else "failed"
        return CallFailed(504 if error.status == 504 else 502,
                          f"call {name!r} {verb}: {error.detail}")
    upstream = call.upstream.label
    try:
        if call.timeout is None:  # the route's deadline is kept by wait(), which cancels
            raw = await _read(response, max_body)
        else:
            async with asyncio.timeout_at(deadline):
                raw = await _read(response, max_body)
    except TimeoutError:
        response.close()
        return CallFailed(504, f"call {name!r} timed out: {upstream} did not send its "
                          "body in time")
    except Exception as exc:  # reset, malformed body, too large
        response.close()
        reason = ("answered more than the gateway's max_body" if isinstance(exc, _TooLarge)
                  else "failed in the middle of its body")
        return CallFailed(502, f"call {name!r} failed: {upstream} {reason}")
    except BaseException:  # cancelled: the outcome is decided without this call
        response.close()
        raise
    status = response.status
    if not 200 <= status < 300:
        return CallFailed(502, f"call {name!r} failed: {upstream} answered {status}")
    if not raw.strip() and status == 204:
        value: Any = None
    else:
        try:
            value = json.loads(raw)
        except ValueError:
            return CallFailed(502, f"call {name!r} failed: {upstream} did not answer JSON")
    if call.merge and not isinstance(value, dict):
        return CallFailed(502, f"call {name!r} failed: merge needs a JSON object, "
                          f"{upstream} answered {json_kind(value)}")
    return value


def json_kind(value: Any) -> str:
    """What kind of JSON value ``value`` is, for error messages: ``"an object"``..."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    return "a boolean" if isinstance(value, bool) else "a number"


class _TooLarge(Exception):
    pass


async def _read(response: UpstreamResponse, limit: int) -> bytes:
    """The whole body, refusing more than ``limit`` bytes."""
    length = response.content_length
    if length is not None:
        if length > limit:
            raise _TooLarge
        return await response.read()
    chunks = []
    size = 0
    async for chunk in response:
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
    response.release()
    return b"".join(chunks)
