"""Sending exchanges from a thread pool, and checking what came back (PRODUCT.md 4.5, 4.6).

Every request the fuzzer writes carries its own ``X-Request-ID`` (the gateway
keeps a valid one, sends it upstream and back), so a response, a log line or a
request the upstream received is traced to the exact bytes of one exchange.
That makes the forwarding check exact instead of a count with slack: each
request the upstream saw must come back to its client as a response carrying
its ID, unless that client ended the connection early (half-close, abort, read
timeout, or a reset caused by bytes the gateway refused to read).
"""

from __future__ import annotations

import base64
import json
import re
import struct
import threading
import time
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .exchanges import plain_get
from .logs import LogTail, log_events, traceback_signature
from .upstream import BODY_HEADER, SEEN_HEADER, UNDERSCORE_HEADER, body_digest
from .wire import Exchange, Outcome, Response, run_exchange


@dataclass
class Failure:
    """One thing that went wrong, with the exact bytes (``sent``) that caused it."""

    kind: str
    signature: str  # what tells this failure class from others of the same kind
    detail: str
    sent: bytes = b""
    ending: str = ""
    exchange: Exchange | None = None
    batch: int = 0  # the check that found it: the exchanges sent since the one before

    @property
    def key(self) -> tuple[str, str]:
        return self.kind, self.signature

    def describe(self, limit: int = 2000) -> str:
        text = f"[{self.kind}] {self.signature}\n  {self.detail}"
        if self.sent:
            more = " ..." if len(self.sent) > limit else ""
            text += (f"\n  sent ({len(self.sent)} bytes, then {self.ending}): "
                     f"{self.sent[:limit]!r}{more}")
        return text


@dataclass
class Record:
    """One exchange sent: its IDs, its bytes, and how its connection ended."""

    exchange: Exchange
    rids: list[str]
    hidden: list[str]
    batch: int
    sent: bytes = b""
    payloads: list[bytes | None] | None = None
    outcome: Outcome | None = None  # dropped once checked
    end: str = ""
    finals: int = 0

    @property
    def cut(self) -> bool:
        """Did the client end the connection before every answer could arrive?

        Half-close and abort end it on purpose; a read timeout ends it while
        the gateway may still be working; a reset means the gateway closed with
        bytes of ours unread, which can take its last answers with it.
        """
        return self.exchange.ending != "read" or self.end in ("timeout", "reset", "")

    def failure(self, kind: str, signature: str, detail: str, batch: int) -> Failure:
        return Failure(kind, signature, detail, self.sent, self.exchange.ending, self.exchange,
                       batch)


HIDDEN_KIND = "a request hidden in a body reached the upstream"

HIDES_A_REQUEST = frozenset({"content-length-and-chunked", "body-carries-request",
                             "compressed-body", "connect-method"})
"""Tags of exchanges whose body holds a request of its own, which may reach the upstream
after the exchange was checked (so their bytes are kept)."""


FLUSH = b"fuzz-flush"
"""The request ID of :meth:`Fuzzer.flush` requests."""

DUPLICATES = {"authorization-duplicate": "broken-auth", "host-duplicate": "broken-host",
              "content-length-duplicate": "broken-framing"}
"""Tags of requests with two of a header that must get 400 (PRODUCT.md 4.1, 4.7), and the
one damaged aspect that made them, if any (with more damage, the gateway may see other
lines)."""


class Fuzzer:
    """Sends exchanges to the gateway on ``port`` and checks everything seen so far.

    :param seen: the list the upstream appends each received request's ID to.
    :param gateway_log: the gateway's stderr (tracebacks, error lines).
    :param access_log: the ``logging`` plugin's file (one line per request).
    :param upstream_port: the internal port that no response may name.
    :param exclude: exchanges carrying any of these tags are not sent.
    """

    def __init__(self, port: int, upstream_port: int, seen: list[str], gateway_log: Path,
                 access_log: Path, *, timeout: float = 0.5, concurrency: int = 16,
                 exclude: Iterable[str] = ()) -> None:
        self.port = port
        self.seen = seen
        self.gateway_log = LogTail(gateway_log)
        self.access_log = LogTail(access_log)
        self.timeout = timeout
        self.exclude = frozenset(exclude)
        self.records: list[Record] = []
        self.by_rid: dict[str, Record] = {}
        self.answered: set[str] = set()  # IDs the client got a forwarded response for
        self.tracebacks: dict[str, str] = {}  # request ID -> traceback signature
        self.statuses: Counter[int] = Counter()
        self.ends: Counter[str] = Counter()
        self.tags_sent: Counter[str] = Counter()  # exchanges sent, by tag
        self.tags_forwarded: Counter[str] = Counter()  # of those, answered by the upstream
        self.requests_sent = 0
        self.skipped = 0
        self.untraced = 0  # upstream requests with an ID the gateway made, unanswered
        self.allowance = 0  # requests the fuzzer left unanswered by ending early
        self.checks = 0
        self.failures: dict[tuple[str, str], list[Failure]] = {}
        self.latest: list[Failure] = []  # every failure of the last check
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix="fuzz")
        self._slots = threading.BoundedSemaphore(concurrency * 2)
        self._pending: set[Future[None]] = set()
        self._prefix = "fz" + base64.b32encode(
            struct.pack(">I", time.time_ns() & 0xFFFFFFFF)).decode().rstrip("=").lower()
        self._counter = 0
        self._checked_records = 0
        self._checked_seen = 0
        self._leak = re.compile(rb"(?:127\.0\.0\.1|localhost)?:%d(?!\d)" % upstream_port)
        self._bare_port = re.compile(rb"(?<![0-9A-Za-z])%d(?![0-9A-Za-z])" % upstream_port)

    # -- sending -------------------------------------------------------------

    def _record(self, exchange: Exchange) -> Record:
        with self._lock:
            rids = []
            for _ in exchange.requests:
                self._counter += 1
                rids.append(f"{self._prefix}{self._counter:x}")
            record = Record(exchange, rids, [rid + "h" for rid in rids], self.checks)
            self.records.append(record)
            for rid in (*record.rids, *record.hidden):
                self.by_rid[rid] = record
            self.requests_sent += len(rids)
        return record

    def submit(self, exchange: Exchange) -> int:
        """Send ``exchange`` from the pool (blocks while many are in flight); its request count.

        Exchanges carrying an excluded tag are not sent (0).
        """
        if self.exclude & exchange.tags:
            self.skipped += 1
            return 0
        record = self._record(exchange)
        self._slots.acquire()
        future = self._pool.submit(self._run, record)
        with self._lock:
            self._pending.add(future)
        future.add_done_callback(self._done)
        return len(record.rids)

    def _done(self, future: Future[None]) -> None:
        with self._lock:
            self._pending.discard(future)
        self._slots.release()

    def _run(self, record: Record, timeout: float | None = None) -> None:
        exchange = record.exchange
        parts, record.payloads = exchange.encode([rid.encode() for rid in record.rids],
                                                 [rid.encode() for rid in record.hidden])
        record.sent = b"".join(parts)
        methods = [r.method for r in exchange.requests]
        try:
            outcome = run_exchange(self.port, parts, exchange.ending, methods,
                                   timeout or self.timeout)
        except OSError as exc:  # could not even connect
            outcome = Outcome(b"", "reset", [], repr(exc).encode())
        record.outcome = outcome
        record.end = outcome.end
        record.finals = len(outcome.finals)
        forwarded = any(r.header(SEEN_HEADER) is not None for r in outcome.responses)
        with self._lock:
            self.ends[outcome.end] += 1
            for response in outcome.responses:
                self.statuses[response.status] += 1
            for tag in exchange.tags:
                self.tags_sent[tag] += 1
                self.tags_forwarded[tag] += forwarded

    def drain(self) -> None:
        """Wait until every exchange submitted so far has finished."""
        while True:
            with self._lock:
                pending = list(self._pending)
            if not pending:
                return
            for future in pending:
                future.result()

    def close(self) -> None:
        self.drain()
        self._pool.shutdown()

    def send_now(self, exchange: Exchange, timeout: float | None = None) -> Record:
        """Send one exchange from this thread and wait for its outcome."""
        record = self._record(exchange)
        self._run(record, timeout)
        return record

    def flush(self, connections: int = 24) -> None:
        """Send plain GETs on ``connections`` connections at once, and forget them.

        Each takes a different pooled upstream connection, so a connection an
        earlier request left in a bad state (bytes of a body the upstream reads
        as the next request) is used up before a probe; the checks ignore them.
        """
        raw = (b"GET /api/flush HTTP/1.1\r\nHost: gw\r\nX-Request-ID: " + FLUSH +
               b"\r\nConnection: close\r\n\r\n")
        with ThreadPoolExecutor(connections) as pool:
            list(pool.map(lambda _: run_exchange(self.port, [raw], "read", [b"GET"], 5.0),
                          range(connections)))

    def batch(self, number: int) -> list[Record]:
        """The exchanges sent between check ``number - 1`` and check ``number``."""
        return [r for r in self.records if r.batch == number]

    # -- checking ------------------------------------------------------------

    def _fail(self, failure: Failure) -> None:
        failure.batch = self.checks
        self.latest.append(failure)
        found = self.failures.setdefault(failure.key, [])
        if len(found) < 20:
            found.append(failure)

    def check(self, *, settle: float = 0.12) -> None:
        """Check what happened since the last check (call it after :meth:`drain`).

        For every exchange: no status 500 (none either in bytes that did not
        parse); every error the gateway made itself is a problem document; no
        response names the upstream's address; a forwarded response carries the
        ID of the request it answers, the upstream received the body the client
        sent and no header name with ``_``, and no request with two
        Authorization, Host or Content-Length headers was forwarded. Over the
        run: no traceback in the gateway's output and no access line with a 5xx
        status; every request the upstream received came back to its client
        forwarded, unless that client ended the connection first (requests
        with IDs the gateway made cannot be traced, and must fit in the count
        the fuzzer left unanswered); a plain GET still gets the upstream's 200.
        """
        self.latest = []
        plain = self.send_now(plain_get(), timeout=5.0)  # slow is not broken
        statuses = [(r.status, r.header(SEEN_HEADER) is not None)
                    for r in (plain.outcome.finals if plain.outcome else [])]
        time.sleep(settle)  # the access log's writer flushes every 50 ms
        self._check_logs()
        for record in self.records[self._checked_records:]:
            self._check_record(record)
        self._checked_records = len(self.records)
        self._check_forwarding()
        if statuses != [(200, True)]:
            self._fail(plain.failure("plain GET failed", "no forwarded 200",
                                     f"got {statuses}, connection {plain.end}", self.checks))
        self.checks += 1

    def _check_logs(self) -> None:
        for event in log_events(self.gateway_log.read()):
            if event.traceback is None or "Traceback" not in event.traceback:
                continue
            signature = traceback_signature(event.traceback)
            rid = event.request_id
            if rid:
                self.tracebacks[rid] = signature
            where = f"request id {rid}" if rid else "no request ID (plain-text traceback)"
            detail = (f"{where}; event {event.doc.get('event')!r}:\n    " +
                      "\n    ".join(event.traceback.strip().splitlines()[-6:]))
            self._report(rid, "traceback in the gateway's output", signature, detail)
        for event in log_events(self.access_log.read()):
            status = event.doc.get("status")
            if isinstance(status, int) and status >= 500:
                self._report(event.request_id, f"access line with status {status}",
                             f"error {event.doc.get('error')!r}",
                             f"request id {event.request_id}, {event.doc.get('method')} "
                             f"{event.doc.get('path')}")

    def _report(self, rid: str, kind: str, signature: str, detail: str) -> None:
        record = self.by_rid.get(rid)
        self._fail(record.failure(kind, signature, detail, self.checks) if record
                   else Failure(kind, signature, detail))

    def _check_record(self, record: Record) -> None:
        outcome = record.outcome
        if outcome is None:
            return

        def fail(kind: str, signature: str, detail: str) -> None:
            self._fail(record.failure(kind, signature, detail, self.checks))

        for response in outcome.responses:
            rid = response.header("X-Request-ID") or ""
            seen = response.header(SEEN_HEADER)
            if seen is not None:
                self.answered.add(seen)
                if seen != rid:
                    fail("response for another request", "X-Upstream-Seen is not X-Request-ID",
                         f"the upstream answered {seen}; the response says {rid}")
                self._check_body(record, response, seen, fail)
                self._check_forwarded(record, response, seen, fail)
            elif response.status == 101:
                self.answered.add(rid)
            if response.status == 500:
                fail("status 500", self.tracebacks.get(rid, "no traceback logged for it"),
                     f"request id {rid}; body {response.body[:200]!r}")
            elif seen is None and response.status >= 400:
                self._check_problem(response, fail)
            if self._bare_port.search(response.body):
                fail("internal address shown", "upstream port in a body",
                     f"body {response.body[:300]!r}")
        if re.search(rb"HTTP/1\.[01] 500 ", outcome.rest):
            fail("status 500", "in bytes that did not parse", f"unparsed {outcome.rest[:300]!r}")
        if self._leak.search(outcome.data):
            fail("internal address shown", "upstream address in a response",
                 f"received {outcome.data[:400]!r}")
        if record.cut:
            self.allowance += max(0, len(record.rids) - record.finals)
        record.outcome = None  # what later checks need is kept; bytes only where needed
        if not (record.cut or record.exchange.tags & HIDES_A_REQUEST):
            record.sent = b""

    def _check_body(self, record: Record, response: Response, rid: str, fail: Any) -> None:
        if rid not in record.rids or record.payloads is None:
            return
        index = record.rids.index(rid)
        expected = record.payloads[index]
        got = response.header(BODY_HEADER)
        if expected is None or got is None or got == body_digest(expected):
            return
        request = record.exchange.requests[index]
        framing = f"{request.coding} body" if request.coding else (
            "chunked body" if "chunked" in request.tags else "body")
        fail("upstream received another body", f"{framing} changed on the way",
             f"sent {body_digest(expected)} (length:sha256), the upstream received {got}")

    def _check_forwarded(self, record: Record, response: Response, rid: str, fail: Any
                         ) -> None:
        """PRODUCT.md 4.7: no ``_`` header name upstream; duplicates of Authorization, Host
        or Content-Length are refused, never forwarded."""
        underscored = response.header(UNDERSCORE_HEADER)
        if underscored:
            fail("a header name with '_' reached the upstream", underscored,
                 f"request id {rid}")
        if rid not in record.rids:
            return
        tags = record.exchange.requests[record.rids.index(rid)].tags
        for tag, aspect in DUPLICATES.items():
            if tag in tags and {t for t in tags if t.startswith("broken-")} <= {aspect}:
                fail("a request with a duplicated header was forwarded", tag,
                     f"request id {rid}; it should get 400")

    def _check_problem(self, response: Response, fail: Any) -> None:
        ctype = response.header("Content-Type") or ""
        server = response.header("Server") or ""
        if server and server != "pygate":  # passed through, without the upstream's header
            fail("the upstream's HTTP parser refused a forwarded request",
                 f"status {response.status}",
                 f"Server {server!r}; body {response.body[:200]!r} (often bytes an earlier "
                 "request left on a pooled upstream connection)")
            return
        good = ctype.startswith("application/problem+json")
        if good and response.complete and response.body:
            try:
                doc = json.loads(response.body)
                good = isinstance(doc, dict) and doc.get("status") == response.status
            except ValueError:
                good = False
        if not good:
            fail("error response that is not a problem document",
                 f"status {response.status}, {ctype or 'no Content-Type'}",
                 f"body {response.body[:200]!r}")

    def _check_forwarding(self) -> None:
        seen = self.seen[self._checked_seen:]
        self._checked_seen += len(seen)
        for rid in seen:
            if rid in self.answered or rid == FLUSH.decode():
                continue
            record = self.by_rid.get(rid)
            if record is None:
                self.untraced += 1
                continue
            if record.cut and rid not in record.hidden:
                continue
            if rid in record.hidden:
                kind = HIDDEN_KIND
                signature = ", ".join(sorted(record.exchange.tags & HIDES_A_REQUEST))
            else:
                kind = "upstream request the client got no answer for"
                signature = (f"{record.finals} of {len(record.rids)} answered, connection "
                             f"{record.end}")
            self._fail(record.failure(kind, signature, f"request id {rid}", self.checks))
        if self.untraced > self.allowance:
            self._fail(Failure(
                "upstream request the client got no answer for", "untraceable requests",
                f"{self.untraced} requests with IDs the gateway made reached the upstream "
                f"without a forwarded answer; the fuzzer left only {self.allowance} unanswered"))

    # -- reporting -----------------------------------------------------------

    def summary(self) -> str:
        def join(counts: Counter[Any]) -> str:
            return ", ".join(f"{k}: {n}" for k, n in sorted(counts.items()))

        return (f"exchanges {len(self.records)}, requests sent {self.requests_sent}"
                f"{f', skipped {self.skipped}' if self.skipped else ''}; upstream received "
                f"{len(self.seen)}, forwarded answers read {len(self.answered)}, "
                f"left unanswered by the fuzzer {self.allowance}\n"
                f"statuses: {join(self.statuses)}\nconnection ends: {join(self.ends)}")

    def report(self, limit: int = 2000) -> str:
        """Every distinct failure class, with its shortest reproducing bytes."""
        blocks = []
        for (kind, signature), found in sorted(self.failures.items()):
            shortest = min(found, key=lambda f: (not f.sent, len(f.sent)))
            count = f"{len(found)}{'+' if len(found) >= 20 else ''}"
            blocks.append(f"{kind} -- {signature} ({count} seen)\n{shortest.describe(limit)}")
        return "\n\n".join(blocks)
