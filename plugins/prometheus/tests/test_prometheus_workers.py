"""Several workers: ``pygate serve --workers 2`` counts every request once in the files
of ``PROMETHEUS_MULTIPROC_DIR`` that a scrape sums, whether the variable is set from
outside or by the supervisor, and the admin listener's ``/metrics`` shows the sum."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pygate_prometheus import multiproc
from pygate_prometheus.exposition import exposition

from pygate.testing import free_port, stop_serve, wait_listening

pytest_plugins = ["pygate.testing"]

CONFIG = """\
[gateway]
listen = "127.0.0.1:0"
workers = 2

[plugins.prometheus]

[plugins.rate-limit]
limit = 1000000
window = "1m"

[[routes]]
name = "spread"
path = "/"
upstream = "{upstream}"
"""


def requests_counted(directory: Path, route: str) -> float:
    text = exposition(None, str(directory)).decode()
    return sum(sample.value for family in text_string_to_metric_families(text)
               for sample in family.samples
               if sample.name == "pygate_requests_total" and sample.labels["route"] == route)


def counter(directory: Path, name: str, **labels: str) -> float:
    text = exposition(None, str(directory)).decode()
    return sum(sample.value for family in text_string_to_metric_families(text)
               for sample in family.samples
               if sample.name == name and labels.items() <= sample.labels.items())


def pids_with_files(directory: Path) -> set[int]:
    return {int(m.group(1)) for f in directory.iterdir()
            if (m := re.search(r"_(\d+)\.db$", f.name))}


def serve_workers(config: Path, port: int, log: Path,
                  env: dict[str, str]) -> subprocess.Popen[bytes]:
    with log.open("wb") as stderr:
        return subprocess.Popen(
            [sys.executable, "-m", "pygate", "serve", "-c", str(config),
             "--listen", f"127.0.0.1:{port}"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr, env=env)


def stop_and_clean(proc: subprocess.Popen[bytes], log: Path,
                   prepared: tuple[str, bool] | None = None) -> str:
    """Stop ``pygate serve``; remove the directory :func:`multiproc.prepare` made; its log."""
    stop_serve(proc)
    if prepared is not None:
        multiproc.remove(*prepared)
        assert not os.path.exists(prepared[0])
    return log.read_text()


async def test_two_workers_count_into_one_total(tmp_path: Path, fake_upstream) -> None:
    upstream = await fake_upstream()
    files = tmp_path / "metrics"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYGATE_")}
    env.pop(multiproc.ENV, None)
    path, made = multiproc.prepare(env)  # what the supervisor does before it forks
    assert made and env[multiproc.ENV] == path
    env[multiproc.ENV] = str(files)  # the test reads this one
    files.mkdir()
    config = tmp_path / "pygate.toml"
    config.write_text(CONFIG.replace("{upstream}", upstream.url))
    port = free_port()
    log = tmp_path / "serve.log"
    proc = serve_workers(config, port, log, env)
    try:
        await asyncio.to_thread(wait_listening, proc, port, log)
        sent = 60
        for _ in range(sent):  # a new connection each: the kernel spreads them over both
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)
                                             ) as session, \
                    session.get(f"http://127.0.0.1:{port}/x") as response:
                assert response.status == 200
        for _ in range(100):
            if requests_counted(files, "spread") >= sent and counter(
                    files, "pygate_rate_limit_decisions_total", decision="allowed") >= sent:
                break
            await asyncio.sleep(0.1)
        assert requests_counted(files, "spread") == sent
        # the rate-limit plugin's counters reach the files within a second or so
        assert counter(files, "pygate_rate_limit_decisions_total", decision="allowed") == sent
        workers = pids_with_files(files)
        assert len(workers) == 2, workers  # each worker wrote its own files
        # a worker killed and replaced: its counts stay in the total
        victim = sorted(workers)[0]
        os.kill(victim, signal.SIGKILL)
        multiproc.worker_exited(victim, env)  # what the supervisor does when it reaps one
        assert not list(files.glob(f"gauge_live*_{victim}.db"))
        assert requests_counted(files, "spread") == sent
    finally:
        output = await asyncio.to_thread(stop_and_clean, proc, log, (path, made))
    assert "Traceback" not in output


ADMIN_CONFIG = """\
[gateway]
listen = "127.0.0.1:0"
workers = 2

[admin]
listen = "127.0.0.1:{admin_port}"
token = "metrics-token"

[plugins.prometheus]

[[routes]]
name = "summed"
path = "/"
upstream = "{upstream}"
"""


def scrape_admin(port: int) -> dict[str, float]:
    """``/metrics`` of the admin listener: ``{sample name + labels: value}``."""
    import urllib.request

    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics",
                                     headers={"Authorization": "Bearer metrics-token"})
    with urllib.request.urlopen(request, timeout=5) as answer:
        text = answer.read().decode()
    return {sample.name + str(sorted(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


async def test_the_admin_listener_sums_the_workers(tmp_path: Path, fake_upstream) -> None:
    """``pygate serve --workers 2`` with ``[admin]``: the supervisor sets up the shared
    files itself, and ``/metrics`` (served by one worker) counts every worker's requests."""
    upstream = await fake_upstream()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PYGATE_") and k != multiproc.ENV}
    admin_port = free_port()
    config = tmp_path / "pygate.toml"
    config.write_text(ADMIN_CONFIG.replace("{upstream}", upstream.url)
                      .replace("{admin_port}", str(admin_port)))
    port = free_port()
    log = tmp_path / "serve.log"
    proc = serve_workers(config, port, log, env)
    key = "pygate_requests_total" + str(sorted(
        {"route": "summed", "method": "GET", "status": "200"}.items()))
    try:
        await asyncio.to_thread(wait_listening, proc, port, log)
        await asyncio.to_thread(wait_listening, proc, admin_port, log)
        sent = 40
        for _ in range(sent):  # a new connection each: the kernel spreads them over both
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)
                                             ) as session, \
                    session.get(f"http://127.0.0.1:{port}/x") as response:
                assert response.status == 200
        samples: dict[str, float] = {}
        for _ in range(60):  # each worker copies its totals to the files every second
            samples = await asyncio.to_thread(scrape_admin, admin_port)
            if samples.get(key) == sent:
                break
            await asyncio.sleep(0.1)
        assert samples.get(key) == sent
        assert "pygate_requests_in_flight[]" in samples
        assert samples["pygate_config_generation[]"] == 1
    finally:
        output = await asyncio.to_thread(stop_and_clean, proc, log)
    assert "Traceback" not in output


def test_prepare_keeps_an_operators_directory_and_empties_it(tmp_path: Path) -> None:
    given = tmp_path / "given"
    given.mkdir()
    (given / "counter_123.db").write_bytes(b"old")
    (given / "notes.txt").write_text("kept")
    env = {multiproc.ENV: str(given)}
    path, made = multiproc.prepare(env)
    assert (path, made) == (str(given), False)
    assert sorted(p.name for p in given.iterdir()) == ["notes.txt"]
    multiproc.remove(path, made)
    assert given.is_dir()


def test_worker_exited_removes_only_that_workers_live_gauges(tmp_path: Path) -> None:
    for name in ("gauge_livesum_11.db", "gauge_livesum_12.db", "counter_11.db",
                 "histogram_11.db"):
        (tmp_path / name).write_bytes(b"")
    multiproc.worker_exited(11, {multiproc.ENV: str(tmp_path)})
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "counter_11.db", "gauge_livesum_12.db", "histogram_11.db"]
    multiproc.worker_exited(11, {})  # not in multiprocess mode: nothing to do


@pytest.fixture(autouse=True)
def _no_leftover_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(multiproc.ENV, raising=False)
