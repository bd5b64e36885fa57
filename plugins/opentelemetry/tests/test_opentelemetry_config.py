"""``[plugins.opentelemetry]`` mistakes are configuration errors with key paths: `pygate
check` names each one and exits 1, without a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROUTE = """
[[routes]]
name = "r"
path = "/"
upstream = "http://127.0.0.1:9"
"""


def check(tmp_path: Path, config: str, **env: str) -> tuple[int, list[str]]:
    """``pygate check``: its exit code and its output lines (stripped)."""
    (tmp_path / "pygate.toml").write_text(config)
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PYGATE_")}
    done = subprocess.run([sys.executable, "-m", "pygate", "check", "-c", "pygate.toml"],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path,
                          env={**environment, **env}, check=False)
    output = done.stdout + done.stderr
    assert "Traceback" not in output
    return done.returncode, [line.strip() for line in output.splitlines()]


def test_the_contract_keys_pass_check(tmp_path: Path) -> None:
    code, lines = check(tmp_path, """
[plugins.opentelemetry]
endpoint = "${OTEL_EXPORTER_OTLP_TRACES_ENDPOINT}"
service_name = "pygate"
sample = 0.25
headers = { Authorization = "Bearer ${OTEL_TOKEN}" }
""" + ROUTE, OTEL_EXPORTER_OTLP_TRACES_ENDPOINT="https://collector.example:4318/v1/traces",
        OTEL_TOKEN="t0ken")
    assert code == 0, lines


def test_an_empty_table_passes_check(tmp_path: Path) -> None:
    code, lines = check(tmp_path, "[plugins.opentelemetry]\n" + ROUTE)
    assert code == 0, lines


def test_every_mistake_is_named_with_its_key_path(tmp_path: Path) -> None:
    code, lines = check(tmp_path, """
[plugins.opentelemetry]
endpoint = "ftp://collector"
sample = 1.5
headers = { "Bad Name" = "x", X-Ok = "a\\u0001b" }
flush_interval = "0s"
samples = 1
""" + ROUTE + 'plugins = { opentelemetry = { service_name = "", max_queue = 0 } }\n')
    assert code == 1
    expected = [
        "plugins.opentelemetry.endpoint: expected the collector's OTLP/HTTP URL, like "
        "http://127.0.0.1:4318/v1/traces, found 'ftp://collector'",
        "plugins.opentelemetry.sample: input should be less than or equal to 1, found 1.5",
        "plugins.opentelemetry.headers.\"Bad Name\": expected a header name like "
        "Authorization, found 'Bad Name'",
        "plugins.opentelemetry.headers.X-Ok: a header value may not contain control characters",
        'plugins.opentelemetry.flush_interval: expected a duration above zero, like "5s"',
        "plugins.opentelemetry.samples: unknown key; did you mean 'sample'?",
        "routes[0].plugins.opentelemetry.service_name: string should have at least 1 "
        "character, found ''",
    ]
    for line in expected:
        assert line in lines, (line, lines)
    assert any(line.startswith("routes[0].plugins.opentelemetry.max_queue:") for line in lines)


def test_a_batch_larger_than_the_queue_is_refused(tmp_path: Path) -> None:
    code, lines = check(tmp_path, "[plugins.opentelemetry]\nmax_queue = 10\nmax_batch = 20\n"
                        + ROUTE)
    assert code == 1
    assert "plugins.opentelemetry: max_batch (20) cannot exceed max_queue (10)" in lines
