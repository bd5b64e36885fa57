"""`pygate new-plugin NAME`: the plugin it writes builds, installs, is listed, passes its tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from pygate.cli import main

ROOT = Path(__file__).resolve().parent.parent


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYGATE_LOAD_PLUGINS")}
    return {**env, **extra}


def test_new_plugin_installs_is_listed_and_its_tests_pass(tmp_path: Path) -> None:
    done = CliRunner().invoke(main, ["new-plugin", "geo-block", "--dir", str(tmp_path)])
    assert done.exit_code == 0, done.output
    project = tmp_path / "pygate-geo-block"
    assert f"created {project}/" in done.output
    assert (project / "pygate_geo_block" / "py.typed").exists()
    readme = (project / "README.md").read_text()
    assert "[plugins.geo-block]" in readme and "`header`" in readme and "`value`" in readme

    # As generated, its tests pass (pytest settings in its pyproject, no install needed).
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
                           cwd=project, capture_output=True, text=True, timeout=300, env=_env())
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert "3 passed" in tests.stdout
    assert "warning" not in tests.stdout.lower(), tests.stdout

    # It builds and installs (into a folder of its own), and `pygate plugins` lists it.
    target = tmp_path / "site"
    built = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target",
         str(target), str(project)],
        capture_output=True, text=True, timeout=600, env=_env(PYTHONWARNINGS="ignore"))
    assert built.returncode == 0, built.stderr
    listed = subprocess.run([sys.executable, "-m", "pygate", "plugins"], capture_output=True,
                            text=True, timeout=120, env=_env(PYTHONPATH=str(target)),
                            cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    found = {p["name"]: p for p in json.loads(listed.stdout)}
    plugin = found["geo-block"]
    assert plugin["distribution"].replace("_", "-") == "pygate-geo-block"
    assert plugin["version"] == "0.1.0"
    assert set(plugin["hooks"]) >= {"config_schema", "post_response"}
    assert "error" not in plugin

    # And a gateway configured with it loads it from there: `pygate check` passes and
    # `pygate explain` shows it in the chain with its config.
    config = tmp_path / "pygate.toml"
    config.write_text('[plugins.geo-block]\nvalue = "eu"\n\n[[routes]]\nname = "r"\n'
                      'path = "/"\nupstream = "http://127.0.0.1:9"\n')
    explained = subprocess.run(
        [sys.executable, "-m", "pygate", "explain", "-c", str(config), "GET", "/x"],
        capture_output=True, text=True, timeout=120, env=_env(PYTHONPATH=str(target)))
    assert explained.returncode == 0, explained.stderr
    assert "geo-block" in explained.stdout and '"value": "eu"' in explained.stdout


def test_new_plugin_refuses_bad_names_and_existing_folders(tmp_path: Path) -> None:
    runner = CliRunner()
    bad = runner.invoke(main, ["new-plugin", "Geo_Block", "--dir", str(tmp_path)])
    assert bad.exit_code == 1
    assert "invalid plugin name 'Geo_Block'" in bad.output
    assert not any(tmp_path.iterdir())
    assert runner.invoke(main, ["new-plugin", "stamp", "--dir", str(tmp_path)]).exit_code == 0
    again = runner.invoke(main, ["new-plugin", "stamp", "--dir", str(tmp_path)])
    assert again.exit_code == 1
    assert "exists already" in again.output
    assert "Traceback" not in again.output
