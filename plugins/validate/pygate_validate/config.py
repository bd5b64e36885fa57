"""``[plugins.validate]``: the OpenAPI document or JSON Schemas, compiled when the config loads.

Each file is read, checked and compiled here, once per distinct effective
config (pygate validates identical settings once): a file that cannot be read,
is not YAML/JSON, is not a valid OpenAPI 3.0/3.1 document or JSON Schema, or
has a ``$ref`` that resolves to nothing is a configuration error with its key
path (``plugins.validate.openapi: ...``), and ``pygate check`` / ``pygate
serve`` say so and exit 1. Relative paths are relative to the configuration
file's folder. Dumped (``pygate explain``), a file field shows the path as
written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    PlainSerializer,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .check import Plan, QuerySchema, body_schema_spec, json_schema_file
from .documents import DocumentError
from .openapi import Document, compile_document, normal_base
from .schemas import SchemaCheck


class OpenAPIFile:
    """``openapi``: the path as written and the compiled document."""

    __slots__ = ("document", "path")

    def __init__(self, path: str, document: Document) -> None:
        self.path = path
        self.document = document


class SchemaFile:
    """``body_schema`` / ``query_schema``: the path as written and the compiled schema."""

    __slots__ = ("check", "path", "shape")

    def __init__(self, path: str, compiled: tuple[SchemaCheck, Any]) -> None:
        self.path = path
        self.check, self.shape = compiled


def resolve_path(value: Any, info: ValidationInfo) -> Path:
    """Where a file key points: absolute as given, else from the configuration file's folder."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected the path of a file, found {value!r}")
    path = Path(value).expanduser()
    context = info.context if isinstance(info.context, dict) else {}
    base = context.get("base_dir")
    return path if path.is_absolute() or not base else Path(base) / path


def _openapi(value: Any, info: ValidationInfo) -> Any:
    if value is None or isinstance(value, OpenAPIFile):
        return value
    path = resolve_path(value, info)
    base_path = info.data.get("base_path")
    try:
        return OpenAPIFile(value, compile_document(path, base_path))
    except DocumentError as exc:
        raise ValueError(str(exc)) from None
    except RecursionError:
        raise ValueError(f"{str(path)!r} is nested too deeply to be read") from None


def _schema(value: Any, info: ValidationInfo) -> Any:
    if value is None or isinstance(value, SchemaFile):
        return value
    path = resolve_path(value, info)
    try:
        return SchemaFile(value, json_schema_file(path))
    except DocumentError as exc:
        raise ValueError(str(exc)) from None
    except RecursionError:
        raise ValueError(f"{str(path)!r} is nested too deeply to be read") from None


def _path_of(value: OpenAPIFile | SchemaFile | None) -> str | None:
    return None if value is None else value.path


OpenAPIField = Annotated[OpenAPIFile | None, BeforeValidator(_openapi),
                         PlainSerializer(_path_of, return_type=str | None)]
SchemaField = Annotated[SchemaFile | None, BeforeValidator(_schema),
                        PlainSerializer(_path_of, return_type=str | None)]


class ValidateConfig(BaseModel):
    """The effective ``validate`` settings of one route; see the plugin's README."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    # base_path comes first: the openapi field is compiled with it
    base_path: str | None = None
    strict: bool = False
    openapi: OpenAPIField = None
    body_schema: SchemaField = None
    query_schema: SchemaField = None

    _plan: Plan | None = PrivateAttr(default=None)

    @field_validator("base_path")
    @classmethod
    def _base_path(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.startswith("/") or any(c in value for c in "?#{} \t"):
            raise ValueError(f'expected a URL path like "/api/users", found {value!r}')
        return normal_base(value) or "/"

    @model_validator(mode="after")
    def _compile(self) -> ValidateConfig:
        if self.openapi is None and self.body_schema is None and self.query_schema is None:
            raise ValueError('set openapi = "openapi.yaml", or body_schema / query_schema '
                             "(JSON Schema files)")
        if self.strict and self.openapi is None:
            raise ValueError("strict needs an OpenAPI document (openapi = ...): without one "
                             "no operation is described")
        self._plan = Plan(
            self.openapi.document if self.openapi is not None else None,
            strict=self.strict,
            body_schema=body_schema_spec(self.body_schema.check)
            if self.body_schema is not None else None,
            query_schema=QuerySchema(self.query_schema.check, self.query_schema.shape)
            if self.query_schema is not None else None,
        )
        return self

    @property
    def plan(self) -> Plan:
        """The compiled checks (made once, when the configuration loads)."""
        # read directly: pydantic's lookup of private attributes costs microseconds
        plan: Plan = self.__pydantic_private__["_plan"]  # type: ignore[index]
        return plan
