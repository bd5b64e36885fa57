"""The ``[plugins.jwt]`` table, validated once per route at configuration load.

Everything that can be wrong in the settings is a configuration error with its
key path: a missing ``algorithms``, ``"none"``, an algorithm whose key type does
not match the key source (an HMAC algorithm with ``public_key`` or ``jwks_url``
is algorithm confusion), an unreadable or wrong-typed public key, a too short
HMAC secret. The parsed key lives on the instance, so the request path does no
parsing; what the plugin keeps at run time (the verified-token cache, the JWKS
key set) is in ``gateway.state("jwt")`` (see :mod:`pygate_jwt.state`).
"""

from __future__ import annotations

import base64
import binascii
import re

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from pygate.plugin import Duration, suggest

from .keys import (
    HMAC_MIN_BYTES,
    SUPPORTED_ALGORITHMS,
    PublicKey,
    is_hmac,
    key_fits,
    key_kind,
    load_public_key,
)

DEFAULT_CLAIMS = {"id": "sub", "roles": "role"}
_SOURCE = re.compile(r"^(header|cookie|query):(\S+)$")


def _base_dir(info: ValidationInfo) -> str | None:
    """The config file's folder, if the core passes one in the validation context."""
    context = info.context
    if isinstance(context, dict) and isinstance(context.get("base_dir"), str):
        return str(context["base_dir"])
    return None


def secret_bytes(value: str) -> bytes:
    """The HMAC key of a ``secret`` setting: UTF-8 text, or ``base64:...`` decoded."""
    if not value.startswith("base64:"):
        return value.encode()
    raw = value[len("base64:"):].strip()
    raw += "=" * (-len(raw) % 4)
    altchars = b"-_" if "-" in raw or "_" in raw else None
    try:
        return base64.b64decode(raw, altchars=altchars, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError('expected base64 (or base64url) text after "base64:"') from None


class JwtConfig(BaseModel):
    """Settings of the ``jwt`` plugin (see the plugin's README for each key)."""

    model_config = ConfigDict(extra="forbid")

    algorithms: list[str]
    secret: SecretStr | None = None
    public_key: str | None = None
    jwks_url: str | None = None
    jwks_min_refresh: Duration = 5.0
    jwks_ttl: Duration = 600.0
    jwks_timeout: Duration = 5.0
    issuer: str | None = None
    audience: str | list[str] | None = None
    leeway: Duration = 0.0
    required_claims: list[str] = Field(default_factory=lambda: ["exp"])
    claims: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_CLAIMS))
    token_from: list[str] = Field(default_factory=lambda: ["header:Authorization"])
    optional: bool = False
    cache_size: int = Field(default=10_000, ge=0)
    cache_ttl: Duration = 300.0

    _key: bytes | PublicKey | None = PrivateAttr(default=None)
    _sources: tuple[tuple[str, str], ...] = PrivateAttr(default=())

    # -- field checks (algorithms first: the key sources are checked against it) --

    @field_validator("algorithms")
    @classmethod
    def _algorithms(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError('expected at least one algorithm, e.g. ["RS256"]')
        for algorithm in value:
            if algorithm.strip().lower() == "none":
                raise ValueError('"none" is not allowed: it would accept unsigned tokens')
            if algorithm not in SUPPORTED_ALGORITHMS:
                hint = suggest(algorithm.upper(), SUPPORTED_ALGORITHMS) or \
                    suggest(algorithm, SUPPORTED_ALGORITHMS)
                raise ValueError(f"unsupported algorithm {algorithm!r}{hint} "
                                 f"(supported: {', '.join(SUPPORTED_ALGORITHMS)})")
        return list(dict.fromkeys(value))

    @field_validator("secret")
    @classmethod
    def _secret(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        if value is None:
            return None
        key = secret_bytes(value.get_secret_value())
        algorithms: list[str] = info.data.get("algorithms") or []
        others = [a for a in algorithms if not is_hmac(a)]
        if others:
            raise ValueError(f"secret is for HS256/HS384/HS512; {others[0]} needs public_key "
                             "or jwks_url")
        for algorithm in algorithms:
            need = HMAC_MIN_BYTES[algorithm]
            if len(key) < need:
                raise ValueError(f"{algorithm} needs a secret of at least {need} bytes "
                                 f"(RFC 7518 section 3.2), found {len(key)}")
        return value

    @field_validator("public_key")
    @classmethod
    def _public_key(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        algorithms: list[str] = info.data.get("algorithms") or []
        _refuse_hmac(algorithms, "public_key")
        key = load_public_key(value, _base_dir(info))
        for algorithm in algorithms:
            if not key_fits(key, algorithm):
                raise ValueError(f"public_key is {key_kind(key)}, which cannot verify "
                                 f"{algorithm} tokens")
        return value

    @field_validator("jwks_url")
    @classmethod
    def _jwks_url(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        if not re.match(r"^https?://[^/?#\s]+", value):
            raise ValueError(f'expected an http(s) URL like "https://idp/.well-known/jwks.json"'
                             f", found {value!r}")
        _refuse_hmac(info.data.get("algorithms") or [], "jwks_url")
        return value

    @field_validator("jwks_min_refresh", "jwks_timeout", "cache_ttl", "jwks_ttl")
    @classmethod
    def _positive(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("expected a duration above zero")
        return value

    @field_validator("required_claims")
    @classmethod
    def _required(cls, value: list[str]) -> list[str]:
        if any(not claim for claim in value):
            raise ValueError("expected claim names, found an empty one")
        return value

    @field_validator("claims")
    @classmethod
    def _claims(cls, value: dict[str, str]) -> dict[str, str]:
        merged = {**DEFAULT_CLAIMS, **value}  # extra fields keep the id/roles defaults
        for field, claim in merged.items():
            if not claim:
                raise ValueError(f"claims.{field}: expected a claim name, found an empty one")
        return merged

    @field_validator("token_from")
    @classmethod
    def _token_from(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError('expected at least one source, e.g. ["header:Authorization"]')
        for source in value:
            if not _SOURCE.match(source):
                raise ValueError('expected sources like "header:Authorization", '
                                 f'"cookie:session" or "query:access_token", found {source!r}')
        return value

    # -- the whole table --

    @model_validator(mode="after")
    def _one_key_source(self, info: ValidationInfo) -> JwtConfig:
        given = [name for name in ("secret", "public_key", "jwks_url")
                 if getattr(self, name) is not None]
        if not given:
            raise ValueError("one of secret (HS*), public_key or jwks_url is required")
        if len(given) > 1:
            raise ValueError(f"give only one of secret, public_key or jwks_url "
                             f"(found {' and '.join(given)})")
        self._sources = tuple((kind, name) for kind, _, name in
                              (source.partition(":") for source in self.token_from))
        if self.secret is not None:
            self._key = secret_bytes(self.secret.get_secret_value())
        elif self.public_key is not None:
            self._key = load_public_key(self.public_key, _base_dir(info))
        return self

    # -- what the request path reads --
    # (the private attribute is read from ``__pydantic_private__`` directly: pydantic's
    # own attribute lookup for it costs microseconds per read)

    @property
    def static_key(self) -> bytes | PublicKey | None:
        """The HMAC secret or public key; ``None`` when keys come from ``jwks_url``."""
        return self.__pydantic_private__["_key"]  # type: ignore[index]

    @property
    def token_sources(self) -> tuple[tuple[str, str], ...]:
        """``token_from`` parsed: ``(kind, name)`` pairs, ``("header", "Authorization")``."""
        return self.__pydantic_private__["_sources"]  # type: ignore[index]

    @property
    def audiences(self) -> list[str] | None:
        if self.audience is None:
            return None
        return [self.audience] if isinstance(self.audience, str) else list(self.audience)


def _refuse_hmac(algorithms: list[str], source: str) -> None:
    hmac = [a for a in algorithms if is_hmac(a)]
    if hmac:
        raise ValueError(f"{hmac[0]} cannot be used with {source}: an HMAC algorithm checked "
                         "with a public key lets anyone who has that key forge tokens "
                         "(algorithm confusion); use secret for HS* algorithms")
