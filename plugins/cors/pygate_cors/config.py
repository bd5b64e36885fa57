"""``[plugins.cors]``: origins, methods, headers, exposed headers, max age, credentials."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from pygate.plugin import Duration

from .policy import Origins, Policy, check_origin

_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
DEFAULT_METHODS = ["GET", "HEAD", "PUT", "PATCH", "POST", "DELETE"]


def _header(value: str) -> str:
    if not _TOKEN.match(value):
        raise ValueError(f"expected a header name like Content-Type, found {value!r}")
    return value


def _method(value: str) -> str:
    if not _TOKEN.match(value) or value == "*":
        raise ValueError(f"expected an HTTP method like GET, found {value!r}")
    return value.upper()


Origin = Annotated[str, AfterValidator(check_origin)]
HeaderName = Annotated[str, AfterValidator(_header)]
Method = Annotated[str, AfterValidator(_method)]


class CorsConfig(BaseModel):
    """The effective ``cors`` settings of one route."""

    model_config = ConfigDict(extra="forbid")

    origins: list[Origin] = Field(default_factory=lambda: ["*"], min_length=1)
    methods: list[Method] = Field(default_factory=lambda: list(DEFAULT_METHODS), min_length=1)
    headers: list[HeaderName] | None = None
    expose: list[HeaderName] = Field(default_factory=list)
    max_age: Duration | None = None
    credentials: bool = False

    _policy: Policy = PrivateAttr()

    @field_validator("credentials")
    @classmethod
    def _no_credentials_for_any_origin(cls, value: bool, info: ValidationInfo) -> bool:
        if value and "*" in info.data.get("origins", ()):
            raise ValueError('credentials = true cannot be combined with origins = ["*"] '
                             "(browsers refuse credentials for a wildcard origin); "
                             "list the allowed origins instead")
        return value

    @model_validator(mode="after")
    def _compile(self) -> CorsConfig:
        reflect = self.headers is None or "*" in self.headers
        self._policy = Policy(
            origins=Origins.compile(self.origins),
            methods=tuple(dict.fromkeys(self.methods)),
            headers=None if reflect else frozenset(h.lower() for h in self.headers or ()),
            header_list="" if reflect else ", ".join(self.headers or ()),
            expose=", ".join(self.expose),
            max_age=None if self.max_age is None else int(self.max_age),
            credentials=self.credentials,
        )
        return self

    @property
    def policy(self) -> Policy:
        return self._policy
