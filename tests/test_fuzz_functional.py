"""Fuzzed raw HTTP/1.1 against a real ``pygate serve`` (PRODUCT.md section 4, items 5 and 6).

Hypothesis generates connections' worth of bytes (``tests/fuzz/``):
mutated request lines, headers and framing, pipelined requests, Bearer tokens
with arbitrary bytes on a ``jwt`` route, WebSocket handshakes with garbage,
bodies cut short before a half-close or an abrupt close. They go over raw
sockets to a gateway subprocess in front of a loopback aiohttp upstream. After
every 100 requests and at the end, the fuzzer checks that no response was a
500, the gateway logged no traceback (and no access line with a 5xx status),
every error the gateway made is a problem document, no response names the
upstream's address, every request the upstream received came back to its
client (unless that client ended the connection first), and a plain GET still
gets 200.

The seed corpus (``tests/fuzz/corpus.py``: the shortest exchange of each failure
class found so far) goes first, then the generated exchanges; the run is
derandomized (the same exchanges every time). ``PYGATE_FUZZ_EXAMPLES`` sets the
number of generated exchanges (default 2,000: about 2,800 requests, 20-25 s);
``make fuzz`` runs the same fuzzer far longer with a fresh seed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import GatewayFactory
from tests.fuzz import Fuzzer, FuzzUpstream, drive, gateway_config

EXAMPLES = int(os.environ.get("PYGATE_FUZZ_EXAMPLES", "2000"))


@pytest.fixture
async def fuzz_upstream() -> AsyncIterator[FuzzUpstream]:
    """The counting upstream; requested before ``gateway_process``, so it stops after it."""
    upstream = await FuzzUpstream().start()
    yield upstream
    await upstream.close()


async def test_fuzzed_requests_get_no_500_and_no_request_is_lost(
        fuzz_upstream: FuzzUpstream, gateway_process: GatewayFactory, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    # The upstream's complaints about what it is sent are not the gateway's log (the
    # checks see their effect on the responses); keep them out of the report.
    caplog.set_level(logging.CRITICAL, logger="aiohttp")
    access_log = tmp_path / "access.log"
    gw = await gateway_process(gateway_config(fuzz_upstream.port, access_log))
    fuzzer = Fuzzer(gw.port, fuzz_upstream.port, fuzz_upstream.seen, gw.stderr_path,
                    access_log, timeout=0.5, concurrency=16)
    started = time.monotonic()
    try:
        await asyncio.to_thread(drive, fuzzer, EXAMPLES, check_every=100)
    finally:
        fuzzer.close()
    elapsed = time.monotonic() - started
    summary = f"{fuzzer.summary()}\n{elapsed:.1f} s"
    if fuzzer.failures:
        pytest.fail(f"{len(fuzzer.failures)} distinct failure classes, each with the shortest "
                    f"bytes that caused it:\n\n{fuzzer.report()}\n\n{summary}", pytrace=False)
    # The run reached what it is meant to reach: the upstream, the jwt route with valid
    # and invalid tokens, and WebSocket upgrades.
    assert fuzzer.requests_sent >= EXAMPLES, summary
    assert len(fuzz_upstream.seen) >= fuzzer.requests_sent // 5, summary
    assert fuzzer.tags_forwarded["bearer-valid"] > 0, summary
    assert fuzzer.statuses[401] > 0 and fuzzer.statuses[101] > 0, summary
