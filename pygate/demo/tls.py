"""The demo's HTTPS mode (``make serve-https``): a local CA, a certificate for localhost
signed by it, and the demo configuration with ``[gateway.tls]`` added.

Everything is written beside the configuration: ``.demo-tls/`` (the CA's certificate to
give curl, the gateway's chain and key) and ``NAME.https.toml`` (the same file, its
``listen`` address moved to ``redirect_http`` and the TLS listener on the port asked
for), so the configuration's relative paths still resolve. The certificates are made
once and kept until they come within a week of their end.
"""

from __future__ import annotations

import datetime
import ipaddress
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

FOLDER = ".demo-tls"
VALID = datetime.timedelta(days=90)
RENEW_BEFORE = datetime.timedelta(days=7)
NAMES = ("localhost",)
ADDRESSES = ("127.0.0.1", "::1")


@dataclass(frozen=True)
class DemoTls:
    """Where the demo's HTTPS mode put its files."""

    ca: Path  # the CA certificate: curl --cacert
    cert: Path  # the gateway's chain (its certificate, then the CA's)
    key: Path
    config: Path  # the configuration with [gateway.tls]
    https: str  # the TLS listener's HOST:PORT
    http: str  # the redirecting listener's HOST:PORT


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "pygate demo"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _fresh(cert_path: Path) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except (OSError, ValueError):
        return False
    return cert.not_valid_after_utc - datetime.datetime.now(datetime.UTC) > RENEW_BEFORE


def make_certificates(folder: Path) -> tuple[Path, Path, Path]:
    """``(ca, chain, key)`` in ``folder``: a CA and a certificate for localhost, 127.0.0.1
    and ::1 signed by it (kept while they have more than a week to run)."""
    ca_path, cert_path, key_path = folder / "ca.pem", folder / "gateway.pem", folder / "gateway.key"
    if _fresh(cert_path) and ca_path.exists() and key_path.exists():
        return ca_path, cert_path, key_path
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder()
          .subject_name(_name("pygate demo CA")).issuer_name(_name("pygate demo CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now).not_valid_after(now + VALID)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in NAMES]
    sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in ADDRESSES]
    cert = (x509.CertificateBuilder()
            .subject_name(_name("localhost")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + VALID)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    ca_path.write_bytes(ca.public_bytes(pem))
    cert_path.write_bytes(cert.public_bytes(pem) + ca.public_bytes(pem))
    key_path.write_bytes(_pem(key))
    key_path.chmod(0o600)
    return ca_path, cert_path, key_path


_LISTEN = re.compile(r'^(\s*listen\s*=\s*)"([^"]*)"', re.MULTILINE)


def https_config(config: Path, port: int) -> DemoTls:
    """The demo's HTTPS files for ``config``: TLS on 127.0.0.1:``port``, and its
    ``gateway.listen`` address answering 308 to it (``redirect_http``)."""
    text = config.read_text(encoding="utf-8")
    gateway = tomllib.loads(text).get("gateway", {})
    if "tls" in gateway:
        raise ValueError(f"{config} has a [gateway.tls] table already")
    http = str(gateway.get("listen", "127.0.0.1:8080"))
    https = f"127.0.0.1:{port}"
    ca, cert, key = make_certificates(config.parent / FOLDER)
    header = text.find("[gateway]")
    match = _LISTEN.search(text, header) if header >= 0 else None
    following = text.find("\n[", header + 1)  # the next table's header
    if match is None or 0 <= following < match.start():
        raise ValueError(f"{config}: no listen key in its [gateway] table")
    text = (text[:match.start()] + f'{match.group(1)}"{https}"\nredirect_http = "{http}"'
            + text[match.end():])
    text += (f'\n# added by the demo\'s HTTPS mode (pygate/demo/tls.py)\n[gateway.tls]\n'
             f'cert = "{FOLDER}/{cert.name}"\nkey = "{FOLDER}/{key.name}"\nhsts = "1d"\n')
    out = config.with_name(f"{config.stem}.https.toml")
    out.write_text(text, encoding="utf-8")
    return DemoTls(ca=ca, cert=cert, key=key, config=out, https=https, http=http)
