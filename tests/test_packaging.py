"""Packaging: `make dist`, the distributions' metadata, and installing them.

`make dist` builds every wheel and sdist once (into a temporary folder). Then, per
plugin, the core wheel and that one plugin wheel are installed into an empty target
folder, and `pygate plugins` runs with only that folder and the third-party libraries
on the path (no other pygate distribution visible): the plugin must import and be
listed alone. And `pip install --find-links DIST "pygate-gateway[all]"` into a fresh
virtual environment gives a `pygate` command that lists every first-party plugin.
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
    """What `make dist` builds: every distribution's wheel and sdist."""
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run(["make", "--no-print-directory", "dist", f"DIST={out}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Warning" not in done.stderr, done.stderr  # e.g. setuptools' deprecations
    return out


def test_make_dist_builds_a_wheel_and_an_sdist_of_every_distribution(wheels: Path) -> None:
    import tomllib

    for project in (ROOT, *PLUGINS):
        meta = tomllib.loads((project / "pyproject.toml").read_text())["project"]
        stem = meta["name"].replace("-", "_")
        assert len(list(wheels.glob(f"{stem}-*-py3-none-any.whl"))) == 1, stem
        assert len(list(wheels.glob(f"{stem}-*.tar.gz"))) == 1, stem


def test_distributions_name_the_core_as_pygate_gateway(wheels: Path) -> None:
    """The core's distribution is pygate-gateway (`pygate` on PyPI is another project);
    every plugin depends on it, and the license is an SPDX expression."""
    import zipfile

    def metadata(wheel: Path) -> list[str]:
        with zipfile.ZipFile(wheel) as archive:
            name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
            return archive.read(name).decode().splitlines()

    from pygate import __version__

    core = metadata(next(wheels.glob("pygate_gateway-*.whl")))
    assert "Name: pygate-gateway" in core
    assert f"Version: {__version__}" in core
    assert "License-Expression: Apache-2.0" in core
    for wheel in wheels.glob("pygate_*.whl"):
        if wheel.name.startswith("pygate_gateway-"):
            continue
        lines = metadata(wheel)
        requires = [line for line in lines if line.startswith("Requires-Dist: pygate")]
        assert requires and all(r.startswith("Requires-Dist: pygate-gateway") for r in requires), \
            (wheel.name, requires)
        assert "License-Expression: Apache-2.0" in lines, wheel.name


def test_all_extra_installs_from_dist_into_a_fresh_venv(wheels: Path, tmp_path: Path) -> None:
    """`pip install --find-links dist "pygate-gateway[all]"` in a new virtual environment:
    the command runs and every first-party plugin is listed."""
    import tomllib

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
           "--disable-pip-version-check", "--find-links", str(wheels)]
    done = subprocess.run([*pip, "pygate-gateway[all]"], capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYGATE_LOAD_PLUGINS")}
    listed = subprocess.run([str(venv / "bin" / "pygate"), "plugins"], capture_output=True,
                            text=True, timeout=120, env=env, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]["all"]
    wanted = {name.removeprefix("pygate-") for name in extra if name.startswith("pygate-")}
    names = {p["name"] for p in json.loads(listed.stdout)}
    assert names == wanted
    assert all("error" not in p for p in json.loads(listed.stdout))


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
    core = next(wheels.glob("pygate_gateway-*.whl"))
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
