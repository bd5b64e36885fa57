"""``pygate new-plugin NAME``: a plugin distribution that builds, installs and passes its tests.

What it writes (``NAME`` = ``stamp``)::

    pygate-stamp/
      pyproject.toml          the entry point in the group "pygate", the dependency on
                              pygate-gateway, pytest settings (asyncio mode, the source
                              folder on the path, the pygate.testing fixtures)
      README.md               what it does, how to install it, its keys
      pygate_stamp/
        __init__.py           PRIORITY, config_schema and one hook (post_response)
        config.py             the typed config model (pydantic, unknown keys refused)
        py.typed
      tests/
        test_stamp.py         through pygate.testing: a real gateway and a fake upstream

docs/writing-plugins.md starts from it.
"""

from __future__ import annotations

import re
from pathlib import Path

from . import __version__

NAME_PATTERN = re.compile(r"^[a-z][a-z0-9]*(?:-[a-z0-9]+)*$")
"""A plugin's name: what users write in ``[plugins.NAME]``; lower case, digits, hyphens."""


class ScaffoldError(Exception):
    """The plugin cannot be written (a bad name, a folder that exists)."""


def names(name: str) -> dict[str, str]:
    """The spellings of ``name`` the templates use."""
    if not NAME_PATTERN.match(name):
        raise ScaffoldError(f"invalid plugin name {name!r}: use lower-case letters, digits and "
                            "single hyphens, starting with a letter (e.g. 'stamp', 'geo-block')")
    words = name.split("-")
    return {
        "name": name,
        "dist": f"pygate-{name}",
        "package": "pygate_" + "_".join(words),
        "model": "".join(w.capitalize() for w in words) + "Config",
        "header": "X-" + "-".join(w.capitalize() for w in words),
        "test": "_".join(words),
        "core_version": __version__,
    }


def create(name: str, parent: Path) -> Path:
    """Write the distribution of plugin ``name`` into ``parent/pygate-NAME``; its folder."""
    spelled = names(name)
    root = parent / spelled["dist"]
    if root.exists():
        raise ScaffoldError(f"{root} exists already; choose another --dir or remove it")
    package = root / spelled["package"]
    files = {
        root / "pyproject.toml": PYPROJECT,
        root / "README.md": README,
        package / "__init__.py": INIT,
        package / "config.py": CONFIG,
        package / "py.typed": "",
        root / "tests" / f"test_{spelled['test']}.py": TESTS,
    }
    for path, template in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(template.format(**spelled), encoding="utf-8")
    return root


PYPROJECT = '''\
[build-system]
requires = ["setuptools>=77"]
build-backend = "setuptools.build_meta"

[project]
name = "{dist}"
dynamic = ["version"]
description = "pygate plugin: {name}"
readme = "README.md"
requires-python = ">=3.11"
license = "Apache-2.0"
# pygate's distribution is pygate-gateway ("pygate" on PyPI is another project)
dependencies = ["pygate-gateway>={core_version}"]

[project.optional-dependencies]
test = ["pytest>=8", "pytest-aiohttp>=1.0"]

# How pygate finds the plugin: the entry point's name is what users write in
# [plugins.{name}] and in a route's plugins = {{ {name} = {{...}} }}.
[project.entry-points.pygate]
{name} = "{package}"

[tool.setuptools.dynamic]
version = {{ attr = "{package}.__version__" }}

[tool.setuptools.packages.find]
include = ["{package}*"]

[tool.setuptools.package-data]
{package} = ["py.typed"]

[tool.pytest.ini_options]
asyncio_mode = "auto"                 # async tests without a marker
asyncio_default_fixture_loop_scope = "function"
pythonpath = ["."]                    # the tests import {package} without installing it
addopts = "-p pygate.testing"         # the pygate_gateway and fake_upstream fixtures
testpaths = ["tests"]
'''

README = '''\
# {dist}

A [pygate](https://github.com/) plugin: `{name}` sets a response header on every
request it is switched on for (a starting point: change it into what you need).

## Install

```sh
pip install ./{dist}          # or, once published: pip install {dist}
pygate plugins                # lists "{name}" with its version and hooks
```

## Configuration

```toml
[plugins.{name}]              # on for every route
header = "{header}"
value = "on"

[[routes]]
name = "internal"
path = "/internal"
upstream = "http://127.0.0.1:3001"
plugins = {{ {name} = false }}   # ...except this one
```

| key | default | what |
|---|---|---|
| `header` | `"{header}"` | the response header to set |
| `value` | `"on"` | its value |

Unknown keys are configuration errors naming their key path
(`plugins.{name}.valeu: unknown key; did you mean 'value'?`).

## Develop

```sh
pip install -e "./{dist}[test]"
cd {dist} && pytest
```

The tests run a real gateway in-process through `pygate.testing`, with fake upstreams
that record what they receive.
'''

INIT = '''\
"""The `{name}` plugin for pygate: sets a response header (see README.md)."""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel
from pygate.plugin import Context, hookimpl

from .config import {model}

__version__ = "0.1.0"

# Order among plugins: higher runs earlier on the request side, later on the
# response side.
PRIORITY = 10


@hookimpl
def config_schema() -> type[BaseModel]:
    """The model that validates [plugins.{name}] merged with each route's table."""
    return {model}


@hookimpl
def post_response(ctx: Context, response: web.StreamResponse) -> None:
    """Before the response is sent: set the configured header."""
    config: {model} = ctx.config
    response.headers[config.header] = config.value
'''

CONFIG = '''\
"""The configuration: [plugins.{name}] and each route's override."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class {model}(BaseModel):
    """Validated once when the configuration loads; hooks read it as ``ctx.config``."""

    model_config = ConfigDict(extra="forbid", frozen=True)  # a typo is a config error

    header: str = Field(default="{header}", min_length=1)
    value: str = "on"
'''

TESTS = '''\
"""The plugin through a real gateway (pygate.testing) and a fake upstream."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

import {package}
from {package}.config import {model}


def config(*routes: dict, **plugin: str) -> dict:
    return {{"plugins": {{"{name}": plugin}}, "routes": list(routes)}}


async def test_sets_its_header_on_responses(pygate_gateway, fake_upstream) -> None:
    upstream = await fake_upstream()
    gateway = await pygate_gateway(
        config({{"name": "r", "path": "/", "upstream": upstream.url}}, value="t"),
        plugins={{"{name}": {package}}})
    status, headers, _ = await gateway.request(
        "GET", "/hello", headers={{"X-Client": "1"}})
    assert status == 200
    assert headers["{header}"] == "t"
    assert upstream.requests[-1].headers["X-Client"] == "1"  # request headers reach it


async def test_a_route_can_switch_it_off(pygate_gateway, fake_upstream) -> None:
    upstream = await fake_upstream()
    gateway = await pygate_gateway(
        config({{"name": "on", "path": "/on", "upstream": upstream.url}},
               {{"name": "off", "path": "/off", "upstream": upstream.url,
                "plugins": {{"{name}": False}}}}),
        plugins={{"{name}": {package}}})
    _, on, _ = await gateway.request("GET", "/on")
    _, off, _ = await gateway.request("GET", "/off")
    assert on["{header}"] == "on"
    assert "{header}" not in off


def test_unknown_keys_are_refused() -> None:
    with pytest.raises(ValidationError, match="valeu"):
        {model}.model_validate({{"valeu": "x"}})
'''
