"""What the supervisor of ``pygate serve --workers N`` does for correct totals.

Each worker counts in its own process; prometheus-client's multiprocess mode
makes every worker keep its values in memory-mapped files of one directory
(``PROMETHEUS_MULTIPROC_DIR``), and a scrape, in whichever process, sums them
(``MultiProcessCollector``). The supervisor's part, in order:

1. :func:`prepare` before the first fork: make a private, empty directory (in
   ``/dev/shm`` where it exists) and set ``PROMETHEUS_MULTIPROC_DIR`` to it (a
   directory the operator set is used, emptied of old ``*.db`` files). The
   workers inherit the variable, and the plugin imports prometheus-client only
   in a worker's ``startup``, after the fork.
2. :func:`worker_exited` for each worker that exits: its "live" gauges
   (requests in flight) leave the sums; its counters and histograms stay, so
   totals do not drop when a worker is replaced.
3. :func:`remove` once every worker has exited: the directory goes (unless the
   operator chose it).

These functions import nothing from prometheus-client and nothing from
pygate; the core may do the same steps itself without importing this plugin.
"""

from __future__ import annotations

import glob
import os
import shutil
import tempfile
from collections.abc import MutableMapping

ENV = "PROMETHEUS_MULTIPROC_DIR"


def prepare(environ: MutableMapping[str, str] | None = None) -> tuple[str, bool]:
    """Make the directory and set the variable; ``(path, made)``. ``made`` is false when
    the operator had set the variable (the directory is then emptied of ``*.db`` files)."""
    env = os.environ if environ is None else environ
    given = env.get(ENV)
    if given:
        os.makedirs(given, exist_ok=True)
        for old in glob.glob(os.path.join(given, "*.db")):
            os.remove(old)
        return given, False
    # mode 0700: this user's only; in memory (tmpfs) where there is one, as the values
    # are written on every request and need no disk
    memory = "/dev/shm"
    base = memory if os.path.isdir(memory) and os.access(memory, os.W_OK) else None
    path = tempfile.mkdtemp(prefix="pygate-metrics-", dir=base)
    env[ENV] = path
    return path, True


def worker_exited(pid: int, environ: MutableMapping[str, str] | None = None) -> None:
    """Take an exited worker's live gauges out of the sums (its ``gauge_live*_PID.db``)."""
    env = os.environ if environ is None else environ
    path = env.get(ENV)
    if not path:
        return
    for live in glob.glob(os.path.join(path, f"gauge_live*_{pid}.db")):
        try:
            os.remove(live)
        except FileNotFoundError:
            pass


def remove(path: str, made: bool) -> None:
    """The directory :func:`prepare` made goes; an operator's is left as it is."""
    if made:
        shutil.rmtree(path, ignore_errors=True)
