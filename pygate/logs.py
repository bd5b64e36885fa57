"""The core's log lines: structlog, one line per event on stderr, JSON or console.

The access log (the ``logging`` plugin) renders its lines with structlog in the
format its ``format`` setting names; the core's own lines (lifecycle events:
``listening``, ``reloading``/``reloaded``/``reload refused``, ``target
healthy``/``target unhealthy``, ``breaker open``/``breaker closed``,
``draining``, ``stopped``...) follow the same format when the plugin is on
(:func:`log_format`), and are JSON otherwise. A reload that changes the format
switches it (:func:`set_log_format`): the renderer is looked up on every line,
so loggers cached on first use follow.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import TYPE_CHECKING, Any

import structlog

if TYPE_CHECKING:
    from .app import Gateway

LOG_FORMATS = ("json", "console")

# Fields on every log line of this process: a worker's number and pid (pygate.workers).
_process_fields: dict[str, Any] = {}


def set_process_fields(**fields: Any) -> None:
    """Add ``fields`` to every later log line of this process (replacing earlier ones)."""
    _process_fields.clear()
    _process_fields.update(fields)


def _add_process_fields(logger: Any, method: str,
                        event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key, value in _process_fields.items():
        event_dict.setdefault(key, value)
    return event_dict


_renderer: list[Any] = [structlog.processors.JSONRenderer()]


def _render(logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> Any:
    return _renderer[0](logger, method, event_dict)


def set_log_format(fmt: str) -> None:
    """Render this process's log lines as ``"json"`` or ``"console"`` from now on."""
    if fmt == "console":
        _renderer[0] = structlog.dev.ConsoleRenderer(colors=False, sort_keys=False,
                                                     pad_event_to=0)
    else:
        _renderer[0] = structlog.processors.JSONRenderer()


def log_format(gateway: Gateway) -> str:
    """The format of the core's log lines for ``gateway``: the ``logging`` plugin's
    ``format`` (its global table's, else the first route's) when the plugin is on,
    else ``"json"``, so that lifecycle lines look like the access lines."""
    if "logging" in gateway.plugins.info:
        for config in gateway.plugin_configs("logging"):
            fmt = getattr(config, "format", None)
            if fmt is None and isinstance(config, dict):
                fmt = config.get("format")
            if fmt in LOG_FORMATS:
                return str(fmt)
    return "json"


def configure_logging(level: str, fmt: str = "json") -> None:
    """structlog for the core's lines: one line per event on stderr, JSON or console
    (:func:`log_format`), with the process's fields (a worker's number and pid)."""
    numeric = getattr(logging, level.upper(), logging.INFO)
    logging.basicConfig(level=numeric, format="%(message)s")
    set_log_format(fmt)
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            _add_process_fields,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _render,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        # One write per line, so that the lines of several worker processes
        # sharing stderr never interleave.
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
