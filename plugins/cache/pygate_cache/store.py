"""Where entries live: this process's memory or a Redis shared by gateway nodes.

Both stores sit behind :class:`Store`. An entry is found by its key (see
:func:`pygate_cache.policy.cache_key`). A response with ``Vary`` is stored as
an index record under the key (the names of the headers it varies on) plus the
entry itself under ``KEY v=DIGEST``, the digest of the storing request's values
of those headers; a lookup reads the index, digests its own values, and reads
that variant.

- :class:`MemoryStore`: a cachetools ``TLRUCache`` (least recently used first,
  each entry expiring at its own time) bounded by ``max_bytes`` through its
  ``getsizeof``, and by ``max_entries``.
- :class:`RedisStore`: one hash per entry (status, headers, body, stored-at and
  expiry times, vary names) with a Redis expiry equal to its freshness lifetime,
  so every node that shares the Redis shares the entries. Short socket timeouts;
  every failure is a :class:`BackendError`, which the plugin turns into a BYPASS.

A :class:`Registry` per event loop holds the stores (opened lazily, on first use)
and their single flights. The plugin's ``startup`` takes it with
``gateway.shared`` and keeps it in ``gateway.state("cache")``; it is closed when
the last gateway of the loop stops.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, cast
from urllib.parse import urlsplit, urlunsplit

import structlog
from cachetools import TLRUCache
from multidict import MultiMapping

from .config import CacheConfig
from .flight import SingleFlight
from .policy import Entry, variant

PLUGIN = "cache"

REGISTRY = "registry"
"""``gateway.state(PLUGIN)[REGISTRY]``: the event loop's :class:`Registry`."""

log = structlog.get_logger("pygate")

metrics: dict[str, int] = {"hits": 0, "misses": 0, "bypasses": 0, "stored": 0,
                           "backend_errors": 0}
"""In-process counters (this worker only): answers by ``X-Cache`` value, entries
stored, and store operations that failed. Read by the prometheus plugin."""

Clock = Callable[[], float]


class BackendError(Exception):
    """The store did not answer (connection refused, timeout, bad reply...)."""


class Store(Protocol):
    """A place for entries, shared by every route whose config names it."""

    async def get(self, key: str, request_headers: MultiMapping[str]) -> Entry | None:
        """The fresh entry for ``key`` (the variant ``request_headers`` select), or None."""
        ...

    async def put(self, key: str, entry: Entry, digest: str | None) -> None:
        """Store ``entry`` until ``entry.expires_at``; ``digest`` is its variant (Vary)."""
        ...

    async def purge(self, prefix: str) -> int:
        """Remove every entry whose key starts with ``prefix``; return how many."""
        ...

    async def close(self) -> None:
        """Release connections; the store is not used again."""
        ...


def variant_key(key: str, digest: str) -> str:
    return f"{key} v={digest}"


# ---------------------------------------------------------------------------
# Memory
# ---------------------------------------------------------------------------


def _entry_expiry(_key: Any, value: Entry, _now: float) -> float:
    return value.expires_at


def _marker_expiry(_key: Any, value: tuple[tuple[str, ...], float], _now: float) -> float:
    return value[1]


def _entry_size(value: Entry) -> int:
    return value.size


class _Entries(TLRUCache[str, Entry]):
    """A TLRU cache bounded by bytes (``maxsize`` with a getsizeof) and by entries."""

    def __init__(self, max_entries: int, max_bytes: int, clock: Clock) -> None:
        super().__init__(max_bytes, _entry_expiry, timer=clock, getsizeof=_entry_size)
        self.max_entries = max_entries

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(key, value)
        while len(self) > self.max_entries:
            self.popitem()


class MemoryStore:
    """Entries in this process, evicted least recently used first when full."""

    def __init__(self, max_entries: int, max_bytes: int, clock: Clock = time.time) -> None:
        self.clock = clock
        self.entries = _Entries(max_entries, max_bytes, clock)
        # key -> (vary names, expires_at): the index records of responses with Vary
        self.markers: TLRUCache[str, tuple[tuple[str, ...], float]] = TLRUCache(
            max_entries, _marker_expiry, timer=clock)

    def get_now(self, key: str, request_headers: MultiMapping[str]) -> Entry | None:
        marker = self.markers.get(key)
        if marker is not None:
            key = variant_key(key, variant(marker[0], request_headers))
        found: Entry | None = self.entries.get(key)
        return found

    def put_now(self, key: str, entry: Entry, digest: str | None) -> None:
        if entry.size > self.entries.maxsize:
            return
        if entry.vary and digest is not None:
            self.entries.pop(key, None)
            old = self.markers.get(key)
            expires = entry.expires_at if old is None else max(old[1], entry.expires_at)
            self.markers[key] = (entry.vary, expires)
            self.entries[variant_key(key, digest)] = entry
        else:
            self.markers.pop(key, None)
            self.entries[key] = entry

    def purge_now(self, prefix: str) -> int:
        self.entries.expire()
        doomed = [key for key in self.entries if key.startswith(prefix)]
        for key in doomed:
            self.entries.pop(key, None)
        for key in [key for key in self.markers if key.startswith(prefix)]:
            self.markers.pop(key, None)
        return len(doomed)

    async def get(self, key: str, request_headers: MultiMapping[str]) -> Entry | None:
        return self.get_now(key, request_headers)

    async def put(self, key: str, entry: Entry, digest: str | None) -> None:
        self.put_now(key, entry, digest)

    async def purge(self, prefix: str) -> int:
        return self.purge_now(prefix)

    async def close(self) -> None:
        self.entries.clear()
        self.markers.clear()


# ---------------------------------------------------------------------------
# Redis
# ---------------------------------------------------------------------------


def redact(url: str) -> str:
    """``url`` without its user and password, for logs."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def glob_escape(text: str) -> str:
    """``text`` as a literal in a Redis ``SCAN MATCH`` pattern."""
    out = []
    for char in text:
        if char in "\\*?[]":
            out.append("\\")
        out.append(char)
    return "".join(out)


def _encode(entry: Entry) -> dict[str, bytes | str]:
    return {
        "s": str(entry.status),
        "h": json.dumps(entry.headers),  # ASCII: \u escapes keep odd bytes intact
        "b": entry.body,
        "t": repr(entry.stored_at),
        "x": repr(entry.expires_at),
        "v": ",".join(entry.vary),
    }


def _decode(data: dict[bytes, bytes]) -> Entry | None:
    try:
        vary = data[b"v"].decode()
        return Entry(
            status=int(data[b"s"]),
            headers=tuple((str(k), str(v)) for k, v in json.loads(data[b"h"])),
            body=data[b"b"],
            stored_at=float(data[b"t"]),
            expires_at=float(data[b"x"]),
            vary=tuple(vary.split(",")) if vary else (),
        )
    except (KeyError, ValueError, TypeError):
        return None  # not written by this plugin (or by an incompatible version): a miss


class RedisStore:
    """Entries in a Redis shared by every gateway node and worker.

    Keys: ``PREFIX:e:{KEY}`` holds an entry (a hash), ``PREFIX:e:{KEY} v=DIGEST``
    a variant, ``PREFIX:v:{KEY}`` the index of a response with Vary. ``{KEY}`` is a
    Redis Cluster hash tag, so the keys of one lookup share a slot. The client is
    created in the running loop; redis-py reconnects by itself when Redis is back.
    """

    SCAN_COUNT = 1000

    def __init__(self, url: str, timeout: float, prefix: str, clock: Clock = time.time) -> None:
        from redis.asyncio import Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        self.url = url
        self.prefix = prefix
        self.clock = clock
        # One immediate retry: the first command on a connection that a Redis restart
        # closed fails, the retry reconnects. A dead Redis costs at most two timeouts.
        self.client = Redis.from_url(
            url, socket_connect_timeout=timeout, socket_timeout=timeout,
            retry=Retry(NoBackoff(), 1), health_check_interval=0,
        )

    def entry_key(self, key: str) -> str:
        return f"{self.prefix}:e:{{{key}}}"

    def marker_key(self, key: str) -> str:
        return f"{self.prefix}:v:{{{key}}}"

    async def _run(self, call: Callable[[], Awaitable[Any]]) -> Any:
        from redis.exceptions import RedisError

        try:
            return await call()
        except (RedisError, OSError, TimeoutError) as exc:
            raise BackendError(f"{type(exc).__name__}: {exc}") from exc

    async def get(self, key: str, request_headers: MultiMapping[str]) -> Entry | None:
        entry_key = self.entry_key(key)

        async def lookup() -> tuple[dict[bytes, bytes], bytes | None]:
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.hgetall(entry_key)
                pipe.get(self.marker_key(key))
                data, marker = await pipe.execute()
            return data, marker

        data, marker = await self._run(lookup)
        if not data and marker:
            names = marker.decode().split(",")
            wanted = variant_key(entry_key, variant(names, request_headers))
            data = await self._run(
                lambda: cast(Awaitable[dict[bytes, bytes]], self.client.hgetall(wanted)))
        return _decode(data) if data else None

    async def put(self, key: str, entry: Entry, digest: str | None) -> None:
        ttl_ms = max(1, math.ceil((entry.expires_at - self.clock()) * 1000))
        entry_key = self.entry_key(key)

        async def write() -> None:
            async with self.client.pipeline(transaction=True) as pipe:
                target = entry_key
                if entry.vary and digest is not None:
                    pipe.delete(entry_key)
                    pipe.set(self.marker_key(key), ",".join(entry.vary), px=ttl_ms)
                    target = variant_key(entry_key, digest)
                else:
                    pipe.delete(self.marker_key(key))
                pipe.delete(target)  # a hash is replaced, not merged
                pipe.hset(target, mapping=_encode(entry))  # type: ignore[arg-type]
                pipe.pexpire(target, ttl_ms)
                await pipe.execute()

        await self._run(write)

    async def purge(self, prefix: str) -> int:
        async def sweep(namespace: str) -> int:
            removed = 0
            batch: list[bytes] = []
            match = glob_escape(f"{self.prefix}:{namespace}:{{{prefix}") + "*"
            async for found in self.client.scan_iter(match=match, count=self.SCAN_COUNT):
                batch.append(found)
                if len(batch) >= self.SCAN_COUNT:
                    removed += await self.client.unlink(*batch)
                    batch = []
            if batch:
                removed += await self.client.unlink(*batch)
            return removed

        removed: int = await self._run(lambda: sweep("e"))
        await self._run(lambda: sweep("v"))
        return removed

    async def close(self) -> None:
        await self.client.aclose()


# ---------------------------------------------------------------------------
# Registry and failure reporting
# ---------------------------------------------------------------------------


class Cache:
    """One store, its single flights and its failure bookkeeping."""

    LOG_INTERVAL_S = 10.0

    def __init__(self, name: str, store: Store) -> None:
        self.name = name  # the backend, without credentials, for logs
        self.store = store
        self.flights: SingleFlight[tuple[Entry, str]] = SingleFlight()
        self.failures = 0
        self.unlogged = 0
        self.last_log = 0.0

    def failed(self, error: BackendError, operation: str) -> None:
        """Count a failed store call and log it (at most one line every 10 s)."""
        metrics["backend_errors"] += 1
        self.failures += 1
        now = time.monotonic()
        if self.failures > 1 and now - self.last_log < self.LOG_INTERVAL_S:
            self.unlogged += 1
            return
        log.warning("cache backend unavailable", plugin=PLUGIN, backend=self.name,
                    operation=operation, error=str(error),
                    failures_since_last_log=self.unlogged)
        self.last_log = now
        self.unlogged = 0

    def ok(self) -> None:
        """Note a successful call; log the recovery if the store had been failing."""
        if self.failures:
            log.info("cache backend recovered", plugin=PLUGIN, backend=self.name,
                     failed_calls=self.failures)
            self.failures = 0
            self.unlogged = 0


def cache_id(config: CacheConfig) -> tuple[Any, ...]:
    if config.backend == "memory":
        return ("memory", config.max_entries, config.max_bytes)
    return ("redis", config.backend, config.backend_timeout, config.key_prefix)


class Registry:
    """The caches of one event loop, by backend settings, opened lazily on first use.

    Every gateway running in the loop holds it (``gateway.shared`` in ``startup``)
    and the core lets it go after ``shutdown``; the last one out closes the stores,
    so a reloaded gateway keeps the memory entries of the one it replaces.
    """

    def __init__(self) -> None:
        self.caches: dict[tuple[Any, ...], Cache] = {}

    def cache(self, config: CacheConfig) -> Cache:
        ident = cache_id(config)
        found = self.caches.get(ident)
        if found is None:
            store: Store
            if config.backend == "memory":
                store = MemoryStore(config.max_entries, config.max_bytes)
                name = "memory"
            else:
                store = RedisStore(config.backend, config.backend_timeout, config.key_prefix)
                name = redact(config.backend)
            found = self.caches[ident] = Cache(name, store)
        return found

    async def close(self) -> None:
        caches = list(self.caches.values())
        self.caches.clear()
        for cache in caches:
            try:
                await cache.store.close()
            except Exception as exc:  # closing must not fail the gateway's shutdown
                log.warning("cache store close failed", plugin=PLUGIN, backend=cache.name,
                            error=f"{type(exc).__name__}: {exc}")


async def purge_caches(caches: Sequence[Cache], prefix: str) -> int:
    """Purge ``prefix`` from every cache; raise BackendError after trying them all."""
    removed = 0
    errors: list[str] = []
    for cache in caches:
        try:
            removed += await cache.store.purge(prefix)
        except BackendError as error:
            cache.failed(error, "purge")
            errors.append(f"{cache.name}: {error}")
        else:
            cache.ok()
    if errors:
        raise BackendError("; ".join(errors))
    return removed


__all__ = [
    "BackendError",
    "Cache",
    "MemoryStore",
    "RedisStore",
    "Registry",
    "Store",
    "metrics",
    "purge_caches",
]
