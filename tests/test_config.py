"""pygate.toml loading and validation, and the commands that read it (check, routes, explain,
serve)."""

from __future__ import annotations

import socket
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from pygate.cli import main
from pygate.config import Config, ConfigError, load, parse_duration, parse_size

GOOD = """
[gateway]
listen = "127.0.0.1:18080"
workers = 2
trusted_proxies = ["10.0.0.0/8", "::1/128"]
max_body = "512KB"
timeout = "250ms"
drain_timeout = "1m"

[admin]
listen = "127.0.0.1:9901"

[upstreams.users]
targets = ["http://127.0.0.1:3001", { url = "http://127.0.0.1:3011/", weight = 2 }]
balancer = "least-conn"
connect_timeout = "2s"
read_timeout = "1h"
health = { path = "/health", interval = "5s", timeout = "1s" }
breaker = { failures = 5, cooldown = "30s" }

[[routes]]
name = "v2"
path = "/api/v2"
upstream = "users"

[[routes]]
name = "user-by-id"
path = "/api/v2/users/{id}"
methods = ["get", "HEAD"]
upstream = "users"
rewrite = "/users/{id}"

[[routes]]
name = "admin"
path = "/api/v2/users/admin"
hosts = ["api.example.com", "*.example.org"]
headers = { X-Client = "mobile" }
upstream = "http://127.0.0.1:3002"
strip_path = false
"""


def write(tmp_path: Path, text: str, name: str = "pygate.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def errors_of(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> list[str]:
    """Every issue of a broken file, as "key.path: message" lines."""
    with pytest.raises(ConfigError) as info:
        load(write(tmp_path, text), env=env or {})
    return [str(issue) for issue in info.value.issues]


def one_error(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> str:
    issues = errors_of(tmp_path, text, env)
    assert len(issues) == 1, issues
    return issues[0]


ROUTE = """
[[routes]]
name = "r"
path = "/r"
upstream = "http://127.0.0.1:3001"
"""

# ---------------------------------------------------------------------------
# Loading a good file
# ---------------------------------------------------------------------------


def test_load_good_file(tmp_path: Path) -> None:
    config = load(write(tmp_path, GOOD), env={})
    assert isinstance(config, Config)
    gw = config.gateway
    assert gw.listen == "127.0.0.1:18080"
    assert gw.workers == 2
    assert gw.max_body == 512 * 1024
    assert gw.timeout == pytest.approx(0.25)
    assert gw.drain_timeout == 60
    assert [str(n) for n in gw.trusted_networks()] == ["10.0.0.0/8", "::1/128"]
    users = config.upstreams["users"]
    assert [(t.url, t.weight) for t in users.targets] == [
        ("http://127.0.0.1:3001", 1), ("http://127.0.0.1:3011", 2)]
    assert users.balancer == "least-conn"
    assert users.read_timeout == 3600
    assert users.health is not None and users.health.interval == 5
    assert [r.name for r in config.routes] == ["v2", "user-by-id", "admin"]
    assert config.routes[1].methods == ["GET", "HEAD"]
    assert config.routes[0].strip_path is True
    assert config.routes[2].strip_path is False
    assert config.routes[2].headers == {"X-Client": "mobile"}
    assert config.source == str(tmp_path / "pygate.toml")


def test_defaults(tmp_path: Path) -> None:
    config = load(write(tmp_path, ""), env={})
    assert config.gateway.listen == "127.0.0.1:8080"
    assert config.gateway.workers == 1
    assert config.gateway.max_body == 10 * 1024 * 1024
    assert config.gateway.timeout == 30
    assert config.admin is None
    assert config.routes == []


def test_relative_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    config = load(write(tmp_path, "", name="conf/pygate.toml"), env={})
    assert config.resolve_path("schema.graphql") == (tmp_path / "conf" / "schema.graphql")
    assert config.resolve_path("/etc/schema.graphql") == Path("/etc/schema.graphql")


def test_workers_auto_and_from_environment(tmp_path: Path) -> None:
    assert load(write(tmp_path, '[gateway]\nworkers = "auto"\n'), env={}).gateway.workers == "auto"
    text = '[gateway]\nworkers = "${WORKERS:-3}"\n'
    assert load(write(tmp_path, text), env={}).gateway.workers == 3
    assert load(write(tmp_path, text), env={"WORKERS": "4"}).gateway.workers == 4
    assert "gateway.workers" in one_error(tmp_path, "[gateway]\nworkers = 0\n")


# ---------------------------------------------------------------------------
# Durations and sizes
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("250ms", 0.25), ("2s", 2.0), ("1m", 60.0), ("1h", 3600.0), ("1.5s", 1.5), ("0s", 0.0),
     (" 2s ", 2.0), (3, 3.0), (0.5, 0.5), ("365d", 365 * 86400.0)],
)
def test_durations(text: Any, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["2", "2 sec", "-1s", "1w", "", "s", "2S", "1D", True, -1, None])
def test_bad_durations(text: Any) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "size"),
    [("512KB", 512 * 1024), ("10MB", 10 * 1024 * 1024), ("1GB", 1024**3), ("10mb", 10 * 1024**2),
     ("100", 100), ("100B", 100), ("1.5KB", 1536), (2048, 2048), (0, 0)],
)
def test_sizes(text: Any, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["10XB", "MB", "-1MB", "", 1.5, -1, True, None])
def test_bad_sizes(text: Any) -> None:
    with pytest.raises(ValueError, match="size"):
        parse_size(text)


def test_bad_duration_and_size_in_file_name_the_key(tmp_path: Path) -> None:
    issues = errors_of(tmp_path, """
        [gateway]
        timeout = "30 seconds"
        max_body = "10 megs"

        [upstreams.users]
        targets = ["http://127.0.0.1:3001"]
        health = { interval = "5" }
    """)
    assert any(i.startswith("gateway.timeout: ") and "'30 seconds'" in i for i in issues)
    assert any(i.startswith("gateway.max_body: ") and "'10 megs'" in i for i in issues)
    assert any(i.startswith("upstreams.users.health.interval: ") for i in issues)
    assert len(issues) == 3


# ---------------------------------------------------------------------------
# ${VAR} interpolation
# ---------------------------------------------------------------------------


def test_interpolation(tmp_path: Path) -> None:
    path = write(tmp_path, """
        [gateway]
        listen = "${HOST}:${PORT:-8081}"
        trusted_proxies = ["${NET:-10.0.0.0/8}"]

        [upstreams.users]
        targets = ["http://${USERS_HOST}:3001", { url = "http://${OTHER:-127.0.0.2}:3001" }]

        [[routes]]
        name = "r-${SUFFIX:-}"
        path = "/r"
        upstream = "users"
        headers = { X-Env = "$HOME ${WHO:-a:-b}" }
    """)
    config = load(path, env={"HOST": "0.0.0.0", "USERS_HOST": "users.internal"})
    assert config.gateway.listen == "0.0.0.0:8081"
    assert config.gateway.trusted_proxies == ["10.0.0.0/8"]
    assert [t.url for t in config.upstreams["users"].targets] == [
        "http://users.internal:3001", "http://127.0.0.2:3001"]
    assert config.routes[0].name == "r-"
    assert config.routes[0].headers == {"X-Env": "$HOME a:-b"}

    config = load(path, env={"HOST": "h", "PORT": "9000", "USERS_HOST": "u", "SUFFIX": "x"})
    assert config.gateway.listen == "h:9000"
    assert config.routes[0].name == "r-x"


def test_empty_variable_takes_the_default(tmp_path: Path) -> None:
    path = write(tmp_path, '[gateway]\nlisten = "${LISTEN:-127.0.0.1:9000}"\n')
    assert load(path, env={"LISTEN": ""}).gateway.listen == "127.0.0.1:9000"
    assert load(path, env={"LISTEN": "0.0.0.0:1"}).gateway.listen == "0.0.0.0:1"


def test_unset_variable_is_an_error_with_the_key_path(tmp_path: Path) -> None:
    issue = one_error(tmp_path, """
        [upstreams.users]
        targets = ["http://127.0.0.1:3001", "http://${USERS_HOST}:3001"]
    """)
    assert issue.startswith("upstreams.users.targets[1]: ")
    assert "USERS_HOST" in issue and "not set" in issue


def test_unset_variable_is_reported_once(tmp_path: Path) -> None:
    issues = errors_of(tmp_path, """
        [admin]
        listen = "0.0.0.0:9901"
        token = "${PYGATE_ADMIN_TOKEN}"

        [[routes]]
        name = "${NAME}"
        path = "/r"
        upstream = "${UPSTREAM}"
    """)
    assert sorted(i.split(":")[0] for i in issues) == [
        "admin.token", "routes[0].name", "routes[0].upstream"]
    assert all("environment variable" in i for i in issues)


def test_environment_comes_from_the_env_argument(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYGATE_TEST_HOST", "from-os")
    path = write(tmp_path, '[gateway]\nlisten = "${PYGATE_TEST_HOST}:1"\n')
    assert load(path).gateway.listen == "from-os:1"
    assert load(path, env={"PYGATE_TEST_HOST": "given"}).gateway.listen == "given:1"
    with pytest.raises(ConfigError, match="PYGATE_TEST_HOST"):
        load(path, env={})


# ---------------------------------------------------------------------------
# Unknown keys
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[gatway]\n", "gatway: unknown key; did you mean 'gateway'?"),
        ("routs = []\n", "routs: unknown key; did you mean 'routes'?"),
        ("source = 'x'\n", "source: unknown key"),
        ("[gateway]\nlisten_on = '127.0.0.1:1'\n",
         "gateway.listen_on: unknown key; did you mean 'listen'?"),
        ("[gateway]\nmax_bdy = '1MB'\n", "gateway.max_bdy: unknown key; did you mean 'max_body'?"),
        ("[admin]\ntokn = 'x'\n", "admin.tokn: unknown key; did you mean 'token'?"),
        ("[upstreams.users]\ntargets = ['http://a:1']\nbalancr = 'random'\n",
         "upstreams.users.balancr: unknown key; did you mean 'balancer'?"),
        ("[upstreams.users]\ntargets = [{ url = 'http://a:1', wieght = 2 }]\n",
         "upstreams.users.targets[0].wieght: unknown key; did you mean 'weight'?"),
        ("[upstreams.users]\ntargets = ['http://a:1']\nhealth = { pth = '/h' }\n",
         "upstreams.users.health.pth: unknown key; did you mean 'path'?"),
        # upstream and call names that are also field names are not taken for fields
        ("[upstreams.health]\ntargets = ['http://a:1']\nretires = 2\n",
         "upstreams.health.retires: unknown key; did you mean 'retries'?"),
        (ROUTE + "strip_pth = true\n",
         "routes[0].strip_pth: unknown key; did you mean 'strip_path'?"),
        (ROUTE.replace('upstream = "http://127.0.0.1:3001"', "") + "[routes.aggregate.calls.path]\n"
         "upstream = 'http://a:1'\nfeilds = ['id']\n",
         "routes[0].aggregate.calls.path.feilds: unknown key; did you mean 'fields'?"),
    ],
)
def test_unknown_keys(tmp_path: Path, text: str, expected: str) -> None:
    assert one_error(tmp_path, text).startswith(expected)


def test_unknown_key_without_close_match_lists_allowed_keys(tmp_path: Path) -> None:
    issue = one_error(tmp_path, "[gateway]\nzzz = 1\n")
    assert issue.startswith("gateway.zzz: unknown key")
    assert "listen" in issue and "trusted_proxies" in issue


def test_key_paths_index_lists_from_zero(tmp_path: Path) -> None:
    text = ROUTE + ROUTE.replace('"r"', '"s"') + ROUTE.replace('"r"', '"t"').replace('"/r"', '"r"')
    issue = one_error(tmp_path, text)
    assert issue.startswith("routes[2].path: ")
    assert "'/'" in issue


def test_missing_required_keys(tmp_path: Path) -> None:
    issues = errors_of(tmp_path, """
        [upstreams.users]
        balancer = "random"

        [[routes]]
        path = "/x"
        upstream = "users"
    """)
    assert "upstreams.users.targets: required key is missing" in issues
    assert "routes[0].name: required key is missing" in issues


# ---------------------------------------------------------------------------
# Cross-checks: names, kinds, references, templates, hosts, admin
# ---------------------------------------------------------------------------


def test_route_names_are_unique(tmp_path: Path) -> None:
    issue = one_error(tmp_path, ROUTE + ROUTE.replace('"/r"', '"/s"'))
    assert issue.startswith("routes[1].name: ")
    assert "duplicate" in issue and "routes[0]" in issue


@pytest.mark.parametrize(
    ("extra", "found"),
    [
        ("", "none"),
        ("upstream = 'http://a:1'\n[routes.graphql]\nschema = 's.graphql'\n", "upstream, graphql"),
        ("upstream = 'http://a:1'\n[routes.aggregate.calls.a]\nupstream = 'http://a:1'\n",
         "upstream, aggregate"),
    ],
)
def test_exactly_one_kind(tmp_path: Path, extra: str, found: str) -> None:
    issue = one_error(tmp_path, "[[routes]]\nname = 'r'\npath = '/r'\n" + extra)
    assert issue.startswith("routes[0]: ")
    assert "exactly one of upstream, aggregate or graphql" in issue
    assert f"found {found}" in issue


def test_aggregate_and_graphql_routes_load(tmp_path: Path) -> None:
    config = load(write(tmp_path, """
        [upstreams.orders]
        targets = ["http://127.0.0.1:3002"]

        [[routes]]
        name = "details"
        path = "/api/details/{id}"
        [routes.aggregate.calls.order]
        upstream = "orders"
        path = "/orders/{id}"

        [[routes]]
        name = "graphql"
        path = "/graphql"
        [routes.graphql]
        schema = "schema.graphql"
        [routes.graphql.resolvers."Query.order"]
        upstream = "orders"
    """), env={})
    assert [r.kind for r in config.routes] == ["aggregate", "graphql"]


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("userz", "routes[0].upstream: unknown upstream 'userz'; did you mean 'users'?"),
        ("billing", "routes[0].upstream: unknown upstream 'billing'; defined upstreams: users, "
                    "orders"),
        ("http://127.0.0.1:3001/path", "routes[0].upstream: expected a target like"),
        ("ftp://x", "routes[0].upstream: unknown upstream 'ftp://x'"),
    ],
)
def test_unknown_upstream(tmp_path: Path, ref: str, expected: str) -> None:
    text = f"""
        [upstreams.users]
        targets = ["http://127.0.0.1:3001"]
        [upstreams.orders]
        targets = ["http://127.0.0.1:3002"]
        [[routes]]
        name = "r"
        path = "/r"
        upstream = "{ref}"
    """
    assert one_error(tmp_path, text).startswith(expected)


def test_unknown_upstream_when_none_defined(tmp_path: Path) -> None:
    issue = one_error(tmp_path, "[[routes]]\nname = 'r'\npath = '/r'\nupstream = 'users'\n")
    assert "no [upstreams] are defined" in issue


def test_unknown_upstream_in_aggregate_and_graphql(tmp_path: Path) -> None:
    issues = errors_of(tmp_path, """
        [upstreams.orders]
        targets = ["http://127.0.0.1:3002"]

        [[routes]]
        name = "details"
        path = "/d/{id}"
        [routes.aggregate.calls.order]
        upstream = "ordrs"

        [[routes]]
        name = "graphql"
        path = "/graphql"
        [routes.graphql]
        schema = "schema.graphql"
        [routes.graphql.resolvers."Query.me"]
        upstream = "user"
    """)
    assert issues[0] == ("routes[0].aggregate.calls.order.upstream: unknown upstream 'ordrs'; "
                         "did you mean 'orders'?")
    assert issues[1].startswith('routes[1].graphql.resolvers."Query.me".upstream: unknown '
                                "upstream 'user'")


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/api/{id", "whole segment"),
        ("/api/{id}x", "whole segment"),
        ("/api/{id}/{id}", "appears twice"),
        ("/api/{rest:path}/more", "must be the last segment"),
        ("/api/../x", "dot-segments"),
    ],
)
def test_bad_templates(tmp_path: Path, path: str, message: str) -> None:
    issue = one_error(tmp_path, ROUTE.replace('"/r"', f'"{path}"'))
    assert issue.startswith("routes[0].path: ")
    assert message in issue


@pytest.mark.parametrize(
    ("path", "rewrite", "message"),
    [
        ("/users/{id}", "/u/{ib}", "unknown path parameter {ib}; did you mean 'id'?"),
        ("/users", "/u/{id}", "unknown path parameter {id}"),
        ("/users/{id}", "/u/{id:int}", "expected a parameter like {id} or {rest:path}"),
        ("/users/{id}", "/u/{id", "unbalanced braces"),
        ("/users/{id}", "/u/id}", "unbalanced braces"),
        ("/users/{id}", "u/{id}", "starting with '/'"),
    ],
)
def test_bad_rewrites(tmp_path: Path, path: str, rewrite: str, message: str) -> None:
    text = ROUTE.replace('"/r"', f'"{path}"') + f'rewrite = "{rewrite}"\n'
    issue = one_error(tmp_path, text)
    assert issue.startswith("routes[0].rewrite: ")
    assert message in issue


def test_good_rewrites(tmp_path: Path) -> None:
    text = (ROUTE.replace('"/r"', '"/files/{id}/{rest:path}"')
            + 'rewrite = "/blobs/{rest:path}/of/{id}"\n')
    config = load(write(tmp_path, text), env={})
    assert config.routes[0].rewrite == "/blobs/{rest:path}/of/{id}"


@pytest.mark.parametrize("host", ["api.example.com:8080", "*example.com", "a..*", "", "*.*.com"])
def test_bad_hosts(tmp_path: Path, host: str) -> None:
    issue = one_error(tmp_path, ROUTE + f'hosts = ["{host}"]\n')
    assert issue.startswith("routes[0].hosts: ")


def test_bad_methods(tmp_path: Path) -> None:
    issue = one_error(tmp_path, ROUTE + 'methods = ["GET", "PSOT"]\n')
    assert issue.startswith("routes[0].methods: ")
    assert "did you mean 'POST'?" in issue


@pytest.mark.parametrize(
    "admin",
    [
        'listen = "0.0.0.0:9901"',
        'listen = ":9901"',
        'listen = "10.1.2.3:9901"',
        'listen = "0.0.0.0:9901"\ntoken = ""',
        'listen = "0.0.0.0:9901"\ntoken = "${TOKEN:-}"',
    ],
)
def test_admin_token_required_unless_loopback(tmp_path: Path, admin: str) -> None:
    issue = one_error(tmp_path, f"[admin]\n{admin}\n")
    assert issue.startswith("admin.token: ")
    assert "loopback" in issue


@pytest.mark.parametrize(
    "admin",
    [
        "",
        'listen = "127.0.0.1:9901"',
        'listen = "127.0.0.2:9901"',
        'listen = "[::1]:9901"',
        'listen = "localhost:9901"',
        'listen = "0.0.0.0:9901"\ntoken = "${TOKEN}"',
    ],
)
def test_admin_token_not_required(tmp_path: Path, admin: str) -> None:
    config = load(write(tmp_path, f"[admin]\n{admin}\n"), env={"TOKEN": "s3cret"})
    assert config.admin is not None


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[gateway]\nlisten = "127.0.0.1"\n', "gateway.listen"),
        ('[gateway]\nlisten = "127.0.0.1:70000"\n', "gateway.listen"),
        ('[gateway]\ntrusted_proxies = ["10.0.0.0/8", "nope"]\n', "gateway.trusted_proxies"),
        ('[upstreams.u]\ntargets = []\n', "upstreams.u.targets"),
        ('[upstreams.u]\ntargets = ["127.0.0.1:3001"]\n', "upstreams.u.targets[0].url"),
        ('[upstreams.u]\ntargets = ["http://a:1"]\nbalancer = "fastest"\n', "upstreams.u.balancer"),
        ('[upstreams.u]\ntargets = ["http://a:1"]\nhash_on = "cookie"\n', "upstreams.u.hash_on"),
        (ROUTE + "plugins = { jwt = 1 }\n", "routes[0].plugins"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    assert one_error(tmp_path, text).split(": ", 1)[0] == key


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("upstreams = []\n", "upstreams: expected a table, found []"),
        ("routes = 'x'\n", "routes: expected an array, found 'x'"),
        ("gateway = 3\n", "gateway: expected a table, found 3"),
        ("[upstreams]\nusers = 5\n", "upstreams.users: expected a table, found 5"),
    ],
)
def test_wrong_shapes_are_named_in_toml_words(tmp_path: Path, text: str, expected: str) -> None:
    issue = one_error(tmp_path, text)
    assert issue == expected
    assert "Config" not in issue and "dictionary" not in issue


# ---------------------------------------------------------------------------
# Reading the file, rendering errors
# ---------------------------------------------------------------------------


def test_invalid_toml_is_readable(tmp_path: Path) -> None:
    path = write(tmp_path, '[gateway]\nlisten = "127.0.0.1:8080\n')
    with pytest.raises(ConfigError) as info:
        load(path, env={})
    rendered = info.value.render()
    assert rendered.startswith(f"{path}: 1 configuration error\n")
    assert "invalid TOML" in rendered
    assert "line 2" in rendered


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load(tmp_path / "nope.toml", env={})
    (tmp_path / "binary.toml").write_bytes(b'name = "\xff\xfe"\n')
    with pytest.raises(ConfigError, match="not UTF-8"):
        load(tmp_path / "binary.toml", env={})
    with pytest.raises(ConfigError, match="cannot read file"):
        load(tmp_path, env={})


BROKEN = """
[gatway]
listen = "127.0.0.1:8080"

[upstreams.users]
targets = ["http://127.0.0.1:3001"]

[[routes]]
name = "a"
path = "/a"
upstrem = "users"

[[routes]]
name = "b"
path = "/b"
upstream = "userz"

[[routes]]
name = "b"
path = "/c/{id}"
upstream = "users"
rewrite = "/c/{ib}"
"""


def test_every_issue_is_reported_at_once(tmp_path: Path) -> None:
    path = write(tmp_path, BROKEN)
    with pytest.raises(ConfigError) as info:
        load(path, env={})
    error = info.value
    assert sorted(i.path for i in error.issues) == [
        "gatway", "routes[0].upstrem", "routes[1].upstream", "routes[2].name",
        "routes[2].rewrite"]
    rendered = error.render()
    lines = rendered.splitlines()
    assert lines[0] == f"{path}: 5 configuration errors"
    assert all(line.startswith("  ") for line in lines[1:])
    for issue in error.issues:
        assert f"  {issue.path}: {issue.message}" in lines
    assert "did you mean 'upstream'?" in rendered
    assert "did you mean 'users'?" in rendered
    assert str(error) == rendered


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def test_cli_check_good_file(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    result = run("check", "-c", str(path))
    assert result.exit_code == 0, result.output
    assert f"{path}: OK" in result.output
    assert "listen: 127.0.0.1:18080" in result.output
    assert "routes: 3" in result.output
    assert "upstreams: 1" in result.output


def test_cli_check_broken_file(tmp_path: Path) -> None:
    path = write(tmp_path, BROKEN)
    result = run("check", "-c", str(path))
    assert result.exit_code == 1
    for key in ("gatway", "routes[0].upstrem", "routes[1].upstream", "routes[2].name",
                "routes[2].rewrite"):
        assert f"  {key}: " in result.stderr
    assert str(path) in result.stderr
    assert "Traceback" not in result.output
    assert "OK" not in result.stdout


@pytest.mark.parametrize(
    "content",
    ['[gateway\nlisten = "x"\n', b"\xff\xfe\x00", None],
    ids=["invalid-toml", "not-utf8", "missing"],
)
def test_cli_check_unreadable_file(tmp_path: Path, content: str | bytes | None) -> None:
    path = tmp_path / "pygate.toml"
    if isinstance(content, str):
        path.write_text(content)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    result = run("check", "-c", str(path))
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert str(path) in result.stderr


def test_cli_check_uses_pygate_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, GOOD, name="elsewhere.toml")
    monkeypatch.setenv("PYGATE_CONFIG", str(path))
    result = run("check")
    assert result.exit_code == 0, result.output
    assert f"{path}: OK" in result.output


def test_cli_routes_in_match_order(tmp_path: Path) -> None:
    result = run("routes", "-c", str(write(tmp_path, GOOD)))
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split()[:4] == ["#", "NAME", "METHODS", "PATH"]
    rows = [line.split() for line in lines[1:]]
    assert [row[1] for row in rows] == ["admin", "user-by-id", "v2"]
    assert rows[1][2] == "GET,HEAD"
    assert rows[1][3] == "/api/v2/users/{id}"
    assert "api.example.com,*.example.org" in lines[1]
    assert "X-Client=mobile" in lines[1]


def test_cli_routes_broken_file(tmp_path: Path) -> None:
    result = run("routes", "-c", str(write(tmp_path, BROKEN)))
    assert result.exit_code == 1
    assert "routes[1].upstream" in result.stderr
    assert "Traceback" not in result.output


def test_cli_explain_match(tmp_path: Path) -> None:
    result = run("explain", "-c", str(write(tmp_path, GOOD)), "get",
                 "/api/v2/x/../users/a%20b?x=1")
    assert result.exit_code == 0, result.output
    out = result.output
    assert "normalized path: /api/v2/users/a b" in out
    assert "result: route 'user-by-id' (routes[1])" in out
    assert 'path params: {"id": "a b"}' in out
    assert "forwarded as: GET /users/a%20b?x=1" in out
    # the routes considered before the match say why they did not match
    assert "'admin'" in out.split("result:")[0]


def test_cli_explain_prefix_strip(tmp_path: Path) -> None:
    result = run("explain", "-c", str(write(tmp_path, GOOD)), "DELETE", "/api/v2/orders/9")
    assert result.exit_code == 0, result.output
    assert "result: route 'v2' (routes[0])" in result.output
    assert "forwarded as: DELETE /orders/9" in result.output


def test_cli_explain_host_and_headers(tmp_path: Path) -> None:
    path = str(write(tmp_path, GOOD))
    url = "http://a.example.org/api/v2/users/admin/x"
    without = run("explain", "-c", path, "GET", url)
    assert "result: route 'user-by-id'" not in without.output
    assert "result: route 'admin'" not in without.output
    assert "X-Client" in without.output
    with_header = run("explain", "-c", path, "-H", "X-Client: mobile", "GET", url)
    assert with_header.exit_code == 0, with_header.output
    assert "result: route 'admin' (routes[2])" in with_header.output
    assert "forwarded as: GET /api/v2/users/admin/x" in with_header.output
    bad_header = run("explain", "-c", path, "-H", "no-colon", "GET", "/")
    assert bad_header.exit_code == 1
    assert "-H" in bad_header.stderr


def test_cli_explain_404_405_400(tmp_path: Path) -> None:
    text = GOOD.replace('name = "v2"\npath = "/api/v2"', 'name = "v2"\npath = "/api/v3"')
    path = str(write(tmp_path, text))
    not_found = run("explain", "-c", path, "GET", "/nothing/here")
    assert not_found.exit_code == 0
    assert "result: 404" in not_found.output
    not_allowed = run("explain", "-c", path, "POST", "/api/v2/users/7")
    assert "result: 405" in not_allowed.output
    assert "GET, HEAD" in not_allowed.output
    bad = run("explain", "-c", path, "GET", "/api/%2e%2e/%2e%2e/etc")
    assert "result: 400" in bad.output
    assert "Traceback" not in bad.output


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _serve(*args: str) -> Result:
    """``pygate serve`` in a thread, so a server that did start cannot hang the suite."""
    results: list[Result] = []
    thread = threading.Thread(target=lambda: results.append(run("serve", *args)), daemon=True)
    thread.start()
    thread.join(timeout=20)
    assert results, "serve did not exit on a broken configuration"
    return results[0]


def test_cli_serve_broken_file_exits_without_binding(tmp_path: Path) -> None:
    port = _free_port()
    text = BROKEN.replace("127.0.0.1:8080", f"127.0.0.1:{port}").replace("[gatway]", "[gateway]")
    result = _serve("-c", str(write(tmp_path, text)))
    assert result.exit_code == 1
    assert "routes[0].upstrem" in result.stderr
    assert "cannot listen" not in result.output
    assert "Traceback" not in result.output
    assert _port_is_free(port)


def test_cli_serve_validates_before_binding(tmp_path: Path) -> None:
    # the port is taken: a configuration error must still be what serve reports
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        text = BROKEN.replace("127.0.0.1:8080", f"127.0.0.1:{port}").replace("[gatway]",
                                                                             "[gateway]")
        result = _serve("-c", str(write(tmp_path, text)))
    assert result.exit_code == 1
    assert "routes[1].upstream: unknown upstream 'userz'" in result.stderr
    assert "cannot listen" not in result.output


def test_cli_routes_shows_a_routes_canary_and_mirror(tmp_path: Path) -> None:
    text = """
[upstreams.users]
targets = ["http://127.0.0.1:9001"]
[upstreams.users-v2]
targets = ["http://127.0.0.1:9002"]
[upstreams.shadow]
targets = ["http://127.0.0.1:9003"]
[[routes]]
name = "users"
path = "/api/users"
upstream = "users"
canary = { upstream = "users-v2", weight = 12.5, sticky = "ip" }
mirror = { upstream = "shadow", percent = 50 }
[[routes]]
name = "plain"
path = "/plain"
upstream = "users"
"""
    result = run("routes", "-c", str(write(tmp_path, text)))
    assert result.exit_code == 0, result.output
    users, plain = result.output.splitlines()[1:]
    assert "users (canary users-v2 12.5%, mirror shadow 50%)" in users
    assert "canary" not in plain and "mirror" not in plain


def test_check_reports_tls_file_errors_beside_core_errors(tmp_path: Path) -> None:
    """An upstream's unreadable tls file is reported in the same run as a core error
    elsewhere in the file, at its key path, named relative to the configuration file."""
    text = """
[gateway]
listen = "bad"
[upstreams.pay]
targets = ["https://10.0.0.1:8443"]
tls = { ca = "nope.pem" }
[[routes]]
name = "r"
path = "/"
upstream = "pay"
"""
    result = run("check", "-c", str(write(tmp_path, text)))
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert lines[1].startswith("  gateway.listen:")
    assert lines[2] == f"  upstreams.pay.tls.ca: file not found: '{tmp_path / 'nope.pem'}'"
