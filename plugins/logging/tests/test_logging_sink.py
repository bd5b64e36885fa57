"""The buffered sink: the writer thread, flushing on close, a bounded buffer."""

from __future__ import annotations

import threading
import time

from pygate_logging.sink import FileTarget, Sink


class Memory:
    label = "memory"

    def __init__(self, gate: threading.Event | None = None, fail: bool = False) -> None:
        self.gate = gate
        self.fail = fail
        self.batches: list[str] = []
        self.closed = False

    def write(self, text: str) -> None:
        if self.gate is not None:
            self.gate.wait(10)
        if self.fail:
            raise OSError(28, "No space left on device")
        self.batches.append(text)

    def close(self) -> None:
        self.closed = True


def test_close_writes_every_line_and_closes_the_target():
    target = Memory()
    sink = Sink(target, interval=3600, capacity=100)
    for i in range(10):
        sink.put(f"line {i}")
    assert target.batches == []
    assert sink.close(timeout=5)
    assert "".join(target.batches).splitlines() == [f"line {i}" for i in range(10)]
    assert target.closed and sink.written == 10


def test_the_writer_flushes_every_interval():
    target = Memory()
    sink = Sink(target, interval=0.01, capacity=100)
    sink.put("a")
    deadline = time.monotonic() + 5
    while not target.batches and time.monotonic() < deadline:
        time.sleep(0.005)
    assert target.batches == ["a\n"]
    sink.close()


def test_many_waiting_lines_wake_the_writer_early():
    target = Memory()
    sink = Sink(target, interval=3600, capacity=8)  # wakes at 4 waiting lines
    for i in range(4):
        sink.put(str(i))
    deadline = time.monotonic() + 5
    while not target.batches and time.monotonic() < deadline:
        time.sleep(0.005)
    assert target.batches == ["0\n1\n2\n3\n"]
    sink.close()


def test_a_full_buffer_drops_and_counts_instead_of_blocking():
    gate = threading.Event()
    target = Memory(gate)
    sink = Sink(target, interval=0.001, capacity=5)
    sink.put("first")
    deadline = time.monotonic() + 5
    while sink.pending and time.monotonic() < deadline:  # the writer took it and is stuck
        time.sleep(0.005)
    started = time.monotonic()
    for i in range(100):
        sink.put(str(i))
    assert time.monotonic() - started < 0.5
    assert (sink.pending, sink.dropped) == (5, 95)
    gate.set()
    assert sink.close(timeout=5)
    assert "".join(target.batches).splitlines() == ["first", "0", "1", "2", "3", "4"]


def test_a_failing_destination_does_not_stop_the_writer():
    target = Memory(fail=True)
    sink = Sink(target, interval=3600, capacity=10)
    sink.put("lost")
    assert sink.close(timeout=5)
    assert (sink.failed, sink.written) == (1, 0)


def test_close_gives_up_on_a_stuck_destination():
    gate = threading.Event()
    sink = Sink(Memory(gate), interval=0.001, capacity=10)
    sink.put("x")
    time.sleep(0.05)
    assert not sink.close(timeout=0.05)
    gate.set()


def test_file_target_appends(tmp_path):
    path = tmp_path / "a.log"
    path.write_text("old\n")
    target = FileTarget(str(path))
    target.write("new\n")
    target.close()
    assert path.read_text() == "old\nnew\n"
