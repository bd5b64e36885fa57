"""The upstream calls behind GraphQL fields: resolvers, batches, and one request's calls.

A :class:`Resolver` is compiled at load from ``[routes.graphql.resolvers."Type.field"]``:
an aggregate :class:`~pygate.aggregate.CallPlan` (its path, query, headers and body
templates, whose placeholders also read ``{parent.FIELD}`` and ``{args.NAME}``)
and, with ``batch = { key = "...", max = N }``, a :class:`Batch`: the one query
parameter that carries the parent's value, and how items are matched back.

Per request, :class:`Calls` makes them:

- a field's call is rendered and started at once, as a task; identical ``GET``
  and ``HEAD`` calls (same upstream, method, path, query, headers and body) are
  made once and shared; at most ``max_calls`` distinct calls are made, later
  ones fail with an error naming the bound;
- a batched field's parents are collected (:class:`Batcher`): each parent's
  value once, sent when the event loop has run every callback that was ready (the
  completions of one response's values, the parents of one batch's answer), so the
  parents completed together go in one call per ``max`` values, the query parameter
  holding them
  comma-separated; the answer (a JSON array) is split by each item's ``key``
  field: a list field gets every item matching its parent's value, another field
  the first one or null. A failed batch call is each of its parents' error.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any
from urllib.parse import quote

from graphql import GraphQLError, GraphQLList, GraphQLNonNull
from multidict import CIMultiDict

from .aggregate.placeholders import (
    BodyTemplate,
    Missing,
    Placeholder,
    Scope,
    Template,
    encode_query,
    encode_segment,
)
from .aggregate.plan import CallPlan
from .aggregate.run import CallFailed, Transform, json_kind, make_call
from .config import ConfigIssue
from .config.models import BatchConfig
from .context import Context, UpstreamRequest
from .errors import GatewayError
from .graphql_exec import Failed

SAFE_METHODS = frozenset({"GET", "HEAD"})
"""Calls made once per request however many fields ask for them."""


@dataclass(frozen=True, slots=True)
class Batch:
    """How a batched field's call carries its parents' values and gives each its items."""

    key: tuple[str, ...]  # the items' field compared with each parent's value ("a.b": nested)
    max: int  # values in one call
    index: int  # the batched parameter's place among the call's query parameters
    param: str  # its name, percent-encoded
    value: Placeholder  # {parent.FIELD}: a parent's value
    many: bool  # a list field: each parent gets every matching item
    same: bool  # the rest of the call reads no argument: one shape per request

    def describe(self) -> str:
        return (f"batched: {self.param}={{{self.value.text}}} of up to {self.max} parents "
                f"comma-separated in one call, items matched by {'.'.join(self.key)}")


@dataclass(eq=False)
class Resolver:
    """The call behind one field."""

    key: str  # "Type.field"
    call: CallPlan
    batch: Batch | None = None

    @property
    def safe(self) -> bool:
        return self.call.method in SAFE_METHODS

    def describe(self) -> str:
        """``Query.me -> users GET /users/{identity.id}`` (and its batch and body)."""
        call = self.call
        line = f"{self.key} -> {call.upstream.name} {call.method} {call.path.source}"
        notes = []
        if self.batch is not None:
            notes.append(self.batch.describe())
        if call.body is not None:
            tree = call.body.tree
            notes.append(f"JSON body {{{tree.text}}}" if isinstance(tree, Placeholder)
                         else "a JSON body built from a table")
        return line + (f"  [{'; '.join(notes)}]" if notes else "")


def compile_batch(call: CallPlan, config: BatchConfig, field_type: Any, where: str
                  ) -> tuple[Batch | None, list[ConfigIssue]]:
    """The batch of a resolver's call, or why it cannot be batched (at ``where``.batch)."""
    where = f"{where}.batch"
    reads_parent = [index for index, (_, template) in enumerate(call.query)
                    if _reads_parent(template)]
    elsewhere = [name for name, found in (
        ("path", _reads_parent(call.path) or _reads_parent(call.raw_query)),
        ("headers", any(_reads_parent(t) for _, t in call.headers)),
        ("body", call.body is not None and _body_reads_parent(call.body))) if found]
    example = 'query = { id = "{parent.id}" }'
    if elsewhere:
        return None, [ConfigIssue(where, f"a batched call reads {{parent.…}} only in one query "
                                  f"parameter ({example}), not in its {elsewhere[0]}")]
    if len(reads_parent) != 1:
        found = "none" if not reads_parent else f"{len(reads_parent)}"
        return None, [ConfigIssue(where, f"a batched call needs exactly one query parameter "
                                  f"holding {{parent.…}} ({example}); found {found}")]
    index = reads_parent[0]
    name, template = call.query[index]
    parts = template.parts
    if len(parts) != 1 or not isinstance(parts[0], Placeholder):
        return None, [ConfigIssue(where, f"the batched query parameter {name!r} must be one "
                                  f"placeholder ({example}), found {template.source!r}")]
    key = tuple(config.key.split("."))
    if any(not part for part in key):
        return None, [ConfigIssue(f"{where}.key", f"expected a field name or a dotted path "
                                  f"(\"userId\", \"owner.id\"), found {config.key!r}")]
    nullable = field_type.of_type if isinstance(field_type, GraphQLNonNull) else field_type
    reads_args = (_reads(call.path, "args") or _reads(call.raw_query, "args")
                  or any(_reads(t, "args") for _, t in call.query)
                  or any(_reads(t, "args") for _, t in call.headers)
                  or (call.body is not None and _body_reads(call.body, "args")))
    return Batch(key=key, max=config.max, index=index, param=name, value=parts[0],
                 many=isinstance(nullable, GraphQLList), same=not reads_args), []


def _reads(template: Template | None, source: str) -> bool:
    return template is not None and any(
        p.kind == "call" and p.name == source for p in template.placeholders)


def _reads_parent(template: Template | None) -> bool:
    return _reads(template, "parent")


def _body_reads(body: BodyTemplate, source: str) -> bool:
    stack = [body.tree]
    while stack:
        node = stack.pop()
        if isinstance(node, Placeholder):
            if node.kind == "call" and node.name == source:
                return True
        elif isinstance(node, Template):
            if _reads(node, source):
                return True
        elif isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return False


def _body_reads_parent(body: BodyTemplate) -> bool:
    return _body_reads(body, "parent")


# ---------------------------------------------------------------------------
# One request


class Calls:
    """One request's calls: started, shared, counted, batched; cancelled at its end."""

    def __init__(self, ctx: Context, scope: Scope, headers: CIMultiDict[str],
                 transform: Transform | None, fork_ctx: bool, deadline: float, max_body: int,
                 max_calls: int) -> None:
        self.ctx = ctx
        self.scope = scope
        self.headers = headers
        self.transform = transform
        self.fork_ctx = fork_ctx
        self.deadline = deadline
        self.max_body = max_body
        self.max_calls = max_calls
        self.loop = asyncio.get_running_loop()
        self.made: dict[tuple[Any, ...], asyncio.Task[Any]] = {}
        self.tasks: list[asyncio.Task[Any]] = []
        self.batchers: dict[Any, Batcher] = {}  # by resolver key, or by rendered shape
        self.settle = False  # wait one more loop iteration before sending a batch

    def start(self, resolver: Resolver, parent: Any, args: dict[str, Any]) -> asyncio.Future[Any]:
        """A future of the field's value (a :class:`Failed` when its call failed).

        :raise GraphQLError: the call cannot be made (a placeholder without a value,
            ``max_calls`` reached).
        """
        scope = self.scope
        scope.results = {"parent": parent if parent is not None else {}, "args": args}
        call = resolver.call
        try:
            batch = resolver.batch
            if batch is not None:
                value = batch.value.text_value(scope)
                if batch.same:  # the call's shape is this request's, whatever the parent
                    known = self.batchers.get(resolver.key)
                    if known is not None:
                        return known.load(value)
                path, before, after = _batch_target(call, scope, batch.index)
            else:
                path, query = call.render_target(scope)
            extra = call.render_headers(scope) if call.headers else None
            body = call.body.render(scope) if call.body is not None else None
        except Missing as missing:
            raise GraphQLError(f"call {resolver.key!r} was not made: {missing}") from None
        if batch is None:
            return self.send(resolver, path, query, extra, body)
        group: Any = resolver.key if batch.same else (
            resolver.key, path, before, after, tuple(extra) if extra else (), body)
        batcher = self.batchers.get(group)
        if batcher is None:
            batcher = self.batchers[group] = Batcher(self, resolver, batch, path, before,
                                                     after, extra, body)
        return batcher.load(value)

    def send(self, resolver: Resolver, path: str, query: str,
             extra: Sequence[tuple[str, str]] | None, body: bytes | None) -> asyncio.Task[Any]:
        """The task of one call (a call made already when it is identical and safe)."""
        call = resolver.call
        same: tuple[Any, ...] | None = None
        if call.method in SAFE_METHODS:
            same = (call.upstream.name, call.method, path, query,
                    tuple(extra) if extra else (), body)
            found = self.made.get(same)
            if found is not None:
                return found
        if len(self.tasks) >= self.max_calls:
            raise GraphQLError(f"call {resolver.key!r} was not made: this request has made "
                               f"{len(self.tasks)} upstream calls, the most this route allows "
                               "(max_calls)")
        headers = self.headers.copy()
        if extra:
            for name, value in extra:
                headers[name] = value
        upstream_request = UpstreamRequest(method=call.method, path=path, query=query,
                                           headers=headers, upstream=call.upstream.name,
                                           body=body)
        task = self.loop.create_task(self._make(resolver, upstream_request))
        self.tasks.append(task)
        if same is not None:
            self.made[same] = task
        return task

    async def _make(self, resolver: Resolver, upstream_request: UpstreamRequest) -> Any:
        try:
            result = await make_call(
                resolver.call, upstream_request, self.ctx, transform=self.transform,
                fork_ctx=self.fork_ctx, deadline=self.deadline, max_body=self.max_body,
                label=resolver.key)
        except GatewayError as refused:  # a transform_request hook refused the call
            return Failed(f"call {resolver.key!r} was refused: {refused.detail}")
        except RecursionError:  # json.loads of an answer nested beyond Python's stack
            return Failed(f"call {resolver.key!r} failed: {resolver.call.upstream.label} "
                          "answered JSON nested too deeply")
        if type(result) is CallFailed:
            return Failed(result.detail)
        return result

    def cancel(self) -> None:
        for task in self.tasks:
            task.cancel()


def _batch_target(call: CallPlan, scope: Scope, index: int) -> tuple[str, str, str]:
    """``(path, query before the batched parameter, query after it)``, percent-encoded."""
    path = call.path.render(scope, encode_segment)
    before = [] if call.raw_query is None else [call.raw_query.render(scope, encode_query)]
    after: list[str] = []
    for position, (name, template) in enumerate(call.query):
        if position != index:
            (before if position < index else after).append(
                f"{name}={template.render(scope, encode_query)}")
    return path, "&".join(p for p in before if p), "&".join(after)


class Batcher:
    """One batched field's parents' values in one request (one rendered call shape)."""

    __slots__ = ("after", "batch", "before", "body", "calls", "extra", "fresh", "futures",
                 "path", "queue", "resolver", "scheduled")

    def __init__(self, calls: Calls, resolver: Resolver, batch: Batch, path: str, before: str,
                 after: str, extra: Sequence[tuple[str, str]] | None, body: bytes | None
                 ) -> None:
        self.calls = calls
        self.resolver = resolver
        self.batch = batch
        self.path = path
        self.before = before
        self.after = after
        self.extra = extra
        self.body = body
        self.futures: dict[str, asyncio.Future[Any]] = {}  # each value once per request
        self.queue: list[str] = []  # values not sent yet
        self.scheduled = False
        self.fresh = False  # values came since the dispatch was scheduled

    def load(self, value: str) -> asyncio.Future[Any]:
        future = self.futures.get(value)
        if future is not None:
            return future
        future = self.futures[value] = self.calls.loop.create_future()
        self.queue.append(value)
        self.fresh = True
        if not self.scheduled:
            self.scheduled = True
            self.calls.loop.call_soon(self.dispatch)
        return future

    def dispatch(self) -> None:
        """Send the queued values: the callbacks that were ready with the first value have
        run (with ``settle``, graphql-core's executor, whose tasks nest, until a loop
        iteration has added none)."""
        if self.fresh and self.calls.settle:
            self.fresh = False
            self.calls.loop.call_soon(self.dispatch)
            return
        self.scheduled = False
        queue, self.queue = self.queue, []
        size = self.batch.max
        for start in range(0, len(queue), size):
            chunk = queue[start:start + size]
            pair = f"{self.batch.param}={','.join(map(_encoded, chunk))}"
            query = "&".join(p for p in (self.before, pair, self.after) if p)
            try:
                task = self.calls.send(self.resolver, self.path, query, self.extra, self.body)
            except GraphQLError as error:
                self.settle(chunk, Failed(error.message))
                continue
            task.add_done_callback(partial(self.deliver, chunk))

    def deliver(self, chunk: list[str], done: asyncio.Task[Any]) -> None:
        if done.cancelled():
            return
        error = done.exception()
        if error is not None:  # a defect or a plugin's failure: the request fails
            for value in chunk:
                future = self.futures[value]
                if not future.done():
                    future.set_exception(error)
            return
        result = done.result()
        if type(result) is Failed:
            self.settle(chunk, result)
            return
        if not isinstance(result, list):
            self.settle(chunk, Failed(
                f"call {self.resolver.key!r} failed: {self.resolver.call.upstream.label} "
                f"answered {json_kind(result)}, not the JSON array a batched call needs"))
            return
        matched: dict[str, list[Any]] = {}
        key = self.batch.key
        for item in result:
            found = item
            for part in key:
                found = found.get(part) if isinstance(found, dict) else None
            text = _text(found)
            if text is not None:
                matched.setdefault(text, []).append(item)
        many = self.batch.many
        for value in chunk:
            future = self.futures[value]
            if not future.done():
                items = matched.get(value)
                future.set_result((items or []) if many else (items[0] if items else None))

    def settle(self, chunk: list[str], failed: Failed) -> None:
        for value in chunk:
            future = self.futures[value]
            if not future.done():
                future.set_result(failed)


def _encoded(value: str) -> str:
    """A query value, percent-encoded (``,`` too: it separates the values)."""
    return value if value.isascii() and value.isalnum() else quote(value, safe="")


def _text(value: Any) -> str | None:
    """A key's value as its parents' placeholder renders it (numbers in JSON form)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    return None


