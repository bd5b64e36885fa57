"""Driving the fuzzer with hypothesis, and shrinking what it found to a reproduction."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed

from .checks import HIDDEN_KIND, HIDES_A_REQUEST, Failure, Fuzzer
from .corpus import CORPUS
from .exchanges import exchanges
from .wire import RID, Exchange, Request


def drive(fuzzer: Fuzzer, examples: int, *, check_every: int = 100, seed: int | None = None,
          chunk: int = 5000, stop: Callable[[], bool] = lambda: False,
          corpus: Iterable[Exchange] = CORPUS) -> None:
    """Send ``corpus``, then ``examples`` generated exchanges; check every ``check_every``
    requests and at the end.

    Hypothesis only generates here: the test body hands each exchange to the
    fuzzer's pool and never raises (every failure is recorded by the checks),
    so a run is never cut short by its first failure and nothing is shrunk by
    hypothesis (:func:`reproduce` does that against the gateway).
    ``seed=None`` derandomizes (the same exchanges on every run); runs longer
    than ``chunk`` examples are split, each part with a seed of its own, so
    that hypothesis's bookkeeping stays small.
    """
    due = 0

    def one(exchange: Exchange) -> None:
        nonlocal due
        if stop():
            return
        fuzzer.submit(exchange)
        if fuzzer.requests_sent >= due:
            fuzzer.drain()
            fuzzer.check()
            due = fuzzer.requests_sent + check_every

    corpus = tuple(corpus)
    if corpus:  # one at a time: some of them need a quiet gateway to show (races)
        for exchange in corpus:
            if not fuzzer.exclude & exchange.tags:
                fuzzer.send_now(exchange)
        fuzzer.check()
    due = fuzzer.requests_sent + check_every
    done = 0
    while done < examples and not stop():
        size = min(chunk, examples - done)
        test = settings(max_examples=size, deadline=None, database=None,
                        derandomize=seed is None, phases=(Phase.generate,),
                        suppress_health_check=list(HealthCheck))(given(exchanges())(one))
        if seed is not None:
            test = hypothesis_seed(seed + done)(test)
        test()
        done += size
    fuzzer.drain()
    fuzzer.check()


def probe(fuzzer: Fuzzer, exchange: Exchange, then: Exchange | None = None
          ) -> set[tuple[str, str]]:
    """The failure classes seen when ``exchange`` (then ``then``) is sent alone, now."""
    fuzzer.flush()
    fuzzer.send_now(exchange)
    if then is not None:
        fuzzer.send_now(then)
    fuzzer.check()
    return {f.key for f in fuzzer.latest}


def simpler(exchange: Exchange, keep_framing: bool = False) -> Iterable[Exchange]:
    """Exchanges one step simpler than ``exchange``, the boldest steps first.

    ``keep_framing``: never drop a Content-Length, Transfer-Encoding or
    Content-Encoding line nor change a body (a request hidden in a body must
    stay in it).
    """
    reqs = exchange.requests
    if len(reqs) > 1:
        for i in range(len(reqs)):
            yield replace(exchange, requests=reqs[:i] + reqs[i + 1:])
    if exchange.split:
        yield replace(exchange, split=False)
    if exchange.ending != "read":
        yield replace(exchange, ending="read")
    for i, request in enumerate(reqs):
        for candidate in _simpler_request(request, keep_framing):
            yield replace(exchange, requests=(*reqs[:i], candidate, *reqs[i + 1:]))


FRAMING = (b"content-length:", b"transfer-encoding:", b"content-encoding:")
BODY_TAGS = HIDES_A_REQUEST | {"content-encoding", "connect-method", "body-longer-than-length",
                               "body-cut-short", "chunked", "transfer-encoding-odd"}


def _simpler_request(request: Request, keep_framing: bool) -> Iterable[Request]:
    lines = request.lines
    for i in range(len(lines)):
        framing = lines[i].lower().startswith(FRAMING)
        if lines[i] != b"X-Request-ID: " + RID and not (framing and keep_framing):
            yield replace(request, lines=lines[:i] + lines[i + 1:],
                          payload=None if framing else request.payload)
    if request.body and request.coding in ("", "chunked") and not keep_framing:
        yield replace(request, body=b"", payload=None)
        if len(request.body) > 1:
            yield replace(request, body=request.body[:len(request.body) // 2], payload=None)
    target = request.target
    for shorter in (target.partition(b"?")[0], target.rpartition(b"/")[0] or b"/",
                    target[:len(target) // 2]):
        if shorter and shorter != target:
            yield replace(request, target=shorter)
    for name, plain in (("method", b"GET"), ("version", b"HTTP/1.1"), ("eol", b"\r\n")):
        if getattr(request, name) != plain:
            yield replace(request, **{name: plain})
    for i, line in enumerate(lines):
        name, colon, value = line.partition(b":")
        if colon and len(value) > 8:
            half = name + b":" + value[:len(value) // 2]
            yield replace(request, lines=(*lines[:i], half, *lines[i + 1:]))


def shrink(test: Callable[[Exchange], bool], exchange: Exchange, deadline: float,
           keep_framing: bool = False) -> Exchange:
    """Greedy: take the first simpler exchange that still passes ``test``, until none does."""
    progress = True
    while progress and time.monotonic() < deadline:
        progress = False
        for candidate in simpler(exchange, keep_framing):
            if time.monotonic() >= deadline:
                break
            if test(candidate):
                exchange, progress = candidate, True
                break
    return exchange


@dataclass
class Reproduction:
    """The simplest exchange found that fails the same way; ``before``: one that must be
    sent first (the failure shows on a later request: a poisoned upstream connection)."""

    failure: Failure
    exchange: Exchange
    sent: bytes
    before: bytes = b""


def reproduce(fuzzer: Fuzzer, failure: Failure, *, budget: float = 90.0
              ) -> Reproduction | None:
    """Find the bytes that cause ``failure`` when sent alone, and shrink them.

    Tries the failing exchange alone; when it does not fail alone (or the
    failure names no exchange: a traceback without a request ID), tries each
    exchange of the same batch, newest first, alone or followed by the failing
    one. None when nothing reproduces within ``budget`` seconds.
    """
    key = failure.key
    deadline = time.monotonic() + budget
    victim = failure.exchange

    def alone(exchange: Exchange) -> bool:
        return key in probe(fuzzer, exchange)

    def before_victim(exchange: Exchange) -> bool:
        return key in probe(fuzzer, exchange, then=victim)

    keep = failure.kind == HIDDEN_KIND
    if victim is not None and sum(alone(victim) for _ in range(3)) >= 2:  # races too
        found = shrink(alone, victim, deadline, keep)
        return Reproduction(failure, found, fuzzer.send_now(found).sent)
    test = alone if victim is None else before_victim
    batch = fuzzer.batch(failure.batch) + fuzzer.batch(failure.batch - 1)
    # Newest first, and first of all those whose body may hold bytes the upstream
    # reads as a request of its own.
    candidates = sorted(reversed(batch), key=lambda r: not r.exchange.tags & BODY_TAGS)
    for record in candidates:
        if time.monotonic() >= deadline:
            return None
        candidate = record.exchange
        if candidate == victim or not (test(candidate) and test(candidate)):
            continue
        found = shrink(test, candidate, deadline, keep)
        sent = fuzzer.send_now(found).sent
        if victim is None:
            return Reproduction(failure, found, sent)
        return Reproduction(failure, victim, fuzzer.send_now(victim).sent, before=sent)
    return None
