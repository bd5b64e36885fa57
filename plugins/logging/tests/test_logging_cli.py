"""The installed distribution is listed by ``pygate plugins``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def test_listed_by_pygate_plugins():
    command = Path(sys.executable).parent / "pygate"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYGATE_")}
    done = subprocess.run([str(command), "plugins"], capture_output=True, text=True,
                          timeout=60, env=env, check=False)
    assert done.returncode == 0, done.stderr
    listed = {entry["name"]: entry for entry in json.loads(done.stdout)}
    entry = listed["logging"]
    assert "error" not in entry, entry
    assert entry["distribution"] == "pygate-logging"
    assert entry["version"] == "0.1.0"
    assert entry["priority"] == 5
    assert {"config_schema", "log", "post_response", "shutdown", "startup"} <= set(entry["hooks"])
