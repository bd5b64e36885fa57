"""``[plugins.acl]``: who may use a route (``allow``) and who may not (``deny``)."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from .rules import Rules, check_entry

Entry = Annotated[str, AfterValidator(check_entry)]


class AclConfig(BaseModel):
    """The effective ``acl`` settings of one route."""

    model_config = ConfigDict(extra="forbid")

    allow: list[Entry] = Field(default_factory=list)
    deny: list[Entry] = Field(default_factory=list)

    _rules: Rules = PrivateAttr()

    @model_validator(mode="after")
    def _compile(self) -> AclConfig:
        if not self.allow and not self.deny:
            raise ValueError("expected allow, deny or both (a list of roles, identity ids or "
                             "consumer names); to turn acl off on a route use acl = false")
        self._rules = Rules.compile(self.allow, self.deny)
        return self

    @property
    def rules(self) -> Rules:
        return self._rules
