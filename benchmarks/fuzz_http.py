"""A long run of the HTTP/1.1 fuzzer against a real ``pygate serve`` (``make fuzz``).

The same exchanges and checks as ``tests/test_fuzz_functional.py`` (both come
from ``tests/fuzz/``), but many more of them and with a fresh seed each
run: a gateway subprocess in front of a loopback aiohttp upstream, raw sockets,
the seed corpus (``tests/fuzz/corpus.py``) first, every check after each
``--check-every`` requests. At the end it prints what
was sent and seen, then every distinct failure class with the bytes that cause
it, shrunk to the simplest exchange that still fails the same way, as a Python
bytes literal ready to paste into a reproduction::

    .venv/bin/python benchmarks/fuzz_http.py --requests 100000
    .venv/bin/python benchmarks/fuzz_http.py --requests 5000 --seed 1234 --exclude body-cut-short

Exit status: 0 when nothing failed, 1 when a failure was found, 2 when the
gateway could not be started, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pygate.testing import free_port, serve_process, stop_serve  # noqa: E402
from tests.fuzz import Fuzzer, FuzzUpstream, drive, gateway_config, reproduce  # noqa: E402
from tests.fuzz.corpus import CORPUS  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=100_000,
                        help="about this many requests in all (default 100000)")
    parser.add_argument("--seed", type=int, default=None,
                        help="hypothesis seed (default: a fresh one, printed)")
    parser.add_argument("--check-every", type=int, default=200,
                        help="requests between two checks (default 200)")
    parser.add_argument("--concurrency", type=int, default=16,
                        help="connections in flight at once (default 16)")
    parser.add_argument("--timeout", type=float, default=0.5,
                        help="seconds to read each connection's answer (default 0.5)")
    parser.add_argument("--exclude", default="",
                        help="comma-separated exchange tags not to send (e.g. body-cut-short, "
                             "bearer-non-ascii, ws-key-garbage), to look past known failures")
    parser.add_argument("--no-minimize", action="store_true",
                        help="report the shortest failing exchange as sent, unshrunk")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary folder (config, gateway log, access log)")
    return parser.parse_args(argv)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def run(args: argparse.Namespace, workdir: Path) -> int:
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    upstream = await FuzzUpstream().start()
    config = workdir / "pygate.toml"
    access_log = workdir / "access.log"
    gateway_log = workdir / "gateway.log"
    config.write_text(gateway_config(upstream.port, access_log))
    port = free_port()
    try:
        proc = await serve_process(config, port, gateway_log, "--log-level", "info")
    except AssertionError as exc:
        log(f"pygate serve did not start:\n{exc}")
        await upstream.close()
        return 2
    kept = f"; files in {workdir}" if args.keep else ""
    log(f"fuzzing pygate on 127.0.0.1:{port} (upstream 127.0.0.1:{upstream.port}), "
        f"about {args.requests} requests, seed {seed}{kept}")
    fuzzer = Fuzzer(port, upstream.port, upstream.seen, gateway_log, access_log,
                    timeout=args.timeout, concurrency=args.concurrency,
                    exclude=[t for t in args.exclude.split(",") if t])
    stopped = threading.Event()
    started = time.monotonic()

    def fuzz() -> None:
        progress = 0
        while fuzzer.requests_sent < args.requests and not stopped.is_set():
            left = args.requests - fuzzer.requests_sent
            drive(fuzzer, max(1, min(left, 2000)), check_every=args.check_every,
                  seed=seed + fuzzer.requests_sent, stop=stopped.is_set,
                  corpus=() if fuzzer.records else CORPUS)
            if fuzzer.requests_sent >= progress + 10_000 or fuzzer.requests_sent >= args.requests:
                progress = fuzzer.requests_sent
                log(f"  {progress} requests, {time.monotonic() - started:.0f} s, "
                    f"{len(fuzzer.failures)} failure classes")

    try:
        await asyncio.to_thread(fuzz)
        elapsed = time.monotonic() - started
        print(f"seed {seed}; {elapsed:.1f} s\n{fuzzer.summary()}")
        if not fuzzer.failures:
            print("no failures")
            return 0
        found = dict(fuzzer.failures)  # shrinking checks again, which may add to them
        print(f"\n{len(found)} distinct failure classes; for each, the shortest exchange "
              "that caused it, as sent:\n")
        for (kind, signature), failures in sorted(found.items()):
            count = f"{len(failures)}{'+' if len(failures) >= 20 else ''}"
            shortest = min(failures, key=lambda f: (not f.sent, len(f.sent)))
            print(f"== {kind} -- {signature} ({count} seen)\n{shortest.describe(4000)}\n",
                  flush=True)
        if args.no_minimize:
            return 1
        print("reproductions (the exchange shrunk while it still fails the same way, sent "
              "alone to the same gateway; where it only fails after another exchange, that "
              "one is shown first):\n")
        for key, failures in sorted(found.items()):
            shortest = min(failures, key=lambda f: (f.exchange is None, len(f.sent)))
            repro = await asyncio.to_thread(reproduce, fuzzer, shortest)
            print(f"== {key[0]} -- {key[1]}")
            if repro is None:
                print("   no exchange reproduces it alone\n", flush=True)
                continue
            if repro.before:
                print(f"   first send: {repro.before!r}")
            print(f"   send: {repro.sent!r}\n   then {repro.exchange.ending}\n", flush=True)
        return 1
    except (KeyboardInterrupt, asyncio.CancelledError):
        stopped.set()
        return 130
    finally:
        stopped.set()
        fuzzer.close()
        await asyncio.to_thread(stop_serve, proc)
        await upstream.close()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # The upstream runs in this process: its complaints about what the gateway forwards
    # are not the gateway's log, and the checks see their effect on the responses.
    logging.getLogger("aiohttp").setLevel(logging.CRITICAL)
    workdir = Path(tempfile.mkdtemp(prefix="pygate-fuzz-"))
    try:
        return asyncio.run(run(args, workdir))
    except KeyboardInterrupt:
        return 130
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
