"""Where lines go: an in-memory buffer that one background thread writes out.

The request side only appends a rendered line to a ``deque`` (thread-safe, no
lock, no system call), so neither a slow disk nor a blocked stdout pipe can
delay a response or the event loop. The writer thread wakes every
``flush_interval`` (or sooner, when many lines are waiting), takes every
waiting line, and writes them with one ``write`` call followed by a flush.

The buffer is bounded (``buffer`` lines): when the destination cannot keep up,
new lines are dropped and counted, and the writer logs how many once it
catches up, rather than letting memory grow without end. :meth:`Sink.close`
writes what is left; the plugin's ``shutdown`` hook calls it.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import deque
from typing import Protocol, TextIO

import structlog

PLUGIN = "logging"
WARN_EVERY = 10.0  # seconds between two warnings about one destination

log = structlog.get_logger("pygate")


class Target(Protocol):
    """A destination that takes whole batches of lines."""

    label: str

    def write(self, text: str) -> None:
        """Write all of ``text`` and flush it; raise ``OSError`` when that fails."""
        ...

    def close(self) -> None: ...


class FileTarget:
    """A file opened for appending (``O_APPEND``): several workers may share it.

    Each batch is one ``write`` system call where the kernel allows, so lines of
    different workers interleave only as whole batches of whole lines.
    """

    def __init__(self, path: str) -> None:
        self.label = path
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
        self.fd = os.open(path, flags, 0o644)

    def write(self, text: str) -> None:
        data = memoryview(text.encode("utf-8", "backslashreplace"))
        while data:
            written = os.write(self.fd, data)
            data = data[written:]

    def close(self) -> None:
        os.close(self.fd)


class StreamTarget:
    """A text stream the plugin does not own (standard output): flushed, never closed."""

    def __init__(self, stream: TextIO, label: str = "stdout") -> None:
        self.label = label
        self.stream = stream

    def write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()

    def close(self) -> None:
        try:
            self.stream.flush()
        except (OSError, ValueError):
            pass


def open_target(path: str | None) -> Target:
    """The file at ``path``, or standard output as it is now."""
    if path is not None:
        return FileTarget(path)
    return StreamTarget(sys.stdout)


class Sink:
    """Buffered lines for one destination, written by one daemon thread."""

    def __init__(self, target: Target, *, interval: float = 0.2, capacity: int = 50_000) -> None:
        self.target = target
        self.interval = interval
        self.capacity = capacity
        self.wake_at = max(1, min(capacity // 2, 4096))
        self.written = 0
        self.dropped = 0  # lines refused because the buffer was full
        self.failed = 0  # lines lost because the destination raised
        self._lines: deque[str] = deque()
        self._wake = threading.Event()
        self._closing = False
        self._reported_drops = 0
        self._last_warning = -WARN_EVERY
        self._thread = threading.Thread(target=self._run, name=f"pygate-logging {target.label}",
                                         daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        return len(self._lines)

    def put(self, line: str) -> None:
        """Queue one line (from the event loop); never blocks, never raises."""
        lines = self._lines
        waiting = len(lines)
        if waiting >= self.capacity:
            self.dropped += 1
            return
        lines.append(line)
        if waiting + 1 == self.wake_at:
            self._wake.set()

    def close(self, timeout: float = 5.0) -> bool:
        """Write every queued line, stop the thread and close the destination.

        Blocking: run it in a thread from async code. ``False`` when the destination
        did not take the lines within ``timeout`` seconds (they are then lost).
        """
        self._closing = True
        self._wake.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("access log not flushed", plugin=PLUGIN, destination=self.target.label,
                        pending=len(self._lines), timeout_s=timeout)
            return False
        self._write_pending()  # anything queued while the thread was finishing
        self.target.close()
        return True

    # -- the writer thread --

    def _run(self) -> None:
        while True:
            self._wake.wait(self.interval)
            self._wake.clear()
            closing = self._closing
            self._write_pending()
            if closing:
                return

    def _write_pending(self) -> None:
        lines = self._lines
        count = len(lines)
        if count:
            batch = [lines.popleft() for _ in range(count)]
            batch.append("")
            try:
                self.target.write("\n".join(batch))
            except Exception as exc:  # a full disk or a closed pipe must not stop the thread
                self.failed += count
                self._warn("access log write failed", error=f"{type(exc).__name__}: {exc}",
                           lost=count)
            else:
                self.written += count
        dropped = self.dropped
        if dropped != self._reported_drops:
            if self._warn("access log lines dropped: the destination is too slow",
                          dropped=dropped - self._reported_drops, buffer=self.capacity):
                self._reported_drops = dropped

    def _warn(self, event: str, **fields: object) -> bool:
        now = time.monotonic()
        if now - self._last_warning < WARN_EVERY:
            return False
        self._last_warning = now
        log.warning(event, plugin=PLUGIN, destination=self.target.label, **fields)
        return True
