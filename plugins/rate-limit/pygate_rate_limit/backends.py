"""Where the counters live: in this process (``memory``) or in Redis, behind :class:`Store`.

Both stores take the keys of one check (one per limit), run the algorithm for every
limit and store the new states only when every limit admits the request, so a
refused request consumes nothing.

- :class:`MemoryStore` reads and writes a counter with no ``await`` in between, so
  concurrent requests of one event loop can never both take the last slot.
- :class:`RedisStore` runs one Lua script per check (EVALSHA, falling back to EVAL
  when Redis answers NOSCRIPT, e.g. after a restart wiped its script cache). The
  script reads the clock with ``TIME``, so gateway nodes with skewed clocks agree,
  and every key it writes carries a PEXPIRE. The keys of one check share a
  ``{hash tag}``, so they sit in one Redis Cluster slot.

Stores are created lazily, inside the running event loop, on the first request
that needs them, and kept in a :class:`Registry`: one per event loop, which the
plugin's ``startup`` takes with ``gateway.shared`` (so the counters survive a
reload) and keeps in ``gateway.state("rate-limit")``.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, cast
from urllib.parse import urlsplit, urlunsplit

import structlog

from .algorithms import (
    ALGORITHMS,
    FIXED_WINDOW,
    SLIDING_WINDOW,
    TOKEN_BUCKET,
    Limit,
    Outcome,
    State,
    evaluate,
)

PLUGIN = "rate-limit"

log = structlog.get_logger("pygate")

metrics: dict[str, int] = {"allowed": 0, "limited": 0, "backend_errors": 0}
"""In-process counters (this worker only): admitted and refused requests, and checks
that failed because the backend did not answer. Read by the prometheus plugin."""

ALGORITHM_CODES = {FIXED_WINDOW: "fw", SLIDING_WINDOW: "sw", TOKEN_BUCKET: "tb"}


class BackendError(Exception):
    """The store did not answer (connection refused, timeout, script error...)."""


class Store(Protocol):
    """A place to keep rate-limit state, shared by every route that names it."""

    async def check(self, keys: Sequence[str], algorithm: str,
                    limits: Sequence[Limit]) -> list[Outcome]:
        """Run ``algorithm`` for each limit (``keys[i]`` holds ``limits[i]``'s state).

        Store the new states only if every limit admits the request. Raise
        :class:`BackendError` when the store cannot be reached.
        """
        ...

    async def close(self) -> None:
        """Release connections; the store is not used again."""
        ...


# ---------------------------------------------------------------------------
# Keys
# ---------------------------------------------------------------------------

_PLAIN = re.compile(r"[A-Za-z0-9._:@/=-]{1,120}")


def key_part(value: str) -> str:
    """``value`` itself when short and plain, else a digest (no braces, no spaces)."""
    if _PLAIN.fullmatch(value):
        return value
    return "#" + hashlib.blake2b(value.encode("utf-8", "surrogatepass"),
                                 digest_size=12).hexdigest()


def limit_keys(prefix: str, subject: str, algorithm: str,
               limits: Sequence[Limit]) -> list[str]:
    """One key per limit, ``PREFIX:{SUBJECT}:ALGO:WINDOW_MS:LIMIT``.

    ``subject`` (scope and caller, already made safe by :func:`key_part`) is the
    hash tag, so Redis Cluster puts every key of one check in the same slot.
    """
    code = ALGORITHM_CODES[algorithm]
    return [f"{prefix}:{{{subject}}}:{code}:{limit.window_ms}:{limit.limit}"
            for limit in limits]


# ---------------------------------------------------------------------------
# Memory
# ---------------------------------------------------------------------------


def wall_clock_us() -> int:
    return time.time_ns() // 1000


class MemoryStore:
    """Counters in a dict of this process; expired entries are swept as it goes."""

    SWEEP_BATCH = 64

    def __init__(self, clock: Callable[[], int] = wall_clock_us) -> None:
        self.clock = clock
        # key -> (state, expires_at_us); roughly in write order, for the sweep
        self.entries: OrderedDict[str, tuple[State, int]] = OrderedDict()
        self._sweep_at = 0  # the oldest entry's expiry when last looked at

    def check_now(self, keys: Sequence[str], algorithm: str,
                  limits: Sequence[Limit]) -> list[Outcome]:
        """The whole check, synchronously: nothing else runs between read and write."""
        clock = self.clock
        now = time.time_ns() // 1000 if clock is wall_clock_us else clock()
        entries = self.entries
        if len(keys) == 1:  # the usual case, without the lists
            key = keys[0]
            entry = entries.get(key)
            step = ALGORITHMS[algorithm](
                entry[0] if entry is not None and entry[1] > now else None, now, limits[0])
            if step.outcome.allowed:
                entries[key] = (step.state, now + step.ttl_ms * 1000)
                entries.move_to_end(key)
            if now >= self._sweep_at:
                self._sweep(now)
            return [step.outcome]
        states: list[State | None] = []
        for key in keys:
            entry = entries.get(key)
            states.append(entry[0] if entry is not None and entry[1] > now else None)
        steps, allowed = evaluate(algorithm, states, now, limits)
        if allowed:
            for key, step in zip(keys, steps, strict=True):
                entries[key] = (step.state, now + step.ttl_ms * 1000)
                entries.move_to_end(key)
        if now >= self._sweep_at:
            self._sweep(now)
        return [step.outcome for step in steps]

    def _sweep(self, now: int) -> None:
        """Drop expired entries from the old end, at most a batch at a time; until the
        oldest one left expires, checks skip the sweep."""
        entries = self.entries
        for _ in range(self.SWEEP_BATCH):
            if not entries:
                self._sweep_at = 0
                return
            key, (_, expires) = next(iter(entries.items()))
            if expires > now:
                self._sweep_at = expires
                return
            del entries[key]

    async def check(self, keys: Sequence[str], algorithm: str,
                    limits: Sequence[Limit]) -> list[Outcome]:
        return self.check_now(keys, algorithm, limits)

    async def close(self) -> None:
        self.entries.clear()


# ---------------------------------------------------------------------------
# Redis
# ---------------------------------------------------------------------------

# KEYS[i] holds limit i's state. ARGV[1] is the algorithm, ARGV[2] the time in us or ''
# for the server's clock (tests pin it), ARGV[2i+1] and ARGV[2i+2] limit i's request
# count and window (ms). Returns {admitted, then per limit: allowed, remaining, reset_ms,
# retry_ms}. The arithmetic mirrors algorithms.py line by line (reset and retry at most
# the window).
LUA = """
local function idiv(a, b)
  local q = math.floor(a / b)
  if q * b > a then q = q - 1 elseif (q + 1) * b <= a then q = q + 1 end
  return q
end
local function ceil_div(a, b) return -idiv(-a, b) end
local function str(x) return string.format('%.0f', x) end

local now_us = tonumber(ARGV[2])
if now_us == nil then
  local t = redis.call('TIME')
  now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local now_ms = idiv(now_us, 1000)
local algorithm = ARGV[1]
local reply = {1}
local writes = {}

for i = 1, #KEYS do
  local key = KEYS[i]
  local limit = tonumber(ARGV[2 * i + 1])
  local window = tonumber(ARGV[2 * i + 2])
  local ok, remaining, reset, retry
  if algorithm == 'fixed-window' then
    local start = now_ms - now_ms % window
    local stored = redis.call('HMGET', key, 's', 'c')
    local count = 0
    if tonumber(stored[1]) == start then count = tonumber(stored[2]) end
    reset = start + window - now_ms
    if count + 1 > limit then
      ok, remaining, retry = 0, 0, reset
    else
      ok, remaining, retry = 1, limit - count - 1, 0
      writes[#writes + 1] = {key, {'s', str(start), 'c', str(count + 1)}, reset}
    end
  elseif algorithm == 'sliding-window' then
    local start = now_ms - now_ms % window
    local elapsed = now_ms - start
    local stored = redis.call('HMGET', key, 's', 'c', 'p')
    local s = tonumber(stored[1])
    local current, previous = 0, 0
    if s == start then
      current, previous = tonumber(stored[2]), tonumber(stored[3])
    elseif s == start - window then
      previous = tonumber(stored[2])
    end
    local used = previous * (window - elapsed) + current * window
    if used + window > limit * window then
      if current + 1 <= limit then
        retry = ceil_div((window - elapsed) * previous - (limit - current - 1) * window, previous)
      else
        retry = math.min(window, window - elapsed
          + ceil_div((current - limit + 1) * window, current))
      end
      ok, remaining, reset = 0, 0, retry
    else
      ok, remaining, reset, retry = 1, idiv(limit * window - used - window, window),
        window - elapsed, 0
      writes[#writes + 1] = {key, {'s', str(start), 'c', str(current + 1), 'p', str(previous)},
        start + 2 * window - now_ms}
    end
  else
    local interval = math.max(1, idiv(window * 1000, limit))
    local burst = interval * limit
    local tat = tonumber(redis.call('GET', key)) or now_us
    if tat < now_us then tat = now_us end
    local new_tat = tat + interval
    local allow_at = new_tat - burst
    if now_us < allow_at then
      retry = ceil_div(allow_at - now_us, 1000)
      ok, remaining, reset = 0, 0, retry
    else
      ok, remaining, retry = 1, idiv(now_us + burst - new_tat, interval), 0
      local until_full = ceil_div(new_tat - now_us, 1000)
      reset = math.min(until_full, window)
      writes[#writes + 1] = {key, str(new_tat), until_full}
    end
  end
  if ok == 0 then reply[1] = 0 end
  reply[#reply + 1] = ok
  reply[#reply + 1] = remaining
  reply[#reply + 1] = reset
  reply[#reply + 1] = retry
end

if reply[1] == 1 then
  for _, w in ipairs(writes) do
    if type(w[2]) == 'table' then
      redis.call('HSET', w[1], unpack(w[2]))
      redis.call('PEXPIRE', w[1], str(w[3]))
    else
      redis.call('SET', w[1], w[2], 'PX', str(w[3]))
    end
  end
end
return reply
"""

LUA_SHA = hashlib.sha1(LUA.encode()).hexdigest()


def redact(url: str) -> str:
    """``url`` without its user and password, for logs."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


class RedisStore:
    """A Redis (or Redis-compatible) server shared by every gateway node and worker.

    The client is created here, in the running event loop; redis-py reconnects on
    its own once the server is back. Short socket timeouts (``timeout``) and a
    single immediate retry keep a request fast while Redis is down.
    """

    def __init__(self, url: str, timeout: float) -> None:
        from redis.asyncio import Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        self.url = url
        self.clock: Callable[[], int] | None = None  # None: the Redis server's TIME
        self.client = Redis.from_url(
            url, socket_connect_timeout=timeout, socket_timeout=timeout,
            retry=Retry(NoBackoff(), 1), health_check_interval=0,
        )

    async def check(self, keys: Sequence[str], algorithm: str,
                    limits: Sequence[Limit]) -> list[Outcome]:
        from redis.exceptions import NoScriptError, RedisError

        args: list[Any] = [algorithm, "" if self.clock is None else self.clock()]
        for limit in limits:
            args += [limit.limit, limit.window_ms]
        try:
            try:
                reply = await cast(Awaitable[list[int]],
                                   self.client.evalsha(LUA_SHA, len(keys), *keys, *args))
            except NoScriptError:  # a restart or SCRIPT FLUSH emptied the script cache
                reply = await cast(Awaitable[list[int]],
                                   self.client.eval(LUA, len(keys), *keys, *args))
        except (RedisError, OSError, TimeoutError) as exc:
            raise BackendError(f"{type(exc).__name__}: {exc}") from exc
        if len(reply) != 1 + 4 * len(limits):
            raise BackendError(f"unexpected script reply of {len(reply)} values")
        return [
            Outcome(bool(reply[1 + 4 * i]), limit.limit, int(reply[2 + 4 * i]),
                    int(reply[3 + 4 * i]), int(reply[4 + 4 * i]))
            for i, limit in enumerate(limits)
        ]

    async def close(self) -> None:
        await self.client.aclose()


# ---------------------------------------------------------------------------
# Registry and failure reporting
# ---------------------------------------------------------------------------


class Registry:
    """The stores of one event loop, by backend URL, opened lazily on first use.

    Every gateway running in the loop holds it (``gateway.shared`` in ``startup``)
    and the core lets it go after ``shutdown``; the last one out closes the stores.
    So the memory counters survive while a reloaded gateway takes over from the
    old one.
    """

    def __init__(self) -> None:
        self.stores: dict[tuple[str, float], Store] = {}
        self.failures: dict[str, Failures] = {}

    def store(self, backend: str, timeout: float) -> Store:
        found = self.stores.get((backend, timeout))
        if found is None:
            found = MemoryStore() if backend == "memory" else RedisStore(backend, timeout)
            self.stores[(backend, timeout)] = found
        return found

    def backend_failed(self, backend: str, error: BackendError, action: str) -> None:
        """Count a failed check and log it (at most one line per backend every 10 s)."""
        metrics["backend_errors"] += 1
        failures = self.failures.setdefault(backend, Failures())
        failures.count += 1
        now = time.monotonic()
        if failures.count > 1 and now - failures.last_log < Failures.INTERVAL_S:
            failures.unlogged += 1
            return
        log.warning("rate-limit backend unavailable", plugin=PLUGIN, backend=redact(backend),
                    error=str(error), on_backend_error=action,
                    failures_since_last_log=failures.unlogged)
        failures.last_log = now
        failures.unlogged = 0

    def backend_ok(self, backend: str) -> None:
        """Note a successful check; log the recovery if the backend had been failing."""
        if not self.failures:
            return
        failures = self.failures.pop(backend, None)
        if failures is not None:
            log.info("rate-limit backend recovered", plugin=PLUGIN, backend=redact(backend),
                     failed_checks=failures.count)

    async def close(self) -> None:
        stores = list(self.stores.values())
        self.stores.clear()
        for store in stores:
            try:
                await store.close()
            except Exception as exc:  # closing must not fail the gateway's shutdown
                log.warning("rate-limit store close failed", plugin=PLUGIN,
                            error=f"{type(exc).__name__}: {exc}")


class Failures:
    """Throttled logging for one backend: the first failure, then one line per interval."""

    INTERVAL_S = 10.0

    def __init__(self) -> None:
        self.count = 0
        self.unlogged = 0
        self.last_log = 0.0


__all__ = [
    "LUA",
    "BackendError",
    "MemoryStore",
    "RedisStore",
    "Registry",
    "Store",
    "key_part",
    "limit_keys",
    "metrics",
]
