"""pygate.tls without a server: the listener's contexts, SNI, configuration errors, the
client certificate and the redirect's URL.

Handshakes run in memory (two ``ssl.MemoryBIO`` pairs), with certificates made by
``trustme`` for each test; tests/test_tls_functional.py does the same over sockets
against ``pygate serve``.
"""

from __future__ import annotations

import datetime
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme

from pygate.app import Gateway, build_gateway
from pygate.config import ConfigError, load
from pygate.redirect import redirect_host, redirect_target
from pygate.tls import client_cert, client_cert_of
from pygate.watch import named_files

# ---------------------------------------------------------------------------
# Certificates (shared with tests/test_tls_functional.py)
# ---------------------------------------------------------------------------


@dataclass
class Pki:
    """A CA made for one test, and the files it issues into ``folder``."""

    folder: Path
    ca: trustme.CA

    @classmethod
    def make(cls, folder: Path) -> Pki:
        folder.mkdir(parents=True, exist_ok=True)
        return cls(folder, trustme.CA())

    def issue(self, name: str, *identities: str, **options: Any) -> trustme.LeafCert:
        """Write ``name.pem`` (the chain) and ``name.key`` for a new certificate."""
        leaf = self.ca.issue_cert(*identities, **options)
        self.write(name, leaf)
        return leaf

    def write(self, name: str, leaf: trustme.LeafCert) -> None:
        (self.folder / f"{name}.pem").write_bytes(b"".join(b.bytes() for b in leaf.cert_chain_pems))
        leaf.private_key_pem.write_to_path(str(self.folder / f"{name}.key"))

    def ca_file(self, name: str = "ca") -> Path:
        path = self.folder / f"{name}.pem"
        self.ca.cert_pem.write_to_path(str(path))
        return path

    def client(self, *, server_name_check: bool = True, cert: trustme.LeafCert | None = None,
               maximum: ssl.TLSVersion | None = None) -> ssl.SSLContext:
        """A client context trusting this CA (HTTP/1.1 by ALPN), with ``cert`` if given."""
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        context.check_hostname = server_name_check
        context.set_alpn_protocols(["http/1.1"])
        if maximum is not None:
            context.maximum_version = maximum
        if cert is not None:
            cert.configure_cert(context)
        return context


def serial_of(leaf: trustme.LeafCert) -> str:
    from cryptography import x509

    return f"{x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes()).serial_number:X}"


def dns_names(peer: dict[str, Any]) -> list[str]:
    """The DNS names of a peer certificate as ``SSLObject.getpeercert()`` gives it."""
    return [value for kind, value in peer.get("subjectAltName", ()) if kind == "DNS"]


PAIR = 'cert = "certs/gw.pem"\nkey = "certs/gw.key"\n'
ROUTE = '\n[[routes]]\nname = "api"\npath = "/api"\nupstream = "http://127.0.0.1:1"\n'


def gateway_with(folder: Path, tls: str, gateway: str = "") -> Gateway:
    """``build_gateway`` of a pygate.toml in ``folder`` with this ``[gateway.tls]`` body."""
    path = folder / "pygate.toml"
    path.write_text(f"[gateway]\n{gateway}\n[gateway.tls]\n{tls}\n{ROUTE}")
    return build_gateway(load(path))


def errors_of(folder: Path, tls: str, gateway: str = "") -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        gateway_with(folder, tls, gateway)
    return {issue.path: issue.message for issue in info.value.issues}


def handshake(server: ssl.SSLContext, client: ssl.SSLContext,
              server_name: str | None) -> tuple[ssl.SSLObject, ssl.SSLObject]:
    """A whole TLS handshake in memory: (the client's end, the server's end)."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client_end = client.wrap_bio(c_in, c_out, server_hostname=server_name)
    server_end = server.wrap_bio(s_in, s_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(8):
        for side, end, out, peer_in in (("client", client_end, c_out, s_in),
                                        ("server", server_end, s_out, c_in)):
            if not done[side]:
                try:
                    end.do_handshake()
                    done[side] = True
                except ssl.SSLWantReadError:
                    pass
            peer_in.write(out.read())
        if all(done.values()):
            return client_end, server_end
    raise AssertionError("the handshake did not finish")


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki.make(tmp_path / "certs")


# ---------------------------------------------------------------------------
# The listener's contexts
# ---------------------------------------------------------------------------


def test_one_certificate_serves_http11_by_alpn_and_h2_only_when_http2(
        tmp_path: Path, pki: Pki) -> None:
    pki.issue("gw", "gateway.test")
    tls = 'cert = "certs/gw.pem"\nkey = "certs/gw.key"\n'
    gateway = gateway_with(tmp_path, tls)
    assert gateway.tls is not None and gateway.tls.http2
    both = pki.client()
    both.set_alpn_protocols(["h2", "http/1.1"])
    client_end, _ = handshake(gateway.tls.context, both, "gateway.test")
    assert client_end.selected_alpn_protocol() == "h2"
    assert client_end.version() == "TLSv1.3"
    client_end, _ = handshake(gateway.tls.context, pki.client(), "gateway.test")
    assert client_end.selected_alpn_protocol() == "http/1.1"

    without = gateway_with(tmp_path, tls + "http2 = false\n").tls
    assert without is not None
    client_end, _ = handshake(without.context, both, "gateway.test")
    assert client_end.selected_alpn_protocol() == "http/1.1"
    assert without.hsts is None and not without.client_certs


def test_tls12_is_accepted_by_default_and_refused_with_min_version_13(
        tmp_path: Path, pki: Pki) -> None:
    pki.issue("gw", "gateway.test")
    tls = 'cert = "certs/gw.pem"\nkey = "certs/gw.key"\n'
    old_client = pki.client(maximum=ssl.TLSVersion.TLSv1_2)
    default = gateway_with(tmp_path, tls).tls
    assert default is not None
    client_end, _ = handshake(default.context, old_client, "gateway.test")
    assert client_end.version() == "TLSv1.2"
    # TLS 1.2 suites: forward-secret AEAD only
    assert client_end.cipher()[0].startswith("ECDHE-") and "GCM" in client_end.cipher()[0]

    strict = gateway_with(tmp_path, tls + 'min_version = "1.3"\n').tls
    assert strict is not None
    with pytest.raises(ssl.SSLError):
        handshake(strict.context, old_client, "gateway.test")
    client_end, _ = handshake(strict.context, pki.client(), "gateway.test")
    assert client_end.version() == "TLSv1.3"


@pytest.mark.parametrize(("hsts", "header"), [
    ("365d", "max-age=31536000"), ("1h", "max-age=3600"), ("0s", "max-age=0")])
def test_hsts_is_a_max_age_in_seconds(tmp_path: Path, pki: Pki, hsts: str, header: str) -> None:
    pki.issue("gw", "gateway.test")
    tls = gateway_with(tmp_path, f'{PAIR}hsts = "{hsts}"\n').tls
    assert tls is not None and tls.hsts == header


def test_a_bad_hsts_is_an_error(tmp_path: Path, pki: Pki) -> None:
    pki.issue("gw", "gateway.test")
    (tmp_path / "pygate.toml").write_text(f'[gateway.tls]\n{PAIR}hsts = "a year"\n{ROUTE}')
    with pytest.raises(ConfigError) as info:
        load(tmp_path / "pygate.toml")
    assert [i.path for i in info.value.issues] == ["gateway.tls.hsts"]


# ---------------------------------------------------------------------------
# SNI
# ---------------------------------------------------------------------------

SNI_TLS = """cert = "certs/default.pem"
key = "certs/default.key"
certs = [
  { cert = "certs/wild.pem", key = "certs/wild.key" },
  { cert = "certs/api.pem", key = "certs/api.key" },
  { cert = "certs/other.pem", key = "certs/other.key" },
]
"""


@pytest.mark.parametrize(("server_name", "served"), [
    ("api.example.com", "gateway.tls.certs[1]"),  # an exact name beats an earlier wildcard
    ("API.Example.COM.", "gateway.tls.certs[1]"),  # case and the root dot do not matter
    ("shop.example.com", "gateway.tls.certs[0]"),  # *.example.com: one label
    ("a.shop.example.com", "gateway.tls"),  # two labels: no wildcard matches
    ("example.com", "gateway.tls"),  # the wildcard's own domain is not under it
    ("other.test", "gateway.tls.certs[2]"),
    ("gateway.test", "gateway.tls"),
    ("unknown.test", "gateway.tls"),
    (None, "gateway.tls"),  # no SNI at all
])
def test_sni_chooses_the_certificate_naming_the_server_name(
        tmp_path: Path, pki: Pki, server_name: str | None, served: str) -> None:
    pki.issue("default", "gateway.test")
    pki.issue("wild", "*.example.com")
    pki.issue("api", "api.example.com")
    pki.issue("other", "other.test")
    tls = gateway_with(tmp_path, SNI_TLS).tls
    assert tls is not None
    chosen = tls.choose(server_name)
    assert chosen.where == served
    # and the handshake serves it
    client_end, _ = handshake(tls.context, pki.client(server_name_check=False), server_name)
    peer = client_end.getpeercert()
    assert peer is not None and tuple(dns_names(peer)) == chosen.names


def test_the_default_certificate_is_served_when_the_name_check_would_fail(
        tmp_path: Path, pki: Pki) -> None:
    pki.issue("default", "gateway.test")
    pki.issue("wild", "*.example.com")
    tls = gateway_with(tmp_path, 'cert = "certs/default.pem"\nkey = "certs/default.key"\n'
                       'certs = [{ cert = "certs/wild.pem", key = "certs/wild.key" }]\n').tls
    assert tls is not None
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(tls.context, pki.client(), "deep.shop.example.com")
    assert tls.choose(".example.com").where == "gateway.tls"  # an empty label is no label


# ---------------------------------------------------------------------------
# Configuration errors, each with its key path
# ---------------------------------------------------------------------------

def test_unreadable_files_are_errors_naming_their_keys(tmp_path: Path, pki: Pki) -> None:
    errors = errors_of(tmp_path, 'cert = "certs/none.pem"\nkey = "certs/none.key"\n'
                       'client_ca = "certs/no-ca.pem"\n')
    assert set(errors) == {"gateway.tls.cert", "gateway.tls.key", "gateway.tls.client_ca"}
    folder = tmp_path / "certs"
    assert errors["gateway.tls.cert"] == (f"cannot read {folder / 'none.pem'}: "
                                          "No such file or directory")
    assert errors["gateway.tls.key"].startswith(f"cannot read {folder / 'none.key'}")
    assert errors["gateway.tls.client_ca"].startswith(f"cannot read {folder / 'no-ca.pem'}")


def test_files_that_are_not_pem_are_errors(tmp_path: Path, pki: Pki) -> None:
    pki.issue("gw", "gateway.test")
    (tmp_path / "certs" / "garbage.txt").write_text("not a certificate\n")
    # the key file given as the certificate, the certificate as the key
    errors = errors_of(tmp_path, 'cert = "certs/gw.key"\nkey = "certs/gw.pem"\n'
                       'client_ca = "certs/garbage.txt"\n')
    assert "holds no PEM certificate" in errors["gateway.tls.cert"]
    assert "holds no PEM private key" in errors["gateway.tls.key"]
    assert "holds no PEM certificate" in errors["gateway.tls.client_ca"]


def test_a_key_of_another_certificate_is_an_error_on_that_key(tmp_path: Path, pki: Pki) -> None:
    pki.issue("gw", "gateway.test")
    pki.issue("b", "b.test")
    pki.issue("c", "c.test")
    errors = errors_of(tmp_path, PAIR + 'certs = [{ cert = "certs/b.pem", key = "certs/b.key" },'
                       ' { cert = "certs/b.pem", key = "certs/c.key" }]\n')
    assert list(errors) == ["gateway.tls.certs[1].key"]
    assert errors["gateway.tls.certs[1].key"] == (
        f"{tmp_path / 'certs' / 'c.key'} is not the key of the certificate in "
        f"{tmp_path / 'certs' / 'b.pem'}")


def test_an_expired_certificate_is_an_error(tmp_path: Path, pki: Pki) -> None:
    now = datetime.datetime.now(datetime.UTC)
    pki.issue("gw", "gateway.test", not_before=now - datetime.timedelta(days=30),
              not_after=now - datetime.timedelta(days=1))
    errors = errors_of(tmp_path, PAIR)
    assert list(errors) == ["gateway.tls.cert"]
    assert "expired on" in errors["gateway.tls.cert"]


def test_an_encrypted_key_is_an_error(tmp_path: Path, pki: Pki) -> None:
    from cryptography.hazmat.primitives import serialization

    pki.issue("gw", "gateway.test")
    key_path = tmp_path / "certs" / "gw.key"
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    key_path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret")))
    assert "is encrypted" in errors_of(tmp_path, PAIR)["gateway.tls.key"]


def test_an_sni_certificate_without_dns_names_is_an_error(tmp_path: Path, pki: Pki) -> None:
    pki.issue("gw", "gateway.test")
    pki.issue("ip", "127.0.0.1")
    errors = errors_of(tmp_path, PAIR + 'certs = [{ cert = "certs/ip.pem", key = "certs/ip.key" }]')
    assert "SNI can never choose it" in errors["gateway.tls.certs[0].cert"]


def test_required_client_certificates_need_a_ca_and_a_redirect_needs_tls(
        tmp_path: Path, pki: Pki) -> None:
    pki.issue("gw", "gateway.test")
    errors = errors_of(tmp_path, PAIR + 'client_cert = "required"\n')
    assert "needs gateway.tls.client_ca" in errors["gateway.tls.client_cert"]

    (tmp_path / "plain.toml").write_text('[gateway]\nredirect_http = "127.0.0.1:0"\n' + ROUTE)
    with pytest.raises(ConfigError) as info:
        load(tmp_path / "plain.toml")
    assert [i.path for i in info.value.issues] == ["gateway.redirect_http"]
    assert "needs [gateway.tls]" in info.value.issues[0].message


def test_tls_files_are_watched(tmp_path: Path, pki: Pki) -> None:
    pki.issue("gw", "gateway.test")
    pki.issue("b", "b.test")
    pki.ca_file()
    gateway = gateway_with(tmp_path, PAIR + 'client_ca = "certs/ca.pem"\n'
                           'certs = [{ cert = "certs/b.pem", key = "certs/b.key" }]\n')
    folder = tmp_path / "certs"
    assert {str(folder / f) for f in ("gw.pem", "gw.key", "b.pem", "b.key", "ca.pem")} <= set(
        named_files(gateway.config))


# ---------------------------------------------------------------------------
# Client certificates
# ---------------------------------------------------------------------------


class FakeTransport:
    def __init__(self, ssl_object: ssl.SSLObject | None) -> None:
        self.ssl_object = ssl_object

    def get_extra_info(self, name: str) -> Any:
        return self.ssl_object if name == "ssl_object" else None


def test_a_verified_client_certificate_as_plugins_see_it(tmp_path: Path, pki: Pki) -> None:
    pki.issue("gw", "gateway.test")
    pki.ca_file()
    clients = trustme.CA(organization_name="Clients")
    clients.cert_pem.write_to_path(str(tmp_path / "certs" / "clients.pem"))
    leaf = clients.issue_cert("payments.internal", "svc@example.com", "10.1.2.3",
                              common_name="payments-svc", organization_name="Example")
    tls = gateway_with(tmp_path, PAIR + 'client_ca = "certs/clients.pem"\n').tls
    assert tls is not None and tls.client_certs

    _, server_end = handshake(tls.context, pki.client(cert=leaf), "gateway.test")
    found = client_cert_of(FakeTransport(server_end))
    assert found is not None
    assert found.cn == "payments-svc"
    assert "CN=payments-svc" in found.subject and "O=Example" in found.subject
    assert found.sans == (("DNS", "payments.internal"), ("email", "svc@example.com"),
                          ("IP Address", "10.1.2.3"))
    assert found.serial == serial_of(leaf)
    assert found.not_after > datetime.datetime.now(datetime.UTC).timestamp()
    # once per connection: the next request on it gets the very same object
    assert client_cert_of(FakeTransport(server_end)) is found

    # optional: a client without one passes, with no certificate
    _, server_end = handshake(tls.context, pki.client(), "gateway.test")
    assert client_cert_of(FakeTransport(server_end)) is None
    # a certificate from another CA is refused in the handshake
    stranger = trustme.CA().issue_cert("stranger.test")
    with pytest.raises(ssl.SSLError):
        handshake(tls.context, pki.client(cert=stranger), "gateway.test")
    assert client_cert_of(None) is None and client_cert_of(FakeTransport(None)) is None
    assert client_cert(b"not DER") is None


def test_required_client_certificates_refuse_a_handshake_without_one(
        tmp_path: Path, pki: Pki) -> None:
    pki.issue("gw", "gateway.test")
    pki.ca_file()
    tls = gateway_with(tmp_path, PAIR + 'client_ca = "certs/ca.pem"\nclient_cert = "required"\n'
                       ).tls
    assert tls is not None
    with pytest.raises(ssl.SSLError):
        handshake(tls.context, pki.client(maximum=ssl.TLSVersion.TLSv1_2), "gateway.test")
    # TLS 1.3: the client finishes first; the server refuses the handshake on its side
    with pytest.raises(ssl.SSLError, match="CERTIFICATE"):
        handshake(tls.context, pki.client(), "gateway.test")
    leaf = pki.ca.issue_cert("client.test")
    _, server_end = handshake(tls.context, pki.client(cert=leaf), "gateway.test")
    found = client_cert_of(FakeTransport(server_end))
    assert found is not None and found.sans == (("DNS", "client.test"),)


# ---------------------------------------------------------------------------
# The redirect's URL
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(("hosts", "host"), [
    (["example.com"], "example.com"),
    (["Example.COM:8080"], "example.com"),
    (["example.com."], "example.com."),
    (["127.0.0.1:80"], "127.0.0.1"),
    (["[::1]:8080"], "[::1]"),
    (["[2001:DB8::1]"], "[2001:db8::1]"),
    (["host:"], "host"),
    ([], None),
    (["a.test", "b.test"], None),
    ([""], None),
    (["bad host"], None),
    (["user@example.com"], None),
    (["example.com/x"], None),
    (["example.com:80:80"], None),
    (["example.com:http"], None),
    (["-example.com"], None),
    (["a..b"], None),
    (["[::1"], None),
    (["[not-ip]"], None),
    (["[::1]x"], None),
    (["exa_mple.com"], None),
    (["é.test"], None),
])
def test_the_redirect_takes_one_valid_host(hosts: list[str], host: str | None) -> None:
    assert redirect_host(hosts) == host


@pytest.mark.parametrize(("raw", "target"), [
    ("/", "/"),
    ("/a/b%2Fc/../d?x=1&y=%20#no", "/a/b%2Fc/../d?x=1&y=%20#no"),  # as sent
    ("/caf\udcc3\udca9?q=\udcff", "/caf%C3%A9?q=%FF"),  # raw bytes, percent-encoded
    ("http://example.com/p?q", "/p?q"),
    ("https://example.com", "/"),
    ("http://example.com?q=1", "/?q=1"),
    ("*", None),
    ("example.com:443", None),
])
def test_the_redirect_keeps_the_path_and_query(raw: str, target: str | None) -> None:
    assert redirect_target(raw) == target
