"""mtls: the caller's identity from the client certificate the TLS listener verified.

With ``[gateway.tls] client_ca`` the listener asks clients for a certificate and
verifies it against that CA; the core hands the verified certificate to plugins as
``ctx.client_cert`` (PRODUCT.md section 10). This plugin's ``authenticate`` turns it
into ``Identity(id=<CN or a SAN>, consumer=<the consumer named for its subject>,
source="mtls")``; a request without one gets 401 (or passes anonymously with
``optional = true``).
"""

from __future__ import annotations

from pydantic import BaseModel

from pygate.plugin import Context, Identity, hookimpl

from .config import MtlsConfig
from .identity import identify

__version__ = "0.1.0"

PRIORITY = 2600  # Kong's mtls-auth: before every other authenticate plugin


@hookimpl
def config_schema() -> type[BaseModel]:
    return MtlsConfig


@hookimpl
def authenticate(ctx: Context) -> Identity | None:
    return identify(ctx.config, ctx.client_cert)


__all__ = ["PRIORITY", "MtlsConfig", "authenticate", "config_schema"]
