"""The ``pygate`` command: serve, check, routes, plugins, explain, new-plugin.

Each command is thin: it loads the configuration through one function and
hands it to one module. Configuration errors are printed with their key paths
and exit 1, never as a traceback.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NoReturn
from urllib.parse import urlsplit

import click
from multidict import CIMultiDict

from . import __version__
from .app import Gateway, RoutePlan, load_gateway
from .config import ConfigError, default_path, parse_listen, split_listen
from .errors import GatewayError
from .kinds import Routed
from .plugins import config_for_display, describe_installed
from .sanitize import host_of, normalize_path


def _fail(message: str) -> NoReturn:
    click.echo(message, err=True)
    sys.exit(1)


@contextmanager
def _config_errors() -> Iterator[None]:
    try:
        yield
    except ConfigError as exc:
        _fail(exc.render())


def _load(path: str | None) -> Gateway:
    with _config_errors():
        return load_gateway(path or default_path())


config_option = click.option(
    "-c", "--config", "config_path", metavar="FILE", default=None,
    help="Configuration file [default: $PYGATE_CONFIG, then ./pygate.toml]")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="pygate")
def main() -> None:
    """pygate: an API gateway in Python."""


@main.command()
@config_option
@click.option("--listen", metavar="HOST:PORT", help="Override gateway.listen.")
@click.option("--workers", metavar="N|auto", help="Override gateway.workers.")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False))
@click.option("--watch", is_flag=True,
              help="Reload when the configuration file, or a file it names, changes.")
def serve(config_path: str | None, listen: str | None, workers: str | None,
          log_level: str, watch: bool) -> None:
    """Validate the configuration, then serve until SIGTERM/SIGINT (graceful drain).

    SIGHUP (and POST /reload on the admin listener, and --watch) reloads the
    configuration file. With more than one worker, a supervisor process runs
    the workers (pygate.workers).
    """
    from .listener import bind, raise_open_files_limit
    from .logs import log_format
    from .reload import file_loader
    from .server import configure_logging, install_uvloop, serve_forever
    from .workers import Supervisor, worker_count

    path = config_path or default_path()
    reload = file_loader(path)
    with _config_errors():
        gateway = reload()
    address = listen or gateway.config.gateway.listen
    try:
        parse_listen(address)
    except ValueError as exc:
        _fail(f"--listen: {exc}")
    try:
        count = worker_count(workers if workers is not None else gateway.config.gateway.workers)
    except ValueError as exc:
        _fail(f"--workers: {exc}")
    host, port = split_listen(address)
    configure_logging(log_level, log_format(gateway))
    install_uvloop()
    before, after = raise_open_files_limit()
    if after != before:
        import structlog

        structlog.get_logger("pygate").debug("open files limit raised", before=before,
                                             after=after)
    admin_socks = []
    if gateway.config.admin is not None:
        admin_address = gateway.config.admin.listen
        try:
            admin_socks = bind(*split_listen(admin_address), reuse_port=False)
        except OSError as exc:
            _fail(f"cannot listen on {admin_address} (admin.listen): {exc.strerror or exc}")
    redirect_socks = []
    redirect_address = gateway.config.gateway.redirect_http
    if redirect_address is not None:
        try:
            redirect_socks = bind(*split_listen(redirect_address), reuse_port=False)
        except OSError as exc:
            for sock in admin_socks:
                sock.close()
            _fail(f"cannot listen on {redirect_address} (gateway.redirect_http): "
                  f"{exc.strerror or exc}")
    if count > 1:
        try:
            supervisor = Supervisor.bind(gateway, host, port, count, reload,
                                         admin_socks=admin_socks, watch=watch,
                                         redirect_socks=redirect_socks)
        except OSError as exc:
            for sock in [*admin_socks, *redirect_socks]:
                sock.close()
            _fail(f"cannot listen on {address}: {exc.strerror or exc}")
        sys.exit(supervisor.run())
    try:
        asyncio.run(serve_forever(gateway, host, port, reload=reload, admin_socks=admin_socks,
                                  watch=watch, redirect_socks=redirect_socks))
    except OSError as exc:
        _fail(f"cannot listen on {address}: {exc.strerror or exc}")
    except KeyboardInterrupt:
        pass


@main.command()
@config_option
def check(config_path: str | None) -> None:
    """Validate the configuration; print a summary (exit 0) or every error (exit 1)."""
    gateway = _load(config_path)
    config = gateway.config
    plugins = ", ".join(gateway.plugins.info) or "none"
    click.echo(f"{config.source}: OK")
    click.echo(f"  listen: {config.gateway.listen}")
    click.echo(f"  routes: {len(config.routes)}")
    click.echo(f"  upstreams: {len(config.upstreams)}")
    click.echo(f"  plugins: {plugins}")


@main.command()
@config_option
def routes(config_path: str | None) -> None:
    """The route table, in match order."""
    from .admin.views import route_table, traffic_note

    gateway = _load(config_path)
    rows = [("#", "NAME", "METHODS", "PATH", "HOSTS", "HEADERS", "TARGET", "PLUGINS")]
    for route in route_table(gateway):  # the admin listener's GET /routes, as text
        rows.append((
            str(route["order"]), route["name"], ",".join(route["methods"] or ["*"]),
            route["path"], ",".join(route["hosts"] or ["*"]),
            ",".join(f"{k}={v}" for k, v in (route["headers"] or {}).items()) or "-",
            (route["target"] or "-") + traffic_note(route), ",".join(route["plugins"]) or "-",
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())


@main.command()
def plugins() -> None:
    """Installed plugins (entry point group "pygate") as JSON."""
    click.echo(json.dumps(describe_installed(), indent=2))


@main.command("new-plugin")
@click.argument("name")
@click.option("--dir", "parent", metavar="DIR", default=".", show_default=True,
              type=click.Path(file_okay=False), help="Where the plugin's folder is made")
def new_plugin(name: str, parent: str) -> None:
    """A new plugin distribution, pygate-NAME: pyproject with the entry point, a package
    with a typed config and one hook, a README, and tests that pass as generated."""
    from pathlib import Path

    from .scaffold import ScaffoldError, create

    try:
        root = create(name, Path(parent))
    except ScaffoldError as exc:
        _fail(f"pygate new-plugin: {exc}")
    except OSError as exc:
        _fail(f"pygate new-plugin: cannot write the plugin: {exc.strerror} "
              f"({exc.filename})")
    click.echo(f"created {root}/")
    click.echo(f"  pip install -e \"{root}[test]\"   then: pygate plugins")
    click.echo(f"  cd {root} && pytest")
    click.echo(f"  switch it on in pygate.toml with [plugins.{name}]")


@main.command()
@config_option
@click.option("-H", "--header", "headers", multiple=True, metavar='"Name: value"',
              help="A request header (repeatable).")
@click.argument("method")
@click.argument("url")
def explain(config_path: str | None, headers: tuple[str, ...], method: str, url: str) -> None:
    """Which route matches METHOD URL and why, its plugin chain and target; sends nothing."""
    gateway = _load(config_path)
    request_headers: CIMultiDict[str] = CIMultiDict()
    for header in headers:
        name, sep, value = header.partition(":")
        if not sep or not name.strip():
            _fail(f'-H: expected "Name: value", found {header!r}')
        request_headers.add(name.strip(), value.strip())
    parts = urlsplit(url)
    if parts.scheme and parts.netloc and "Host" not in request_headers:
        request_headers["Host"] = parts.netloc
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    method = method.upper()
    click.echo(f"request: {method} {target}")
    try:
        path, encoded, query = normalize_path(target)
    except GatewayError as exc:
        click.echo(f"result: 400 Bad Request ({exc.detail})")
        return
    host = host_of(request_headers)
    click.echo(f"normalized path: {path}" + (f"  host: {host}" if host else ""))
    match, lines = gateway.router.explain(method, path, host, request_headers)
    click.echo("routes, in match order:")
    for line in lines:
        click.echo(f"  {line}")
    route = match.route
    if route is None:
        if match.allowed:
            allowed = ", ".join(sorted(match.allowed))
            click.echo(f"result: 405 Method Not Allowed (allowed: {allowed})")
        else:
            click.echo("result: 404 Not Found (no route matches)")
        return
    plan: RoutePlan = route.payload
    click.echo(f"result: route {route.name!r} (routes[{route.index}])")
    if match.params:
        click.echo("path params: " + json.dumps(match.params))
    click.echo("plugin chain, in order:")
    if not plan.chain.plugins:
        click.echo("  (none)")
    for position, name in enumerate(plan.chain.plugins, 1):
        info = gateway.plugins.info[name]
        shown: Any = config_for_display(plan.chain.configs[name])
        click.echo(f"  {position}. {name} (priority {info.priority}): "
                   f"{json.dumps(shown, default=str, sort_keys=True)}")
    routed = Routed(path, encoded, query, "", False)
    for line in plan.handler.explain(route, method, match.params, routed, request_headers):
        click.echo(line)
