"""Each first-party plugin installs alone beside the core and is found by `pygate plugins`.

Wheels of the core and every plugin are built once; then, per plugin, the core wheel
and that one plugin wheel are installed into an empty target folder, and `pygate
plugins` runs with only that folder and the third-party libraries on the path (no
other pygate distribution visible). The plugin must import and be listed alone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PLUGINS = sorted(p.parent for p in (ROOT / "plugins").glob("*/pyproject.toml"))


def _entry_point_name(plugin_dir: Path) -> str:
    import tomllib

    project = tomllib.loads((plugin_dir / "pyproject.toml").read_text())["project"]
    names = list(project["entry-points"]["pygate"])
    assert len(names) == 1, f"{plugin_dir.name} declares {names}"
    return names[0]


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheels")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(out),
         str(ROOT), *map(str, PLUGINS)],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr
    return out


@pytest.fixture(scope="module")
def third_party(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test environment's libraries without any pygate distribution."""
    site = Path(next(p for p in sys.path if p.endswith("site-packages")))
    folder = tmp_path_factory.mktemp("third-party")
    for entry in site.iterdir():
        if "pygate" in entry.name.lower() or entry.suffix == ".pth":
            continue
        (folder / entry.name).symlink_to(entry)
    return folder


@pytest.mark.parametrize("plugin_dir", PLUGINS, ids=lambda p: p.name)
def test_plugin_installs_alone(plugin_dir: Path, wheels: Path, third_party: Path,
                               tmp_path: Path) -> None:
    name = _entry_point_name(plugin_dir)
    distribution = f"pygate_{plugin_dir.name.replace('-', '_')}"
    core = next(wheels.glob("pygate-*.whl"))
    plugin = next(wheels.glob(f"{distribution}-*.whl"))
    target = tmp_path / "env"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
         "--target", str(target), str(core), str(plugin)],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    env = {**os.environ, "PYTHONPATH": f"{target}{os.pathsep}{third_party}",
           "PYTHONNOUSERSITE": "1"}
    env.pop("PYGATE_LOAD_PLUGINS", None)
    listed = subprocess.run(
        [sys.executable, "-S", "-m", "pygate", "plugins"],
        capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path,
    )
    assert listed.returncode == 0, listed.stderr
    plugins = json.loads(listed.stdout)
    assert [p["name"] for p in plugins] == [name]
    assert "error" not in plugins[0], plugins[0]
    assert plugins[0]["distribution"].replace("_", "-") == f"pygate-{plugin_dir.name}"
    assert plugins[0]["hooks"], "a plugin implements at least one hook"


def test_every_plugin_has_a_readme_and_is_in_the_all_extra() -> None:
    import tomllib

    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]["all"]
    for plugin_dir in PLUGINS:
        assert (plugin_dir / "README.md").stat().st_size > 500, plugin_dir.name
        if plugin_dir.name != "bff-shape":  # the example plugin is not a product plugin
            assert f"pygate-{plugin_dir.name}" in extra, plugin_dir.name
