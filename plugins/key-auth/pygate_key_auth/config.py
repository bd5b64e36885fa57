"""``[plugins.key-auth]``: where keys are read from, and which consumer each key names.

Keys are checked and hashed when the configuration loads: a malformed
``sha256:`` digest, an unreadable ``keys_file`` or one key given to two
consumers is a configuration error with its key path, and the running gateway
holds digests only. Dumping the model (``pygate explain``) shows every key in
its ``sha256:`` form, never the plain text.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PrivateAttr,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_serializer,
    field_validator,
    model_validator,
)

from pygate.plugin import key_path

from .keys import KeyIndex, build_index, digest_of, display_form

_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


def _check_key(spec: str) -> str:
    digest_of(spec)  # raises ValueError with the reason
    return spec


Key = Annotated[str, AfterValidator(_check_key)]


def _consumer_form(value: Any) -> Any:
    """``"key"`` and ``["k1", "k2"]`` are short for ``{ keys = [...] }``."""
    if isinstance(value, str):
        return {"keys": [value]}
    if isinstance(value, list):
        return {"keys": value}
    if isinstance(value, dict):
        return value
    raise ValueError('expected a key ("plain-key" or "sha256:<hex>"), a list of keys, '
                     f"or a table {{ keys = [...], roles = [...] }}, found {value!r}")


class ConsumerEntry(BaseModel):
    """One consumer: its keys (several, for rotation) and optional roles."""

    model_config = ConfigDict(extra="forbid")

    keys: list[Key] = Field(min_length=1)
    roles: list[str] = Field(default_factory=list)

    @field_serializer("keys")
    def _digests_only(self, keys: list[str]) -> list[str]:
        return [display_form(key) for key in keys]


ConsumerValue = Annotated[ConsumerEntry, BeforeValidator(_consumer_form)]
Consumers = dict[Annotated[str, Field(min_length=1)], ConsumerValue]
_CONSUMERS: TypeAdapter[dict[str, ConsumerEntry]] = TypeAdapter(Consumers)


class KeysFile(BaseModel):
    """A loaded ``keys_file``: the path as written, and the consumers it holds."""

    model_config = ConfigDict(extra="forbid")

    path: str
    consumers: dict[str, ConsumerEntry]


def keys_file_path(value: str, base_dir: str | None) -> Path:
    """Where ``keys_file`` points: absolute as given, else from ``base_dir`` (the
    config file's folder, when the core provides it) or the current directory."""
    path = Path(value).expanduser()
    if path.is_absolute():
        return path
    return Path(base_dir) / path if base_dir else path


def _load_keys_file(value: Any, info: ValidationInfo) -> Any:
    if value is None or isinstance(value, KeysFile):
        return value
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected the path of a TOML file, found {value!r}")
    context = info.context if isinstance(info.context, dict) else {}
    path = keys_file_path(value, context.get("base_dir"))
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        origin = "the configuration file" if context.get("base_dir") else "the current directory"
        raise ValueError(f"file not found: {str(path)!r} (a relative path is resolved from "
                         f"{origin})") from None
    except OSError as exc:
        raise ValueError(f"cannot read {str(path)!r}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ValueError(f"cannot read {str(path)!r}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{str(path)!r} is not valid TOML: {exc}") from None
    try:
        consumers = _CONSUMERS.validate_python(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = [p for p in err["loc"] if not (isinstance(p, str) and "[" in p)]
            message = err["msg"].removeprefix("Value error, ")
            problems.append(f"{key_path(loc)}: {message}" if loc else message)
        raise ValueError(f"{str(path)!r}: " + "; ".join(problems)) from None
    return KeysFile(path=value, consumers=consumers)


def _keys_file_path(value: KeysFile | None) -> str | None:
    return None if value is None else value.path


LoadedKeysFile = Annotated[
    KeysFile | None,
    BeforeValidator(_load_keys_file),
    PlainSerializer(_keys_file_path, return_type=str | None),
]


class KeyAuthConfig(BaseModel):
    """The effective ``key-auth`` settings of one route."""

    model_config = ConfigDict(extra="forbid")

    header: str = "X-API-Key"
    query: str | None = None
    consumers: Consumers = Field(default_factory=dict)
    keys_file: LoadedKeysFile = None
    optional: bool = False
    hide_credentials: bool = True

    _index: KeyIndex = PrivateAttr(default_factory=KeyIndex)

    @field_validator("header")
    @classmethod
    def _header_name(cls, value: str) -> str:
        if not _TOKEN.match(value):
            raise ValueError(f"expected a header name like X-API-Key, found {value!r}")
        return value

    @field_validator("query")
    @classmethod
    def _query_name(cls, value: str | None) -> str | None:
        if value is not None and not value:
            raise ValueError("expected a query parameter name like api_key")
        return value

    @model_validator(mode="after")
    def _build_index(self) -> KeyAuthConfig:
        sources = [self.consumers]
        if self.keys_file is not None:
            sources.append(self.keys_file.consumers)
        self._index = build_index(
            (name, entry.keys, entry.roles)
            for consumers in sources
            for name, entry in consumers.items()
        )
        if not len(self._index):
            raise ValueError("no consumers: set consumers = { name = \"key\" } or keys_file")
        return self

    @property
    def index(self) -> KeyIndex:
        """Digest -> consumer for every key of ``consumers`` and ``keys_file``."""
        return self._index
