"""``[plugins.mtls]``: which certificate name is the identity, and which subjects are
named consumers.

The subjects of ``consumers`` are parsed when the configuration loads: one that is not
a distinguished name, or one subject given to two consumers, is a configuration error
with its key path; the running gateway holds a dictionary from the normalised subject
to the consumer name.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from pygate.plugin import ClientCert, Identity

from .subjects import Subject, normalise

IdSource = Literal["cn", "san:email", "san:dns", "san:uri"]


def _subject(value: str) -> str:
    normalise(value)  # raises ValueError with the reason
    return value


class MtlsConfig(BaseModel):
    """The effective ``mtls`` settings of one route."""

    model_config = ConfigDict(extra="forbid")

    id: IdSource = "cn"
    consumers: dict[Annotated[str, Field(min_length=1)],
                    Annotated[str, AfterValidator(_subject)]] = Field(default_factory=dict)
    optional: bool = False

    _by_subject: dict[Subject, str] = PrivateAttr(default_factory=dict)
    _identities: dict[ClientCert, Identity] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _index(self) -> MtlsConfig:
        by_subject: dict[Subject, str] = {}
        for name, subject in self.consumers.items():
            key = normalise(subject)
            if key in by_subject:
                first, second = sorted((by_subject[key], name))
                raise ValueError(f"consumers: the same subject is given to {first!r} and "
                                 f"{second!r}")
            by_subject[key] = name
        self._by_subject = by_subject
        return self

    @property
    def identities(self) -> dict[ClientCert, Identity]:
        """The identities made under this config so far, by certificate (kept by
        :func:`pygate_mtls.identity.identify`, bounded)."""
        return self._identities

    def consumer_of(self, subject: str) -> str | None:
        """The consumer named for a certificate subject (RFC 4514), or ``None``."""
        if not self._by_subject:
            return None
        try:
            return self._by_subject.get(normalise(subject))
        except ValueError:  # not a name this plugin can read: no consumer has it
            return None
