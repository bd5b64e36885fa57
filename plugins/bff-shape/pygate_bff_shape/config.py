"""``[plugins.bff-shape]``: how to reshape the composed body of an aggregate route."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator


class ShapeConfig(BaseModel):
    """The effective ``bff-shape`` settings of one route."""

    model_config = ConfigDict(extra="forbid")

    pick: dict[str, str] = Field(default_factory=dict)
    """Output key -> dotted path into the composed body (``"user.address.city"``,
    ``"orders.0.id"``); a path that leads nowhere gives ``null``. Empty: keep the
    composed body as it is."""

    drop_nulls: bool = False
    """Leave out top-level keys whose value is ``null``."""

    envelope: str | None = None
    """Wrap the body under this key (``{"data": ...}``)."""

    @field_validator("pick")
    @classmethod
    def _paths(cls, value: dict[str, str]) -> dict[str, str]:
        for key, path in value.items():
            if not key:
                raise ValueError("expected output key names, found ''")
            if not path or any(not part for part in path.split(".")):
                raise ValueError(f'expected paths like "user.name" or "orders.0.id", '
                                 f"found {path!r} for {key!r}")
        return value

    @field_validator("envelope")
    @classmethod
    def _envelope(cls, value: str | None) -> str | None:
        if value is not None and not value:
            raise ValueError("expected a key name, found ''")
        return value

    @property
    def changes_anything(self) -> bool:
        return bool(self.pick) or self.drop_nulls or self.envelope is not None
