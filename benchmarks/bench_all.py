"""Every scenario, in one command and one run: pygate against its peers, and the targets.

    .venv/bin/python benchmarks/bench_all.py --rounds 3 --duration 10 --write-readme

Scenarios, in this order, each in its own interleaved rounds (A B C A B C ...),
each cell the median over the rounds, errors summed and flagged:

1. ``passthrough``: a plain GET at 50 connections: nginx alone, nginx as a
   reverse proxy, pygate, the Express gateway with its checks off, the aiohttp
   proxy (``bench_passthrough.contenders``);
2. ``passthrough-200``: the same at 200 connections;
3. ``checks``: a GET with a JWT, a memory rate limit never reached and identity
   headers: pygate with the jwt, rate-limit and headers plugins, the Express
   gateway and the aiohttp proxy with the same checks, each verified first
   (``bench_plugins.measure_peers``);
4. ``checks-logging``: the same, each also writing a JSON access line per
   request to a file;
5. ``aggregate``: one GET composed from three upstream calls: pygate's
   aggregate route, the same by hand in Express and in aiohttp, nginx answering
   one call; then the same at one connection (``bench_aggregate.measure_both``);
6. ``download`` and 7. ``upload``: 10 MB through each gateway at 8 connections,
   with the peak RSS growth of each gateway process (``bench_streaming``);
8. ``scaling``: pygate ``--workers 1`` against ``--workers 2``, not pinned
   (``bench_passthrough.scaling_contenders``);
9. ``memory``: pygate's memory per idle keep-alive connection and per
   in-flight request, 1,000 of each (``bench_memory.measure``).

Each gateway runs as one process pinned to the gateway CPU; wrk and the
upstreams share the load CPU (but in ``scaling``). Then the targets of
PRODUCT.md section 9 and of the benchmark issue are checked against the
figures (:data:`TARGETS`). ``--write-readme`` replaces each scenario's section
and the targets table in ``benchmarks/README.md``.

Exit status: 0 when every scenario ran clean, 2 when a contender had errors (or
a scenario failed while the others ran), 1 when nothing could run, 130 when
interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import bench_aggregate
import bench_memory
import bench_passthrough
import bench_plugins
import bench_streaming
from common import (
    BenchError,
    Cpus,
    Log,
    Result,
    WrkOptions,
    ensure_tools,
    flag_errors,
    log_stderr,
    machine_notes,
    measure,
    nginx_json_upstream,
    nginx_upstream,
    replace_readme_section,
    terminate_on_sigterm,
    workspace,
)

TARGETS_SECTION = "targets"
MB = 1024 * 1024


@dataclass
class Context:
    options: WrkOptions
    cpus: Cpus
    workdir: Path
    latency_duration: int
    stream_connections: int
    skip_verify: bool
    log: Log = log_stderr
    figures: dict[str, dict[str, float]] = field(default_factory=dict)  # by scenario key


@dataclass
class Outcome:
    """One scenario's results and README section, or why it could not run."""

    key: str
    title: str
    results: list[Result] = field(default_factory=list)
    latency: list[Result] = field(default_factory=list)  # aggregate, one connection
    text: str = ""
    failure: str | None = None
    figures: dict[str, float] = field(default_factory=dict)  # what is not a wrk result

    def find(self, name: str, latency: bool = False) -> Result | None:
        return next((r for r in (self.latency if latency else self.results) if r.name == name),
                    None)


# ---------------------------------------------------------------------------
# Scenarios


def folder(ctx: Context, key: str) -> Path:
    path = ctx.workdir / key
    path.mkdir(exist_ok=True)
    return path


def passthrough(ctx: Context, connections: int) -> tuple[list[Result], list[Result], str]:
    options = replace(ctx.options, connections=connections)
    workdir = folder(ctx, f"passthrough-{connections}")
    with nginx_upstream(workdir, ctx.cpus.load) as upstream:
        contenders = bench_passthrough.contenders(upstream, workdir)
        results = measure(contenders, options, ctx.cpus, workdir, ctx.log)
    return results, [], bench_passthrough.render(results, options, ctx.cpus)


def checks(ctx: Context, logging: bool) -> tuple[list[Result], list[Result], str]:
    workdir = folder(ctx, "checks-logging" if logging else "checks")
    results, text = bench_plugins.measure_peers(ctx.options, ctx.cpus, workdir, logging=logging,
                                                skip_verify=ctx.skip_verify)
    return results, [], text


def aggregate(ctx: Context) -> tuple[list[Result], list[Result], str]:
    workdir = folder(ctx, "aggregate")
    with nginx_json_upstream(workdir, ctx.cpus.load, bench_aggregate.LOCATIONS) as upstream:
        results, latency = bench_aggregate.measure_both(upstream, workdir, ctx.options,
                                                        ctx.cpus, ctx.latency_duration)
    text = bench_aggregate.render(results, latency, machine_notes(ctx.options, ctx.cpus),
                                  ctx.latency_duration)
    return results, latency, text


def streaming(ctx: Context, kind: str) -> tuple[list[Result], list[Result], str]:
    workdir = folder(ctx, kind)
    options = replace(ctx.options, connections=ctx.stream_connections)
    run = bench_streaming.run_download if kind == "download" else bench_streaming.run_upload
    results, transfers = run(options, ctx.cpus, workdir, ctx.log)
    shown = bench_streaming.stream_options(options, kind, workdir)
    return results, [], bench_streaming.render(results, transfers, shown, ctx.cpus)


def scaling(ctx: Context) -> tuple[list[Result], list[Result], str]:
    workdir = folder(ctx, "scaling")
    with nginx_upstream(workdir, ctx.cpus.load) as upstream:
        contenders = bench_passthrough.scaling_contenders(upstream, workdir)
        results = measure(contenders, ctx.options, ctx.cpus, workdir, ctx.log)
    return results, [], bench_passthrough.render_scaling(results, ctx.options, ctx.cpus)


def memory(ctx: Context) -> tuple[list[Result], list[Result], str]:
    connections, hold = bench_memory.CONNECTIONS, bench_memory.HOLD
    figures = asyncio.run(bench_memory.measure(connections, hold))
    ctx.figures["memory"] = figures
    return [], [], bench_memory.render(figures, connections, hold)


Scenario = Callable[[Context], tuple[list[Result], list[Result], str]]

SCENARIOS: list[tuple[str, str, Scenario]] = [
    ("passthrough", "Plain GET, 50 connections", lambda ctx: passthrough(ctx, 50)),
    ("passthrough-200", "Plain GET, 200 connections", lambda ctx: passthrough(ctx, 200)),
    ("checks", "JWT + rate limit + identity headers", lambda ctx: checks(ctx, False)),
    ("checks-logging", "JWT + rate limit + identity headers + JSON access log",
     lambda ctx: checks(ctx, True)),
    ("aggregate", "Aggregation of three services", aggregate),
    ("download", "10 MB download", lambda ctx: streaming(ctx, "download")),
    ("upload", "10 MB upload", lambda ctx: streaming(ctx, "upload")),
    ("scaling", "pygate --workers 1 vs --workers 2", scaling),
    ("memory", "Memory per connection and per request", memory),
]


# ---------------------------------------------------------------------------
# Targets


@dataclass(frozen=True)
class Verdict:
    measured: str
    met: bool | None  # None: not measured
    errors: bool = False


Check = Callable[[dict[str, Outcome]], Verdict]

NOT_MEASURED = Verdict("not measured", None)


def throughput_ratio(key: str, subject: str, peer: str, minimum: float,
                     strict: bool = False) -> Check:
    """requests/s of ``subject`` / ``peer`` in scenario ``key`` must be >= ``minimum``
    (> with ``strict``)."""

    def check(outcomes: dict[str, Outcome]) -> Verdict:
        outcome = outcomes.get(key)
        a = outcome.find(subject) if outcome else None
        b = outcome.find(peer) if outcome else None
        if a is None or b is None:
            return NOT_MEASURED
        ratio = a.requests_per_sec / b.requests_per_sec
        met = ratio > minimum if strict else ratio >= minimum
        return Verdict(f"{ratio:.2f}x ({a.requests_per_sec:,.0f} vs {b.requests_per_sec:,.0f} "
                       "req/s)", met, bool(a.errors or b.errors))

    return check


def p99_not_worse(key: str, subject: str, peer: str) -> Check:
    def check(outcomes: dict[str, Outcome]) -> Verdict:
        outcome = outcomes.get(key)
        a = outcome.find(subject) if outcome else None
        b = outcome.find(peer) if outcome else None
        if a is None or b is None:
            return NOT_MEASURED
        return Verdict(f"{a.p99_ms:.2f} ms vs {b.p99_ms:.2f} ms ({a.p99_ms / b.p99_ms:.2f}x)",
                       a.p99_ms <= b.p99_ms, bool(a.errors or b.errors))

    return check


def added_latency(limit_ms: float) -> Check:
    """pygate's p50 at one connection minus one upstream call's must be < ``limit_ms``."""

    def check(outcomes: dict[str, Outcome]) -> Verdict:
        outcome = outcomes.get("aggregate")
        a = outcome.find(bench_aggregate.PYGATE, latency=True) if outcome else None
        b = outcome.find(bench_aggregate.NGINX, latency=True) if outcome else None
        if a is None or b is None:
            return NOT_MEASURED
        added = a.p50_ms - b.p50_ms
        return Verdict(f"+{added:.2f} ms (p50 {a.p50_ms:.2f} ms vs {b.p50_ms:.2f} ms)",
                       added < limit_ms, bool(a.errors or b.errors))

    return check


def rss_growth(key: str, limit: int) -> Check:
    def check(outcomes: dict[str, Outcome]) -> Verdict:
        outcome = outcomes.get(key)
        a = outcome.find(bench_streaming.PYGATE) if outcome else None
        if a is None or a.usage is None:
            return NOT_MEASURED
        return Verdict(f"{a.usage.growth / MB:.1f} MB", a.usage.growth < limit, bool(a.errors))

    return check


def memory_bounded(limit_kb: float) -> Check:
    def check(outcomes: dict[str, Outcome]) -> Verdict:
        outcome = outcomes.get("memory")
        figures = outcome.figures if outcome else {}
        if not figures:
            return NOT_MEASURED
        idle, busy = figures["idle_kb"], figures["in_flight_kb"]
        return Verdict(f"{idle:.1f} KB per idle connection, {busy:.1f} KB per in-flight "
                       f"request ({bench_memory.CONNECTIONS:,} of each)",
                       idle < limit_kb and busy < limit_kb)

    return check


PT, AGG, PL = bench_passthrough, bench_aggregate, bench_plugins

TARGETS: list[tuple[str, str, str, Check]] = [
    # (what, target, source, check)
    ("Plain GET, 50 connections: pygate / aiohttp proxy", ">= 1.0x", "issue",
     throughput_ratio("passthrough", PT.PYGATE, PT.PEER, 1.0)),
    ("Plain GET, 50 connections: pygate / Express gateway (checks off)", ">= 1.5x", "issue",
     throughput_ratio("passthrough", PT.PYGATE, PT.EXPRESS, 1.5)),
    ("Plain GET, 200 connections: pygate / aiohttp proxy", ">= 1.0x", "issue",
     throughput_ratio("passthrough-200", PT.PYGATE, PT.PEER, 1.0)),
    ("Plain GET, 200 connections: pygate / Express gateway (checks off)", ">= 1.5x", "issue",
     throughput_ratio("passthrough-200", PT.PYGATE, PT.EXPRESS, 1.5)),
    ("Plain GET, 200 connections: pygate p99 vs aiohttp proxy p99", "no worse", "issue",
     p99_not_worse("passthrough-200", PT.PYGATE, PT.PEER)),
    ("jwt + rate limit + headers: pygate / Express gateway", ">= 1.5x", "issue",
     throughput_ratio("checks", PL.PYGATE, PL.EXPRESS, 1.5)),
    ("jwt + rate limit + headers: pygate / aiohttp proxy with checks", ">= 1.2x", "issue",
     throughput_ratio("checks", PL.PYGATE, PL.CHECKS, 1.2)),
    ("... + logging: pygate / Express gateway (logging too)", "> 1.0x (faster)",
     "PRODUCT.md 9", throughput_ratio("checks-logging", PL.PYGATE_LOG, PL.EXPRESS_LOG, 1.0,
                                      strict=True)),
    ("... + logging: pygate / aiohttp proxy with checks (logging too)",
     ">= 1.0x (at least as fast)", "PRODUCT.md 9",
     throughput_ratio("checks-logging", PL.PYGATE_LOG, PL.CHECKS_LOG, 1.0)),
    ("Aggregation: pygate / Express", ">= 1.0x", "issue",
     throughput_ratio("aggregate", AGG.PYGATE, AGG.EXPRESS, 1.0)),
    ("Aggregation: pygate / aiohttp", ">= 1.3x", "issue",
     throughput_ratio("aggregate", AGG.PYGATE, AGG.AIOHTTP, 1.3)),
    ("Aggregation, one connection: pygate's p50 minus one upstream call's",
     "well under 1 ms (taken as < 0.5 ms)", "PRODUCT.md 9", added_latency(0.5)),
    ("10 MB download, 8 connections: pygate's peak RSS growth", "< 20 MB", "issue",
     rss_growth("download", 20 * MB)),
    ("10 MB upload, 8 connections: pygate's peak RSS growth", "< 20 MB", "issue",
     rss_growth("upload", 20 * MB)),
    ("Memory per idle connection and per in-flight request",
     "bounded and measured (taken as < 64 KB each)", "PRODUCT.md 9", memory_bounded(64)),
]


def targets_table(outcomes: dict[str, Outcome], notes: str) -> str:
    rows = ["| target | wanted | measured | met | from |", "| --- | --- | ---: | --- | --- |"]
    for what, wanted, source, check in TARGETS:
        verdict = check(outcomes)
        if verdict.met is None:
            met = "not measured"
        else:
            met = "met" if verdict.met else "**not met**"
        if verdict.errors:
            met += " (**errors in the run**)"
        rows.append(f"| {what} | {wanted} | {verdict.measured} | {met} | {source} |")
    failed = {o.key: o.failure for o in outcomes.values() if o.failure}
    parts = ["\n".join(rows)]
    if failed:
        parts.append("Scenarios that could not run: "
                     + "; ".join(f"{key} ({why.splitlines()[0]})" for key, why in failed.items())
                     + ".")
    parts.append(notes)
    return "\n\n".join(parts)


# ---------------------------------------------------------------------------
# The run


def load_average() -> float:
    return os.getloadavg()[0]


def run(selected: Sequence[str], ctx: Context) -> dict[str, Outcome]:
    outcomes: dict[str, Outcome] = {}
    for key, title, scenario in SCENARIOS:
        if key not in selected:
            continue
        ctx.log(f"=== {key}: {title} (load average {load_average():.2f})")
        outcome = Outcome(key, title)
        started = time.monotonic()
        try:
            outcome.results, outcome.latency, outcome.text = scenario(ctx)
            outcome.figures = ctx.figures.get(key, {})
        except BenchError as exc:
            outcome.failure = str(exc)
            ctx.log(f"error in {key}: {exc}")
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # one broken scenario must not lose the others
            outcome.failure = f"{type(exc).__name__}: {exc}"
            ctx.log(f"error in {key}:\n{traceback.format_exc()}")
        if outcome.failure:
            outcome.text = f"**Not measured in this run**: {outcome.failure}"
        ctx.log(f"=== {key} done in {time.monotonic() - started:.0f}s")
        outcomes[key] = outcome
    return outcomes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    WrkOptions.add_arguments(parser)
    keys = [key for key, _, _ in SCENARIOS]
    parser.add_argument("--only", metavar="SCENARIO[,SCENARIO]",
                        help=f"run these scenarios only, of: {', '.join(keys)}")
    parser.add_argument("--latency-duration", type=int, default=5, metavar="SECONDS",
                        help="duration of the aggregation's one-connection runs; 0 skips them")
    parser.add_argument("--stream-connections", type=int, default=bench_streaming.CONNECTIONS,
                        help=f"wrk -c for the 10 MB scenarios [{bench_streaming.CONNECTIONS}]")
    parser.add_argument("--skip-verify", action="store_true",
                        help="do not check the gateways with checks against an echo upstream")
    parser.add_argument("--write-readme", action="store_true",
                        help="replace each scenario's section and the targets table in "
                             "benchmarks/README.md")
    args = parser.parse_args(argv)
    selected = keys if not args.only else [k.strip() for k in args.only.split(",")]
    unknown = [k for k in selected if k not in keys]
    if unknown:
        parser.error(f"unknown scenario {', '.join(unknown)}; choose from {', '.join(keys)}")
    started = time.monotonic()
    load_at_start = load_average()
    if load_at_start > 1.0:
        log_stderr(f"WARNING: load average {load_at_start:.2f} at the start: something else "
                   "is running, and the figures will show it")
    try:
        options = WrkOptions.from_args(args)
        with terminate_on_sigterm():
            ensure_tools()
            cpus = Cpus.pick()
            with workspace("pygate-bench-all-") as workdir:
                ctx = Context(options, cpus, workdir, args.latency_duration,
                              args.stream_connections, args.skip_verify)
                outcomes = run(selected, ctx)
            notes = (f"{time.strftime('%Y-%m-%d')}: every figure from one run of "
                     f"`bench_all.py --rounds {options.rounds} --duration {options.duration}`, "
                     "the same run as the scenario tables "
                     f"({(time.monotonic() - started) / 60:.0f} minutes; load average "
                     f"{load_at_start:.2f} at the start). Ratios are of medians over the "
                     "rounds; requests/s higher is better. A target is met or not on this one "
                     "run: with three rounds, ratios within a few percent of the line can go "
                     "either way on another run.")
    except BenchError as exc:
        log_stderr(f"error: {exc}")
        return 1
    except KeyboardInterrupt:
        log_stderr("interrupted; servers stopped")
        return 130

    had_errors = False
    for outcome in outcomes.values():
        had_errors |= flag_errors(outcome.results) | flag_errors(outcome.latency)
        print(f"## {outcome.title}\n\n{outcome.text}\n")
    targets = targets_table(outcomes, notes)
    print(f"## Targets\n\n{targets}\n")
    if args.write_readme:
        for outcome in outcomes.values():
            replace_readme_section(outcome.key, outcome.text)
        replace_readme_section(TARGETS_SECTION, targets)
        log_stderr("wrote the tables to benchmarks/README.md")
    failed = any(o.failure for o in outcomes.values())
    if failed and all(o.failure for o in outcomes.values()):
        return 1
    return 2 if had_errors or failed else 0


if __name__ == "__main__":
    sys.exit(main())
