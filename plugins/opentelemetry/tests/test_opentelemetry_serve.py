"""End to end: the installed plugin in a real ``pygate serve`` process with two workers,
a real upstream, a real OTLP/HTTP receiver and the logging plugin's access log."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import aiohttp
from otlp_collector import CLIENT, SERVER, Collector

from pygate.testing import free_port, serve_process, stop_serve

pytest_plugins = ["pygate.testing"]

TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-0[13]$")


def test_pygate_plugins_lists_it() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYGATE_")}
    done = subprocess.run([sys.executable, "-m", "pygate", "plugins"], capture_output=True,
                          text=True, timeout=60, env=env, check=False)
    assert done.returncode == 0, done.stderr
    (found,) = [p for p in json.loads(done.stdout) if p["name"] == "opentelemetry"]
    assert found["distribution"] == "pygate-opentelemetry"
    assert found["version"] == "0.1.0"
    assert found["priority"] == 3000
    assert {"config_schema", "startup", "shutdown", "pre_route", "transform_request",
            "log"} <= set(found["hooks"])


async def test_serve_with_workers_traces_logs_and_flushes_on_stop(
        collector, fake_upstream, tmp_path: Path) -> None:
    receiver: Collector = await collector()
    upstream = await fake_upstream()
    access_log = tmp_path / "access.log"
    config = tmp_path / "pygate.toml"
    config.write_text(f"""
[plugins.opentelemetry]
endpoint = "{receiver.url}"
service_name = "edge-gateway"
flush_interval = "1h"          # nothing leaves before the stop: shutdown sends it all

[plugins.logging]
path = "{access_log}"

[[routes]]
name = "api"
path = "/api"
upstream = "{upstream.url}"
""")
    port = free_port()
    proc = await serve_process(config, port, tmp_path / "gw.log", "--workers", "2")
    caller = "4bf92f3577b34da6a3ce929d0e0e4736"
    answers = []
    try:
        async with aiohttp.ClientSession() as session:
            for index in range(8):  # a connection each, spread over the workers
                headers = {"Connection": "close", "X-Request-ID": f"e2e-{index}"}
                if index == 0:
                    headers["traceparent"] = f"00-{caller}-00f067aa0ba902b7-01"
                async with session.get(f"http://127.0.0.1:{port}/api/{index}",
                                       headers=headers) as response:
                    answers.append((response.status, response.headers["X-Request-ID"]))
        assert [status for status, _ in answers] == [200] * 8
        await asyncio.sleep(0.3)
        assert receiver.spans == []  # held until the stop
    finally:
        code = await asyncio.to_thread(stop_serve, proc)  # the receiver keeps serving
    assert code == 0, (tmp_path / "gw.log").read_text()

    sent = {}
    for request in upstream.requests:
        match = TRACEPARENT.match(request.headers["traceparent"])
        assert match is not None, request.headers["traceparent"]
        sent[request.headers["X-Request-ID"]] = (match.group(1), match.group(2))
    assert sent[answers[0][1]][0] == caller  # the caller's trace went on
    await receiver.wait_for(16)
    for trace_id, span_id in sent.values():
        spans = receiver.in_trace(trace_id)
        (server,) = [span for span in spans if span.kind == SERVER]
        (client,) = [span for span in spans if span.kind == CLIENT]
        assert client.span_id == span_id and client.parent_span_id == server.span_id
        assert server.resource["service.name"] == "edge-gateway"

    lines = [json.loads(line) for line in access_log.read_text().splitlines()]
    assert {line["request_id"]: line["trace_id"] for line in lines} == {
        request_id: trace_id for request_id, (trace_id, _) in sent.items()}
