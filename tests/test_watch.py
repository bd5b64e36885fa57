"""``pygate serve --watch`` (PRODUCT.md section 2): the watcher, and real processes.

The watcher polls signatures (real path, inode, mtime, size) of the configuration
file and the files it names, acts once a change has settled (debounced), and sees a
Kubernetes ConfigMap update (the ``..data`` symbolic link swapped to a new folder).
End to end: a changed key file is served after the reload; an invalid change is
refused and logged while the running configuration stays.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import aiohttp

from pygate.config import load_data
from pygate.watch import Watcher, named_files, signature
from tests.admin_support import Admin, admin_section, events, eventually
from tests.conftest import UpstreamFactory, free_port, launch_gateway


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def touch(path: Path, text: str) -> None:
    path.write_text(text)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # coarse clocks


# ---------------------------------------------------------------------------
# The watcher
# ---------------------------------------------------------------------------


def test_a_change_is_reported_once_it_has_settled(tmp_path: Path) -> None:
    config = tmp_path / "pygate.toml"
    config.write_text("a")
    clock = Clock()
    watcher = Watcher(str(config), None, debounce=0.5, clock=clock)
    assert watcher.files == [str(config)]
    assert watcher.poll() is None

    touch(config, "ab")
    assert watcher.poll() is None  # just seen
    clock.now += 0.3
    touch(config, "abc")  # still being written: the wait starts again
    assert watcher.poll() is None
    clock.now += 0.3
    assert watcher.poll() is None
    clock.now += 0.3
    assert watcher.poll() == [str(config)]
    assert watcher.poll() is None  # reported once

    config.unlink()  # missing counts as a change too (the reload then says why)
    assert watcher.poll() is None
    clock.now += 1
    assert watcher.poll() == [str(config)]


def test_a_configmap_update_swaps_the_data_link(tmp_path: Path) -> None:
    """Kubernetes mounts pygate.toml -> ..data/pygate.toml, ..data -> ..2024_v1; an update
    writes ..2024_v2 and renames a new ..data link over the old one."""
    mount = tmp_path / "config"
    mount.mkdir()
    first = mount / "..2024_v1"
    first.mkdir()
    (first / "pygate.toml").write_text("same size")
    (mount / "..data").symlink_to("..2024_v1")
    (mount / "pygate.toml").symlink_to("..data/pygate.toml")
    clock = Clock()
    watcher = Watcher(str(mount / "pygate.toml"), None, debounce=0.5, clock=clock)

    second = mount / "..2024_v2"
    second.mkdir()
    (second / "pygate.toml").write_text("SAME SIZE")  # same size, and same mtime below
    stat = (first / "pygate.toml").stat()
    os.utime(second / "pygate.toml", ns=(stat.st_atime_ns, stat.st_mtime_ns))
    (mount / "..data_tmp").symlink_to("..2024_v2")
    os.replace(mount / "..data_tmp", mount / "..data")

    assert watcher.poll() is None
    clock.now += 1
    assert watcher.poll() == [str(mount / "pygate.toml")]
    assert signature(str(mount / "pygate.toml"))[0] == str((second / "pygate.toml").resolve())


def test_the_files_a_configuration_names_are_watched(tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "jwt.pem").write_text("pem")
    (tmp_path / "schema.graphql").write_text("type Query { a: String }")
    (tmp_path / "consumers.toml").write_text("")
    (tmp_path / "access.log").write_text("")
    (tmp_path / "health").write_text("")  # a file named like a URL path: not followed
    config = load_data({
        "upstreams": {"u": {"targets": ["http://127.0.0.1:9"],
                            "health": {"path": "health"}}},
        "plugins": {"jwt": {"public_key": "keys/jwt.pem", "algorithms": ["RS256"]},
                    "logging": {"path": "access.log"},
                    "key-auth": {"keys_file": str(tmp_path / "consumers.toml")}},
        "routes": [{"name": "g", "path": "/graphql", "graphql": {"schema": "schema.graphql"}},
                   {"name": "r", "path": "/r", "upstream": "u",
                    "plugins": {"jwt": {"public_key": "-----BEGIN PUBLIC KEY-----\nabc"}}}],
    }, base_dir=str(tmp_path))
    assert sorted(named_files(config)) == sorted(
        str(tmp_path / name) for name in ("keys/jwt.pem", "schema.graphql", "consumers.toml"))

    config_file = tmp_path / "pygate.toml"
    config_file.write_text("")
    clock = Clock()
    watcher = Watcher(str(config_file), config, clock=clock)
    assert watcher.files[0] == str(config_file) and len(watcher.files) == 4
    touch(tmp_path / "schema.graphql", "type Query { b: String }")
    watcher.poll()
    clock.now += 1
    assert watcher.poll() == [str(tmp_path / "schema.graphql")]

    touch(tmp_path / "access.log", "a line")  # written by the logging plugin: ignored
    clock.now += 1
    assert watcher.poll() is None


def test_rebase_keeps_what_changed_during_the_reload(tmp_path: Path) -> None:
    config = tmp_path / "pygate.toml"
    config.write_text("one")
    clock = Clock()
    watcher = Watcher(str(config), None, clock=clock)
    touch(config, "two")
    watcher.poll()
    clock.now += 1
    assert watcher.poll() == [str(config)]
    touch(config, "three!")  # while the reload of "two" runs
    watcher.rebase(None, keep=True)
    watcher.poll()
    clock.now += 1
    assert watcher.poll() == [str(config)]  # not lost
    touch(config, "four!!")
    watcher.rebase(None)  # a reload by SIGHUP or the API read the file as it is now
    clock.now += 1
    assert watcher.poll() is None


# ---------------------------------------------------------------------------
# pygate serve --watch
# ---------------------------------------------------------------------------


async def test_serve_watch_reloads_a_changed_key_file_and_refuses_an_invalid_change(
        tmp_path: Path, upstream: UpstreamFactory, http: aiohttp.ClientSession) -> None:
    up = await upstream()
    keys = tmp_path / "keys.toml"
    keys.write_text('alice = "first-key"\n')
    admin = Admin(http, free_port())
    text = f"""
[plugins.key-auth]
keys_file = "keys.toml"

[[routes]]
name = "api"
path = "/api"
upstream = "{up.url}"
""" + admin_section(admin.port)
    gw = await launch_gateway(tmp_path / "pygate.toml", text, tmp_path / "watch.stderr",
                              "--watch")
    try:
        await admin.wait()
        watching = events(gw, "watching for changes")
        assert str(keys) in watching[0]["files"]

        async def status(key: str) -> int:
            async with http.get(gw.url + "/api/x", headers={"X-API-Key": key}) as response:
                return response.status

        assert await status("first-key") == 200
        keys.write_text('alice = "second-key"\n')

        async def rotated() -> bool:
            return await status("second-key") == 200

        started = time.monotonic()
        await eventually(rotated, what="the new key is served")
        assert time.monotonic() - started < 5
        assert await status("first-key") == 401
        changed = events(gw, "configuration changed on disk")
        assert changed[0]["files"] == [str(keys)]
        assert events(gw, "reloaded")[0]["trigger"] == "watch"

        # An invalid change is refused and logged; the running configuration stays.
        keys.write_text("not = toml = at all\n")

        async def refused() -> list[dict[str, object]]:
            return events(gw, "reload refused")

        found = await eventually(refused, what="reload refused")
        assert any("keys_file" in line for line in found[0]["errors"]), found
        assert await status("second-key") == 200
        assert (await admin.get("/status"))["generation"] == 2

        keys.write_text('alice = "third-key"\n')

        async def fixed() -> bool:
            return await status("third-key") == 200

        await eventually(fixed, what="the fixed file is served")
        assert (await admin.get("/status"))["generation"] == 3
    finally:
        assert await gw.terminate() == 0
    assert "Traceback" not in gw.stderr()


async def test_serve_watch_follows_a_configmap_update(tmp_path: Path,
                                                      upstream: UpstreamFactory,
                                                      http: aiohttp.ClientSession) -> None:
    up = await upstream()
    mount = tmp_path / "configmap"
    mount.mkdir()

    def version(name: str, path: str) -> None:
        folder = mount / name
        folder.mkdir()
        (folder / "pygate.toml").write_text(
            f'[[routes]]\nname = "api"\npath = "{path}"\nupstream = "{up.url}"\n')

    version("..2024_v1", "/v1")
    (mount / "..data").symlink_to("..2024_v1")
    (mount / "pygate.toml").symlink_to("..data/pygate.toml")
    gw = await launch_gateway(mount / "pygate.toml", (mount / "pygate.toml").read_text(),
                              tmp_path / "configmap.stderr", "--watch")
    try:
        await eventually(lambda: _accepting(http, gw.url + "/v1/x"), what="listening")
        version("..2024_v2", "/v2")
        (mount / "..data_tmp").symlink_to("..2024_v2")
        os.replace(mount / "..data_tmp", mount / "..data")
        await eventually(lambda: _accepting(http, gw.url + "/v2/x"), what="v2 serves")
        assert (await http.get(gw.url + "/v1/x")).status == 404
    finally:
        assert await gw.terminate() == 0


async def _accepting(http: aiohttp.ClientSession, url: str) -> bool:
    try:
        async with http.get(url) as response:
            return response.status == 200
    except aiohttp.ClientError:
        return False
