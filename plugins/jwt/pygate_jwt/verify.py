"""Checking one token and turning its claims into an identity (pure, no I/O).

Every refusal is an :class:`InvalidToken` whose ``description`` tells the
client which check failed (expired, not yet valid, bad signature, wrong
audience, wrong issuer, missing claim, unknown key...) without quoting any key
material or the token itself.
"""

from __future__ import annotations

import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import jwt

from pygate.plugin import Identity

if TYPE_CHECKING:
    from .config import JwtConfig

SOURCE = "jwt"
SPACE_SEPARATED_CLAIMS = ("scope", "scp")  # RFC 9068 / RFC 8693: a space-delimited list


class InvalidToken(Exception):
    """The token is refused; ``description`` goes into ``error_description``."""

    def __init__(self, description: str) -> None:
        super().__init__(description)
        self.description = description


class BadSignature(InvalidToken):
    """The signature does not verify with the key tried (another key may fit)."""


@dataclass(frozen=True, slots=True)
class Verified:
    """A token that passed every check: the identity, its claims and its ``exp``."""

    identity: Identity
    claims: Mapping[str, Any]
    expires: float | None


class TokenCache:
    """Verified tokens by their text: at most ``size`` (the oldest out first), each for at
    most ``ttl`` seconds and never returned once the token's ``exp`` has passed.

    An ``OrderedDict`` rather than a cachetools cache: a look-up is one C call, where
    cachetools' pure-Python layers cost four Python calls on every request.
    """

    def __init__(self, size: int, ttl: float, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._ttl = ttl
        self._size = size
        # token -> (verified, until): until is the earlier of exp and the ttl's end
        self._entries: OrderedDict[str, tuple[Verified, float]] = OrderedDict()

    def get(self, token: str) -> Verified | None:
        found = self._entries.get(token)
        if found is None:
            return None
        if self._clock() >= found[1]:
            del self._entries[token]
            return None
        return found[0]

    def put(self, token: str, verified: Verified) -> None:
        if self._size <= 0:
            return
        now = self._clock()
        until = now + self._ttl
        if verified.expires is not None:
            if now >= verified.expires:
                return
            until = min(until, verified.expires)
        entries = self._entries
        entries.pop(token, None)
        while len(entries) >= self._size:
            entries.popitem(last=False)
        entries[token] = (verified, until)

    def __len__(self) -> int:
        return len(self._entries)


_TOKEN = re.compile(r"[A-Za-z0-9_=.-]+")


def unverified_header(token: str) -> dict[str, Any]:
    """The token's JOSE header, read before any check (to pick the algorithm and key).

    A token is base64url segments and dots: one with any other byte (a client
    may send anything in a header) is malformed, before pyjwt sees it.
    """
    if token.count(".") != 2 or not _TOKEN.fullmatch(token):
        raise InvalidToken("the token is malformed")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.InvalidTokenError:
        raise InvalidToken("the token is malformed") from None
    return header


def accepted_algorithm(header: Mapping[str, Any], algorithms: Sequence[str]) -> str:
    """The header's ``alg`` if the configuration accepts it (``none`` never is)."""
    algorithm = header.get("alg")
    if not isinstance(algorithm, str) or algorithm not in algorithms:
        raise InvalidToken("the token algorithm is not accepted")
    return algorithm


# Order matters: subclasses before their bases (InvalidSignatureError is a DecodeError).
_DESCRIPTIONS: tuple[tuple[type[Exception], str], ...] = (
    (jwt.ExpiredSignatureError, "the token has expired"),
    (jwt.ImmatureSignatureError, "the token is not valid yet"),
    (jwt.InvalidSignatureError, "the token signature is invalid"),
    (jwt.InvalidAudienceError, "the token audience is not accepted"),
    (jwt.InvalidIssuerError, "the token issuer is not accepted"),
    (jwt.InvalidAlgorithmError, "the token algorithm is not accepted"),
    (jwt.InvalidKeyError, "the token algorithm does not fit the key"),
    (jwt.InvalidIssuedAtError, "the token iat claim is not a number"),
    # pyjwt 2.10+ checks that sub and jti are strings
    *((kind, f"the token {name} claim is not a string")
      for name, kind in (("sub", getattr(jwt.exceptions, "InvalidSubjectError", None)),
                         ("jti", getattr(jwt.exceptions, "InvalidJTIError", None)))
      if kind is not None),
    (jwt.DecodeError, "the token is malformed"),
)


def describe(error: jwt.PyJWTError) -> InvalidToken:
    """The :class:`InvalidToken` for a pyjwt error."""
    if isinstance(error, jwt.MissingRequiredClaimError):
        return InvalidToken(f"the token lacks the required claim {_quoted(error.claim)}")
    for kind, description in _DESCRIPTIONS:
        if isinstance(error, kind):
            return (BadSignature if kind is jwt.InvalidSignatureError else InvalidToken)(
                description)
    return InvalidToken("the token is invalid")


def decode(token: str, key: Any, algorithm: str, config: JwtConfig) -> dict[str, Any]:
    """Verify the signature with ``key`` and every configured claim check."""
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            key=key,
            algorithms=[algorithm],
            audience=config.audiences,
            issuer=config.issuer,
            leeway=config.leeway,
            options={
                "require": list(config.required_claims),
                # an audience is only checked when one is configured
                "verify_aud": config.audience is not None,
            },
        )
    except jwt.PyJWTError as error:
        raise describe(error) from None
    return claims


def decode_with_any(token: str, keys: Iterable[Any], algorithm: str,
                    config: JwtConfig) -> dict[str, Any]:
    """:func:`decode` with the first of ``keys`` whose signature verifies."""
    last: InvalidToken = InvalidToken("the token signing key is unknown")
    for key in keys:
        try:
            return decode(token, key, algorithm, config)
        except BadSignature as error:
            last = error
    raise last


def claim(claims: Mapping[str, Any], name: str) -> Any:
    """A claim by name; a dotted name reaches into objects (``realm_access.roles``)."""
    if name in claims:
        return claims[name]
    value: Any = claims
    for part in name.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def _scalar(value: Any) -> bool:
    return isinstance(value, str | int) and not isinstance(value, bool)


def roles_of(value: Any, claim_name: str) -> tuple[str, ...]:
    """Roles from a claim that is a string or a list (``scope`` is space-separated)."""
    if isinstance(value, str):
        if claim_name.rsplit(".", 1)[-1] in SPACE_SEPARATED_CLAIMS:
            return tuple(value.split())
        return (value,) if value else ()
    if isinstance(value, list | tuple):
        return tuple(str(item) for item in value if _scalar(item) and item != "")
    return ()


def identity_from(claims: Mapping[str, Any], mapping: Mapping[str, str]) -> Identity:
    """``Identity(id=..., roles=..., consumer=..., source="jwt", fields=...)`` from claims.

    ``mapping`` is the ``claims`` setting: ``id`` and ``roles`` name the claims
    for those, ``consumer`` (optional) the consumer name, every other entry an
    extra identity field.
    """
    id_claim = mapping["id"]
    subject = claim(claims, id_claim)
    if not _scalar(subject) or subject == "":
        raise InvalidToken(f"the token lacks the required claim {_quoted(id_claim)}")
    roles_claim = mapping.get("roles")
    roles = roles_of(claim(claims, roles_claim), roles_claim) if roles_claim else ()
    consumer = claim(claims, mapping["consumer"]) if "consumer" in mapping else None
    fields = {}
    for field, name in mapping.items():
        if field in ("id", "roles", "consumer"):
            continue
        value = claim(claims, name)
        if value is not None:
            fields[field] = value
    return Identity(
        id=str(subject),
        roles=roles,
        consumer=str(consumer) if _scalar(consumer) else None,
        source=SOURCE,
        fields=fields,
    )


def expiry(claims: Mapping[str, Any]) -> float | None:
    value = claims.get("exp")
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def _quoted(name: str) -> str:
    """A claim name for a message: printable ASCII, no double quotes or backslashes."""
    cleaned = "".join(c for c in name if c.isascii() and c.isprintable() and c not in '"\\')
    return f"'{cleaned[:64]}'"
