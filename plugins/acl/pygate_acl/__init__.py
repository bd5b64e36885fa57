"""acl: allow or deny a route by identity roles, identity ids or consumer names.

Runs in ``admit``, after the ``authenticate`` plugins (``jwt``, ``key-auth``...)
have set ``ctx.identity``. A refused caller gets a 403 problem document.
"""

from __future__ import annotations

from pydantic import BaseModel

from pygate.plugin import Context, Forbidden, hookimpl

from .config import AclConfig
from .rules import refusal

__version__ = "0.1.0"

PRIORITY = 950


@hookimpl
def config_schema() -> type[BaseModel]:
    return AclConfig


@hookimpl
def admit(ctx: Context) -> None:
    config: AclConfig = ctx.config
    reason = refusal(config.rules, ctx.identity)
    if reason is not None:
        raise Forbidden(reason)


__all__ = ["PRIORITY", "AclConfig", "admit", "config_schema"]
