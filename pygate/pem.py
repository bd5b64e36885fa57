"""PEM certificates and keys named by the configuration: parsed, and checked to belong
together. The listener's certificates (:mod:`pygate.tls`) and an upstream's client
certificate (:mod:`pygate.upstream.tls`) both read theirs here; each words its own
configuration errors."""

from __future__ import annotations

from typing import Literal

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

_SPKI = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo


def certificates(data: bytes) -> list[x509.Certificate]:
    """The PEM certificates in ``data``, in order; empty when it holds none."""
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        return []


def private_key(data: bytes) -> PrivateKeyTypes | Literal["encrypted", "unusable"]:
    """The PEM private key in ``data``, or why there is none pygate can use: it is
    ``"encrypted"`` (no passphrase is configured), or ``"unusable"`` (no PEM key, or one
    of an algorithm this build cannot load)."""
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        return "encrypted"
    except (ValueError, UnsupportedAlgorithm):
        return "unusable"


def same_key(cert: x509.Certificate, key: PrivateKeyTypes) -> bool:
    """Whether ``key`` is the private key of ``cert``'s public key."""
    return cert.public_key().public_bytes(*_SPKI) == key.public_key().public_bytes(*_SPKI)
