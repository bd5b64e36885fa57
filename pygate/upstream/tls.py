"""TLS to upstreams: one client ``SSLContext`` per upstream, built when the configuration loads.

``[upstreams.NAME] tls = { ca, verify, server_name, cert, key }`` (PRODUCT.md section 10)
says how the upstream's ``https://`` targets are verified and who the gateway is to them:

- ``ca``: a PEM file of the certificates to trust instead of the system's;
- ``verify = false``: no verification at all (logged as a warning when the gateway starts);
- ``server_name``: the name sent as SNI and checked against the certificate, instead of
  the target's host (a target given by address, a certificate issued for a name);
- ``cert`` and ``key``: a client certificate and its key, for upstreams that ask for one.

:func:`check_upstream_tls` reads those files when the configuration loads and reports
each problem with its key path (``upstreams.payments.tls.ca``); the paths are relative
to the configuration file (``base_dir``, which :class:`~.Upstream` is given too).
:func:`client_tls` builds what the upstream's pools, health checks and WebSocket
handshakes then share (the upstreams verified against the system CAs alone, without a
client certificate, share one context per process: loading the system CAs takes a while).
Nothing here runs per request or per connection.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import re
import ssl
import time
from dataclasses import dataclass
from pathlib import Path

import structlog

from ..config import Config, ConfigIssue, UpstreamConfig, key_path
from ..config.models import UpstreamTls
from ..pem import certificates, private_key, same_key

log = structlog.get_logger("pygate")

_HOST_LABEL = r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_HOST_NAME = re.compile(rf"{_HOST_LABEL}(\.{_HOST_LABEL})*\.?")


@dataclass(frozen=True, eq=False)
class ClientTls:
    """What an upstream's ``https`` connections use, built once at load.

    :param context: the client context (trusted CAs, verification, client certificate).
    :param server_name: the name sent as SNI and checked, instead of the target's host.
    :param verify: whether the targets' certificates are verified.
    :param digest: the settings and the bytes of the files read; two loads with the same
        digest built the same context (a reload keeps the running pools only then).
    :param cert_expires: when the client certificate expires (seconds since the epoch).
    """

    context: ssl.SSLContext
    server_name: str | None
    verify: bool
    digest: str
    cert_expires: float | None = None

    def hostname(self, host: str) -> str:
        """The name to send as SNI and check for a target whose URL has ``host``."""
        return self.server_name or host

    def warn(self, upstream: str) -> None:
        """Log, when the gateway starts, what weakens this upstream's TLS."""
        if not self.verify:
            log.warning("upstream TLS verification off", upstream=upstream,
                        detail="tls.verify = false: the certificates of its https targets "
                               "are not checked")
        if self.cert_expires is not None and self.cert_expires < time.time():
            log.warning("upstream client certificate expired", upstream=upstream,
                        not_after=time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                time.gmtime(self.cert_expires)))


class TlsSettingError(ValueError):
    """A ``tls`` table that cannot be used: ``problems`` holds ``(key, message)`` pairs, the
    key below ``tls`` (``"ca"``, ``"key"``...)."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"tls.{key}: {message}" for key, message in problems))


def has_https_target(config: UpstreamConfig) -> bool:
    return any(target.url.startswith("https://") for target in config.targets)


def client_tls(tls: UpstreamTls | None, *, system_cas: bool = True,
               base_dir: str | Path = ".") -> ClientTls:
    """The TLS settings of an upstream with ``https`` targets (``tls`` may be absent).

    Relative paths are taken from ``base_dir``, the configuration file's folder.

    :param system_cas: load the system's trusted CAs when ``tls.ca`` is not set (a check
        that only reads the files does without).
    :raise TlsSettingError: a file that cannot be read or used, a key without its
        certificate (or the other way round), a key that does not match its certificate.
    """
    if tls is None:
        return ClientTls(_system_context() if system_cas else _bare_context(), None, True,
                         _digest(None, True, []))
    # the files as absolute paths (read, loaded, and named in messages so), on a copy:
    # the loaded configuration keeps what its file says
    tls = tls.model_copy(update={
        field: str((Path(base_dir) / Path(value).expanduser()).absolute())
        for field in ("ca", "cert", "key") if (value := getattr(tls, field)) is not None})
    problems: list[tuple[str, str]] = []
    if tls.server_name is not None and not _valid_server_name(tls.server_name):
        problems.append(("server_name", 'expected a host name like "payments.internal", '
                                        f"found {tls.server_name!r}"))
    if tls.cert is not None and tls.key is None:
        problems.append(("key", "required with tls.cert (the client certificate's key)"))
    if tls.key is not None and tls.cert is None:
        problems.append(("cert", "required with tls.key (the certificate of that key)"))
    ca = _read(tls.ca, "ca", problems) if tls.ca is not None else None
    cert = _read(tls.cert, "cert", problems) if tls.cert is not None else None
    key = _read(tls.key, "key", problems) if tls.key is not None else None
    if ca is not None and not certificates(ca):
        problems.append(("ca", f"{tls.ca!r} holds no PEM certificate"))
    expires = None
    if cert is not None and key is not None:
        expires = _check_pair(cert, key, tls, problems)
    if problems:
        raise TlsSettingError(problems)
    if tls.verify and ca is None and tls.cert is None:
        context = _system_context() if system_cas else _bare_context()
    else:  # a context of its own: the shared one is never changed
        context = _bare_context()
        if not tls.verify:
            context.check_hostname = False  # first: CERT_NONE refuses a name check
            context.verify_mode = ssl.CERT_NONE
        elif ca is not None:
            try:
                context.load_verify_locations(cadata=ca.decode("ascii", "replace"))
            except ssl.SSLError as exc:
                raise TlsSettingError([("ca", f"{tls.ca!r}: {_openssl_text(exc)}")]) from None
        elif system_cas:
            context.load_default_certs()
        if tls.cert is not None and tls.key is not None:
            try:
                context.load_cert_chain(tls.cert, tls.key, password=_no_password)
            except (ssl.SSLError, OSError, ValueError) as exc:
                raise TlsSettingError([("cert", f"{tls.cert!r} and {tls.key!r} cannot be "
                                                f"used together: {_openssl_text(exc)}")]
                                      ) from None
    files = [data for data in (ca, cert, key) if data is not None]
    return ClientTls(context, tls.server_name, tls.verify,
                     _digest(tls.server_name, tls.verify, files), expires)


def check_upstream_tls(config: Config) -> list[ConfigIssue]:
    """Every upstream's ``tls`` table, checked when the configuration loads.

    The files are read (relative to the configuration file); each problem is an issue
    at its key path. A ``tls`` table on an upstream
    without any ``https://`` target is an error: it would not apply to anything, and a
    plain-text upstream that was meant to be verified is not a thing to let pass.
    """
    issues: list[ConfigIssue] = []
    for name, upstream in config.upstreams.items():
        tls = upstream.tls
        if tls is None:
            continue
        where = ("upstreams", name, "tls")
        if not has_https_target(upstream):
            issues.append(ConfigIssue(key_path(where), "set, but no target of this upstream "
                                      "is https:// (tls applies to https targets only)"))
        try:
            client_tls(tls, system_cas=False, base_dir=config.base_dir)
        except TlsSettingError as exc:
            issues.extend(ConfigIssue(key_path((*where, key)), message)
                          for key, message in exc.problems)
    return issues


# -- building blocks ---------------------------------------------------------------


@functools.cache
def _system_context() -> ssl.SSLContext:
    """The context of upstreams verified against the system CAs without a client
    certificate: one per process (loading the system CAs takes a while), never changed
    after it is built."""
    context = ssl.create_default_context()
    context.set_alpn_protocols(["http/1.1"])
    return context


def _bare_context() -> ssl.SSLContext:
    """A client context that verifies names and certificates, trusting nothing yet."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # TLS 1.2+, CERT_REQUIRED, names checked
    context.set_alpn_protocols(["http/1.1"])  # upstream calls are HTTP/1.1
    return context


def _read(path: str, field: str, problems: list[tuple[str, str]]) -> bytes | None:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        problems.append((field, f"file not found: {path!r}"))
    except IsADirectoryError:
        problems.append((field, f"{path!r} is a directory, not a PEM file"))
    except OSError as exc:
        problems.append((field, f"cannot read {path!r}: {exc.strerror or exc}"))
    return None


def _check_pair(cert: bytes, key: bytes, tls: UpstreamTls,
                problems: list[tuple[str, str]]) -> float | None:
    """Check a client certificate and its key; the certificate's expiry, when it reads."""
    chain = certificates(cert)
    if not chain:
        problems.append(("cert", f"{tls.cert!r} holds no PEM certificate"))
    private = private_key(key)
    if private == "encrypted":
        problems.append(("key", f"{tls.key!r} is encrypted; pygate reads unencrypted PEM "
                                "keys (protect the file instead)"))
        return None
    if private == "unusable":
        problems.append(("key", f"{tls.key!r} holds no PEM private key pygate can use"))
        return None
    if not chain or isinstance(private, str):
        return None
    if not same_key(chain[0], private):
        problems.append(("key", f"{tls.key!r} does not match the certificate in "
                                f"{tls.cert!r}"))
        return None
    return chain[0].not_valid_after_utc.timestamp()


def _no_password() -> bytes:
    raise ValueError("the key is encrypted")


def _valid_server_name(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return len(name) <= 253 and _HOST_NAME.fullmatch(name) is not None


_OPENSSL_NOISE = re.compile(r"^\[[A-Z0-9_]+: [A-Z0-9_]+\] |\s*\(_ssl\.c:\d+\)$")


def _openssl_text(exc: BaseException) -> str:
    """``[SSL: X] what happened (_ssl.c:123)`` -> ``what happened``."""
    text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return _OPENSSL_NOISE.sub("", text) or type(exc).__name__


def handshake_failure(exc: ssl.SSLError) -> str:
    """Why a TLS handshake with a target failed, for logs and the breaker (not clients)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {exc.verify_message}"
    return _openssl_text(exc)


def _digest(server_name: str | None, verify: bool, files: list[bytes]) -> str:
    digest = hashlib.sha256(f"{server_name}\0{verify}\0".encode())
    for data in files:
        digest.update(hashlib.sha256(data).digest())
    return digest.hexdigest()
