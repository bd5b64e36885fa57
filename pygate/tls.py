"""TLS at the edge (PRODUCT.md section 10): the listener's certificates and the client
certificate a request came with (the plain listener that redirects to https is
:mod:`pygate.redirect`).

Everything here is decided when a configuration loads (:func:`listener_tls`, called
by :func:`pygate.app.build_gateway`, so ``pygate check``, ``pygate serve`` and every
reload read the files again): each certificate and key is read, parsed with
``cryptography`` (a file that is not PEM, a key that does not match its certificate,
an expired certificate are configuration errors naming the key path), and loaded into
its own :class:`ssl.SSLContext`. The first one, ``cert``, is the default; with
``certs``, an SNI callback switches a handshake to the context whose certificate
names the server name the client asked for (exact names before ``*.`` wildcards,
which match one label; the first certificate in file order wins a tie). The
listener's sockets take :attr:`ListenerTls.context` per accepted connection
(:class:`pygate.listener.AcceptSite`), so a reload replaces it for new connections
while open ones keep theirs.

Every context is configured alike, since a handshake switched by SNI keeps some
settings of the first context and takes others from the second: TLS 1.2 or 1.3 at
least, forward-secret AEAD ciphers only for TLS 1.2 (HTTP/2 forbids the others), no
compression, no renegotiation, the server's cipher order, ALPN ``h2`` (when
``http2``) and ``http/1.1``, and with ``client_ca`` the client certificate asked for
and verified against it.
"""

from __future__ import annotations

import ssl
import sys
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from .config import Config, ConfigIssue
from .config.models import TlsSection
from .context import ClientCert
from .pem import certificates, private_key, same_key

log = structlog.get_logger("pygate")

TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL"
"""The TLS 1.2 cipher suites offered: forward secrecy and AEAD only (RFC 9113 section
9.2.2 refuses the others for HTTP/2). TLS 1.3 suites are OpenSSL's, all of them AEAD."""

_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}

_DER = serialization.Encoding.DER


# ---------------------------------------------------------------------------
# The listener's certificates, built at load
# ---------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Certificate:
    """One certificate the listener serves.

    :param where: its key path, ``gateway.tls`` or ``gateway.tls.certs[N]``.
    :param names: the DNS names of its subject alternative names, lower-cased.
    :param serial: its serial number, hexadecimal.
    :param not_after: when it expires.
    :param context: the TLS context that serves it.
    """

    where: str
    names: tuple[str, ...]
    serial: str
    not_after: datetime
    context: ssl.SSLContext


class _Sni:
    """The SNI callback of the default context: a server name to the context to switch to.

    It holds the other certificates' contexts only (the default one is ``None``,
    "stay"), so the default context and its callback make no reference cycle.
    """

    __slots__ = ("contexts", "exact", "wildcard")

    def __init__(self, certificates: Sequence[Certificate]) -> None:
        self.contexts: tuple[ssl.SSLContext | None, ...] = (
            None, *(c.context for c in certificates[1:]))
        self.exact: dict[str, int] = {}
        self.wildcard: dict[str, int] = {}  # "*.example.com" under "example.com"
        for index, certificate in enumerate(certificates):
            for name in certificate.names:
                if name.startswith("*."):
                    self.wildcard.setdefault(name[2:], index)
                elif "*" not in name:
                    self.exact.setdefault(name, index)

    def index(self, server_name: str) -> int:
        """The position of the certificate for ``server_name`` (0, the default, if none)."""
        name = server_name.lower().rstrip(".")
        found = self.exact.get(name)
        if found is not None:
            return found
        label, dot, parent = name.partition(".")
        return self.wildcard.get(parent, 0) if label and dot else 0

    def __call__(self, ssl_object: Any, server_name: str | None,
                 context: ssl.SSLContext) -> None:
        if server_name:
            chosen = self.contexts[self.index(server_name)]
            if chosen is not None:
                ssl_object.context = chosen


_previous_hook = sys.unraisablehook


def _unreadable_server_name(unraisable: Any) -> None:
    exc = unraisable.exc_value
    if (isinstance(exc, UnicodeDecodeError) and exc.encoding == "ascii"
            and isinstance(unraisable.object, bytes) and exc.object == unraisable.object):
        log.debug("TLS server name not ASCII; handshake refused",
                  server_name=repr(unraisable.object[:100]))
        return
    _previous_hook(unraisable)


def quiet_unreadable_server_names() -> None:
    """Log a client's non-ASCII server name at debug, not as a traceback.

    The ``ssl`` module decodes the SNI name as ASCII before it calls the SNI
    callback; when that fails it reports the error to :func:`sys.unraisablehook`
    (by default a traceback on stderr) and the handshake fails. This hook takes
    that one case and hands everything else to the hook it replaced.
    """
    global _previous_hook
    if sys.unraisablehook is not _unreadable_server_name:
        _previous_hook = sys.unraisablehook
        sys.unraisablehook = _unreadable_server_name


class ListenerTls:
    """What the TLS listener serves for one configuration (``gateway.tls``).

    :attr:`context` goes to every listening socket; :attr:`hsts` is the
    ``Strict-Transport-Security`` value for responses over TLS (or ``None``);
    :attr:`client_certs` tells whether clients are asked for a certificate (and
    requests then carry ``ctx.client_cert``); :attr:`http2` whether ALPN offers ``h2``.
    """

    __slots__ = ("_sni", "certificates", "client_certs", "context", "hsts", "http2")

    def __init__(self, section: TlsSection, certificates: Sequence[Certificate]) -> None:
        self.certificates = tuple(certificates)
        self.context = certificates[0].context
        self.http2 = section.http2
        self.client_certs = section.client_ca is not None
        self.hsts = f"max-age={int(section.hsts)}" if section.hsts is not None else None
        self._sni = _Sni(certificates)
        if len(certificates) > 1:
            self.context.sni_callback = self._sni
            quiet_unreadable_server_names()

    def choose(self, server_name: str | None) -> Certificate:
        """The certificate a client asking for ``server_name`` (SNI) is served."""
        return self.certificates[self._sni.index(server_name) if server_name else 0]


def listener_tls(config: Config) -> tuple[ListenerTls | None, list[ConfigIssue]]:
    """Read and check ``[gateway.tls]``'s files and build the listener's contexts.

    :return: the listener's TLS (``None`` without ``[gateway.tls]``), or the
        problems found, each with its key path.
    """
    section = config.gateway.tls
    if section is None:
        return None, []
    issues: list[ConfigIssue] = []
    client_ca: bytes | None = None
    if section.client_ca is not None:
        client_ca = _read_client_ca(config.resolve_path(section.client_ca), issues)
    pairs = [("gateway.tls", section.cert, section.key),
             *((f"gateway.tls.certs[{i}]", pair.cert, pair.key)
               for i, pair in enumerate(section.certs))]
    certificates = []
    for where, cert, key in pairs:
        certificate = _load_pair(config, section, client_ca, where, cert, key, issues)
        if certificate is not None:
            certificates.append(certificate)
    if issues:
        return None, issues
    return ListenerTls(section, certificates), []


def server_context(section: TlsSection, client_ca: bytes | None) -> ssl.SSLContext:
    """A server context with every setting but the certificate (see the module's text)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = _VERSIONS[section.min_version]
    context.options |= (ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
                        | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_SINGLE_ECDH_USE)
    context.set_ciphers(TLS12_CIPHERS)
    context.set_alpn_protocols(["h2", "http/1.1"] if section.http2 else ["http/1.1"])
    if client_ca is not None:
        context.load_verify_locations(cadata=client_ca)
        context.verify_mode = (ssl.CERT_REQUIRED if section.client_cert == "required"
                               else ssl.CERT_OPTIONAL)
    return context


def _read(path: Path, where: str, issues: list[ConfigIssue]) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError as exc:
        issues.append(ConfigIssue(where, f"cannot read {path}: {exc.strerror or exc}"))
        return None


def _read_client_ca(path: Path, issues: list[ConfigIssue]) -> bytes | None:
    """The CA certificates in ``path`` as DER bytes (``cadata``), or None with an issue."""
    where = "gateway.tls.client_ca"
    data = _read(path, where, issues)
    if data is None:
        return None
    cas = certificates(data)
    if not cas:
        issues.append(ConfigIssue(where, f"{path} holds no PEM certificate "
                                  "(-----BEGIN CERTIFICATE-----)"))
        return None
    return b"".join(ca.public_bytes(_DER) for ca in cas)


def _load_pair(config: Config, section: TlsSection, client_ca: bytes | None, where: str,
               cert: str, key: str, issues: list[ConfigIssue]) -> Certificate | None:
    """One certificate and its key, checked and loaded into a context; None with issues."""
    before = len(issues)
    cert_path, key_path = config.resolve_path(cert), config.resolve_path(key)
    cert_data = _read(cert_path, f"{where}.cert", issues)
    key_data = _read(key_path, f"{where}.key", issues)
    chain: list[x509.Certificate] = []
    if cert_data is not None:
        chain = certificates(cert_data)
        if not chain:
            issues.append(ConfigIssue(f"{where}.cert", f"{cert_path} holds no PEM certificate "
                                      "(-----BEGIN CERTIFICATE-----)"))
    private: Any = None
    if key_data is not None:
        private = private_key(key_data)
        if private == "encrypted":
            issues.append(ConfigIssue(f"{where}.key", f"{key_path} is encrypted; pygate "
                                      "needs the key without a passphrase"))
        elif private == "unusable":
            issues.append(ConfigIssue(f"{where}.key", f"{key_path} holds no PEM private key "
                                      "(-----BEGIN PRIVATE KEY-----)"))
    if not chain or private is None or isinstance(private, str):
        return None
    leaf = chain[0]
    not_after = leaf.not_valid_after_utc
    if not_after <= datetime.now(UTC):
        issues.append(ConfigIssue(f"{where}.cert", f"the certificate in {cert_path} expired "
                                  f"on {not_after:%Y-%m-%d %H:%M:%S} UTC"))
    if not same_key(leaf, private):
        issues.append(ConfigIssue(f"{where}.key", f"{key_path} is not the key of the "
                                  f"certificate in {cert_path}"))
    names = _dns_names(leaf)
    if where != "gateway.tls" and not names:
        issues.append(ConfigIssue(f"{where}.cert", f"the certificate in {cert_path} names no "
                                  "DNS name (subjectAltName), so SNI can never choose it"))
    if len(issues) > before:
        return None
    context = server_context(section, client_ca)
    try:
        context.load_cert_chain(cert_path, key_path)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        reason = getattr(exc, "reason", None) or str(exc)
        issues.append(ConfigIssue(f"{where}.cert", f"cannot use {cert_path} with {key_path}: "
                                  f"{reason}"))
        return None
    return Certificate(where, names, f"{leaf.serial_number:X}", not_after, context)


def _dns_names(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return ()
    return tuple(name.lower().rstrip(".") for name in san.value.get_values_for_type(x509.DNSName))


# ---------------------------------------------------------------------------
# The client certificate, once per connection
# ---------------------------------------------------------------------------

_CLIENT_CERTS: weakref.WeakKeyDictionary[Any, ClientCert | None] = weakref.WeakKeyDictionary()
"""Each TLS connection's verified client certificate (or None), by its SSL object."""

_SAN_TYPES: dict[type[x509.GeneralName], str] = {
    x509.DNSName: "DNS", x509.RFC822Name: "email", x509.UniformResourceIdentifier: "URI",
    x509.IPAddress: "IP Address", x509.DirectoryName: "DirName",
    x509.RegisteredID: "Registered ID",
}


def client_cert_of(transport: Any) -> ClientCert | None:
    """The client certificate verified during the handshake of ``transport``'s connection.

    Built on the connection's first request and kept for its others. Only call
    it when the listener asks for client certificates (a certificate present
    was then verified against ``client_ca``).
    """
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    if ssl_object is None:
        return None
    try:
        return _CLIENT_CERTS[ssl_object]
    except KeyError:
        pass
    der = ssl_object.getpeercert(binary_form=True)
    found = client_cert(der) if der else None
    _CLIENT_CERTS[ssl_object] = found
    return found


def client_cert(der: bytes) -> ClientCert | None:
    """A DER certificate as plugins see it (None if ``cryptography`` cannot read it)."""
    try:
        cert = x509.load_der_x509_certificate(der)
        subject = cert.subject
        common = subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        cn = common[0].value if common else None
        try:
            general = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            general = None
        sans = tuple(_san(name) for name in general) if general is not None else ()
        return ClientCert(subject=subject.rfc4514_string(),
                          cn=cn if isinstance(cn, str) else None, sans=sans,
                          serial=f"{cert.serial_number:X}",
                          not_after=cert.not_valid_after_utc.timestamp())
    except ValueError as exc:
        log.debug("client certificate not readable", error=str(exc))
        return None


def _san(name: x509.GeneralName) -> tuple[str, str]:
    kind = _SAN_TYPES.get(type(name), "othername")
    value = name.value
    if isinstance(value, x509.Name):
        return kind, value.rfc4514_string()
    if isinstance(value, x509.ObjectIdentifier):
        return kind, value.dotted_string
    if isinstance(value, str):
        return kind, value
    return kind, str(value) if kind == "IP Address" else "<unsupported>"


__all__ = [
    "TLS12_CIPHERS",
    "Certificate",
    "ListenerTls",
    "client_cert",
    "client_cert_of",
    "listener_tls",
    "server_context",
]
