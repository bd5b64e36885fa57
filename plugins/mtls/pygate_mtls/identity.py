"""A verified client certificate -> the caller's identity."""

from __future__ import annotations

from pygate.plugin import ClientCert, Identity, Unauthorized

from .config import MtlsConfig

SOURCE = "mtls"
# id choice -> (the ``ssl`` module's SAN type, how a refusal names it)
SAN_TYPES = {
    "san:email": ("email", "email subject alternative name"),
    "san:dns": ("DNS", "DNS subject alternative name"),
    "san:uri": ("URI", "URI subject alternative name"),
}
KNOWN_MAX = 1024  # identities kept per config: a dict lookup for a returning certificate


def identify(config: MtlsConfig, cert: ClientCert | None) -> Identity | None:
    """The identity a verified client certificate stands for.

    ``None`` when there is no certificate and the plugin is ``optional``. The
    identity's id is the name ``config.id`` chooses; its consumer is the one whose
    subject is the certificate's (or ``None``: the certificate is still verified).
    ``fields`` hold ``subject``, ``serial`` and, when there is one, ``cn``.

    :raises Unauthorized: no certificate (unless ``optional``), or a certificate
        without the name ``config.id`` asks for.
    """
    if cert is None:
        if config.optional:
            return None
        raise Unauthorized("a client certificate is required")
    known = config.identities
    identity = known.get(cert)
    if identity is not None:
        return identity
    identity = make_identity(config, cert)
    if len(known) >= KNOWN_MAX:
        known.clear()
    known[cert] = identity
    return identity


def make_identity(config: MtlsConfig, cert: ClientCert) -> Identity:
    if config.id == "cn":
        name = cert.cn
        if not name:
            raise Unauthorized("the client certificate has no common name (CN)")
    else:
        kind, described = SAN_TYPES[config.id]
        name = next((value for san, value in cert.sans if san == kind and value), None)
        if name is None:
            raise Unauthorized(f"the client certificate has no {described}")
    fields = {"subject": cert.subject, "serial": cert.serial}
    if cert.cn:
        fields["cn"] = cert.cn
    return Identity(id=name, consumer=config.consumer_of(cert.subject), source=SOURCE,
                    fields=fields)
