"""Algorithms and keys: which key type each algorithm needs, PEM and JWK parsing.

Pure functions, no I/O besides reading a PEM file at configuration load. The
rule that keeps algorithm confusion out: a token's ``alg`` is only ever checked
with a key of that algorithm's family (an HMAC secret for HS*, an RSA key for
RS*/PS*, an EC key on the right curve for ES*, an Ed25519/Ed448 key for EdDSA).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey \
    | ed448.Ed448PublicKey

HMAC_ALGORITHMS = ("HS256", "HS384", "HS512")
RSA_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
EC_CURVES = {
    "ES256": "secp256r1",
    "ES256K": "secp256k1",
    "ES384": "secp384r1",
    "ES512": "secp521r1",
}
EDDSA_ALGORITHMS = ("EdDSA",)
SUPPORTED_ALGORITHMS = (*HMAC_ALGORITHMS, *RSA_ALGORITHMS, *EC_CURVES, *EDDSA_ALGORITHMS)

# RFC 7518 section 3.2: an HMAC key at least as long as the hash output.
HMAC_MIN_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}


def is_hmac(algorithm: str) -> bool:
    return algorithm in HMAC_ALGORITHMS


def key_fits(key: Any, algorithm: str) -> bool:
    """Whether ``key`` (a public key object) is of the type ``algorithm`` needs."""
    if algorithm in RSA_ALGORITHMS:
        return isinstance(key, rsa.RSAPublicKey)
    if algorithm in EC_CURVES:
        return isinstance(key, ec.EllipticCurvePublicKey) and \
            key.curve.name == EC_CURVES[algorithm]
    if algorithm in EDDSA_ALGORITHMS:
        return isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey)
    return False


def key_kind(key: Any) -> str:
    """A short description of a key's type, for messages (never its material)."""
    if isinstance(key, rsa.RSAPublicKey):
        return f"an RSA key ({key.key_size} bits)"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"an EC key on {key.curve.name}"
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "an Ed25519 key"
    if isinstance(key, ed448.Ed448PublicKey):
        return "an Ed448 key"
    return f"a {type(key).__name__}"


def is_inline_pem(value: str) -> bool:
    return value.lstrip().startswith("-----BEGIN")


def resolve_key_path(value: str, base_dir: str | None = None) -> Path:
    """A ``public_key`` file path: absolute, or relative to ``base_dir``.

    Without ``base_dir`` (the core does not pass one to plugin schemas yet) a
    relative path is taken relative to the current working directory.
    """
    path = Path(value).expanduser()
    if path.is_absolute():
        return path
    return Path(base_dir if base_dir is not None else os.getcwd()) / path


def read_pem(value: str, base_dir: str | None = None) -> bytes:
    """The PEM bytes of a ``public_key`` setting: the text itself, or the file's content."""
    if is_inline_pem(value):
        return value.strip().encode()
    path = resolve_key_path(value, base_dir)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ValueError(f"cannot read the public key file {str(path)!r}: not found "
                         "(a relative path is relative to the working directory)") from None
    except OSError as exc:
        raise ValueError(f"cannot read the public key file {str(path)!r}: "
                         f"{exc.strerror or type(exc).__name__}") from None


@functools.lru_cache(maxsize=128)
def parse_public_key(pem: bytes) -> PublicKey:
    """A public key from PEM (SubjectPublicKeyInfo, PKCS#1 RSA, or an X.509 certificate).

    Cached by the PEM bytes: every route's config reuses the parsed key.
    Messages never quote the key material.
    """
    if b"PRIVATE KEY" in pem:
        raise ValueError("public_key holds a private key; give the public key (the gateway "
                         "only verifies, it must never hold a signing key)")
    try:
        if b"-----BEGIN CERTIFICATE" in pem:
            key: Any = x509.load_pem_x509_certificate(pem).public_key()
        else:
            key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError):
        raise ValueError("public_key is not a PEM public key or certificate") from None
    if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey
                      | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        raise ValueError(f"public_key is {key_kind(key)}; expected an RSA, EC, Ed25519 "
                         "or Ed448 key")
    return key


def load_public_key(value: str, base_dir: str | None = None) -> PublicKey:
    return parse_public_key(read_pem(value, base_dir))


@dataclass(frozen=True, slots=True)
class Jwk:
    """One verification key of a JWKS: its ``kid``, its ``alg`` if pinned, the key."""

    kid: str | None
    alg: str | None
    key: PublicKey

    def fits(self, algorithm: str) -> bool:
        if self.alg is not None and self.alg != algorithm:
            return False
        return key_fits(self.key, algorithm)


def parse_jwks(document: Any) -> list[Jwk]:
    """The usable verification keys of a JWKS document ``{"keys": [...]}``.

    Keys for encryption (``use`` other than ``sig``), symmetric keys (``kty``
    ``oct``: an HMAC secret has no business in a published key set), private
    keys and keys of unsupported types are left out.

    :raises ValueError: when the document is not a JWKS at all.
    """
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError('expected a JSON object with a "keys" list')
    found: list[Jwk] = []
    for entry in document["keys"]:
        if not isinstance(entry, dict):
            continue
        if entry.get("use", "sig") != "sig" or entry.get("kty") == "oct" or "d" in entry:
            continue
        alg = entry.get("alg")
        if alg is not None and alg not in SUPPORTED_ALGORITHMS:
            continue
        try:
            key = jwt.PyJWK(entry).key
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError, KeyError):
            continue
        if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey
                          | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
            continue
        kid = entry.get("kid")
        found.append(Jwk(kid=kid if isinstance(kid, str) else None,
                         alg=alg if isinstance(alg, str) else None, key=key))
    return found
