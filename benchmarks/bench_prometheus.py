"""Prometheus on vs off: a proxied GET through pygate with only the prometheus plugin.

Measures, with the same wrk command, in interleaved rounds:

- ``pygate``: no plugins;
- ``pygate prometheus``: ``[plugins.prometheus]``, the values in the process's
  memory (one process: what ``pygate serve`` does without ``--workers``);
- ``pygate prometheus files``: the same with ``PROMETHEUS_MULTIPROC_DIR`` set,
  so every value goes to the memory-mapped files that ``--workers N`` sums (one
  process, so that only the storage differs).

The plugin counts each request in its ``log`` hook, after the response has gone;
the numbers to watch are the ratios to ``pygate`` without the plugin, and the
gateway's CPU time per request (user + system time of the process over all its
runs, divided by the requests wrk completed), which the other load of a shared
machine moves much less than requests/s. After the rounds, the requests counted
in the files are checked against those wrk completed, and the cost of one
``Metrics.observe`` call is timed alone in a fresh process for each storage.

    .venv/bin/python benchmarks/bench_prometheus.py [--duration 10] [--rounds 3] [--write-readme]
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
from pathlib import Path

from common import (
    BenchError,
    Contender,
    Cpus,
    Result,
    WrkOptions,
    WrkResult,
    ensure_tools,
    machine_notes,
    markdown_table,
    measure,
    nginx_upstream,
    pygate_contender,
    ratio_table,
    workspace,
    wrk_main,
)

SECTION = "prometheus"
BARE = "pygate"
MEMORY = "pygate prometheus"
FILES = "pygate prometheus files"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

CONFIG = """\
[gateway]
listen = "127.0.0.1:{port}"

[upstreams.bench]
targets = ["UPSTREAM"]
PLUGINS
[[routes]]
name = "bench"
path = "/"
upstream = "bench"
"""

PROMETHEUS = """
[plugins.prometheus]
"""

# Times Metrics.observe alone (the whole per-request work of the log hook), in a fresh
# process so that prometheus-client picks its storage from the environment at import.
OBSERVE_TIMER = """\
import timeit
from pygate_prometheus.metrics import process_metrics
metrics = process_metrics()
args = ("bench", "GET", 200, 0.001234, "bench", "http://127.0.0.1:8000", 0.001)
metrics.observe(*args)
runs = timeit.repeat(lambda: metrics.observe(*args), number=100_000, repeat=5)
print(min(runs) / 100_000 * 1e6)
"""


def contenders(upstream: str, workdir: Path, files: Path) -> list[Contender]:
    found: list[Contender] = []
    for name, plugins, note in ((BARE, "", "no plugins"),
                                (MEMORY, PROMETHEUS, "prometheus, values in memory"),
                                (FILES, PROMETHEUS, f"prometheus, {MULTIPROC_ENV} files")):
        config = CONFIG.replace("UPSTREAM", upstream.rstrip("/")).replace("PLUGINS", plugins)
        contender = pygate_contender(workdir, config, name, note)
        if contender is None:
            raise BenchError("no pygate executable beside this Python or on PATH")
        env = {MULTIPROC_ENV: str(files)} if name == FILES else {}
        found.append(Contender(contender.name, contender.url, contender.command,
                               note=contender.note, env=env))
    return found


def counted_in_files(files: Path) -> float:
    """``pygate_requests_total`` summed over the multiprocess files (every status)."""
    from prometheus_client.multiprocess import MultiProcessCollector

    total = 0.0
    for metric in MultiProcessCollector(None, str(files)).collect():
        if metric.name == "pygate_requests":
            total += sum(s.value for s in metric.samples if s.name == "pygate_requests_total")
    return total


def observe_cost(files: Path | None) -> float:
    """Microseconds per ``Metrics.observe`` call, in memory or (``files``) in the files."""
    env = {"PATH": "/usr/bin:/bin"}
    if files is not None:
        files.mkdir(exist_ok=True)
        env[MULTIPROC_ENV] = str(files)
    done = subprocess.run([sys.executable, "-c", OBSERVE_TIMER], capture_output=True,
                          text=True, env=env, timeout=120, check=False)
    if done.returncode != 0:
        raise BenchError(f"timing Metrics.observe failed:\n{done.stderr}")
    return float(done.stdout.strip())


def run(options: WrkOptions) -> tuple[list[Result], str]:
    ensure_tools()
    cpus = Cpus.pick()
    load_before = os.getloadavg()
    with workspace("pygate-bench-prometheus-") as workdir:
        files = workdir / "metrics"
        files.mkdir()
        with nginx_upstream(workdir, cpus.load) as upstream:
            results = measure(contenders(upstream, workdir, files), options, cpus, workdir,
                              watch=True)
        counted = counted_in_files(files)
        memory_us = observe_cost(None)
        files_us = observe_cost(workdir / "observe-files")
    load_after = os.getloadavg()
    in_files = next(r for r in results if r.name == FILES)
    runs_done = runs_of(in_files)
    completed = sum(r.requests for r in runs_done)
    # wrk leaves up to one request per connection unfinished at the end of each run (the
    # gateway answers and counts it), and the start-up check sends one more.
    slack = len(runs_done) * options.connections + 1
    verdict = "ok" if completed <= counted <= completed + slack else "MISMATCH"
    if verdict != "ok":
        in_files.checks.append(
            f"counted {counted:,.0f} requests in the files, wrk completed {completed:,}")
    pairs = [(f"{r.name} / {BARE}", r.name, BARE) for r in results if r.name != BARE]
    pairs.append((f"{FILES} / {MEMORY}", FILES, MEMORY))
    notes = (f"{machine_notes(options, cpus)} `{FILES}`: the files counted "
             f"{counted:,.0f} requests, wrk completed {completed:,} ({verdict}: up to "
             f"{slack} more are the requests wrk left unfinished at the end of its runs, and "
             f"the start-up check). One `Metrics.observe` (the log hook's whole work: adding "
             f"to the running totals that a scrape, or each second a worker, copies into "
             f"prometheus-client) costs {memory_us:.2f} us with the values in memory and "
             f"{files_us:.2f} us with the files (timeit, best of 5 x 100,000). "
             f"Load average {' '.join(f'{x:.2f}' for x in load_before)} at the start, "
             f"{' '.join(f'{x:.2f}' for x in load_after)} at the end.")
    text = "\n\n".join([markdown_table(results, ratio_to=BARE), ratio_table(results, pairs),
                        paired_line(results), cpu_table(results), notes])
    return results, text


def runs_of(result: Result) -> list[WrkResult]:
    """Every wrk run against ``result``'s contender: the warm-up and the rounds."""
    return [*([result.warmup] if result.warmup else []), *result.rounds]


def paired_line(results: list[Result]) -> str:
    """Each round's requests/s against the same round's ``pygate``: the contenders of one
    round run within half a minute of each other, so a ratio per round drifts less with
    the other load of a shared machine than the ratio of the medians."""
    base = next(r for r in results if r.name == BARE)
    parts = []
    for result in results:
        if result.name == BARE:
            continue
        ratios = [r.requests_per_sec / b.requests_per_sec
                  for r, b in zip(result.rounds, base.rounds, strict=True)
                  if b.requests_per_sec]
        if ratios:
            shown = ", ".join(f"{x:.2f}" for x in ratios)
            parts.append(f"{result.name} / {BARE} per round: {shown} "
                         f"(median **{statistics.median(ratios):.2f}x**)")
    return "; ".join(parts) + "."


def cpu_table(results: list[Result]) -> str:
    """The gateway's CPU time per request: what the plugin adds, whatever else the machine
    runs (requests/s moves with the other load of a shared machine; CPU time much less)."""
    per_request: dict[str, float] = {}
    for result in results:
        requests = sum(r.requests for r in runs_of(result))
        if result.usage is not None and requests:
            per_request[result.name] = result.usage.cpu_seconds / requests * 1e6
    base = per_request.get(BARE)
    rows = ["| contender | CPU time per request | vs pygate | added |",
            "| --- | ---: | ---: | ---: |"]
    for name, micros in per_request.items():
        ratio = f"{micros / base:.2f}x" if base else "-"
        added = f"{micros - base:+.1f} us" if base else "-"
        rows.append(f"| {name} | {micros:.1f} us | {ratio} | {added} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    return wrk_main(argv, __doc__ or "", SECTION, run)


if __name__ == "__main__":
    sys.exit(main())
