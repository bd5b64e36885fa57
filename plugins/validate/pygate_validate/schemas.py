"""Compiled schemas: one validator per schema, built at load, and its violations.

Pure: no aiohttp, no pluggy. The validators are ``jsonschema``'s, in the
dialect of the document: OpenAPI 3.0's schema objects (``nullable``, draft 4
``exclusiveMinimum``, ``readOnly`` properties not required in requests) and
OpenAPI 3.1's (JSON Schema draft 2020-12) through ``openapi-schema-validator``;
JSON Schema files through the draft their ``$schema`` names (2020-12 by
default). Every validator asserts ``format`` (JSON Schema 2020-12 only
annotates it), with ``email`` checked by ``email-validator``.

A validator is built on its schema as found in the document's registry (a
``referencing`` resolver based where the schema stands), so references inside it
resolve as written and the schema itself is not looked up per request.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from email_validator import EmailNotValidError, validate_email
from jsonschema import Draft202012Validator, FormatChecker
from jsonschema.exceptions import ValidationError
from jsonschema.protocols import Validator
from jsonschema.validators import extend, validator_for
from openapi_schema_validator import (
    OAS30WriteValidator,
    OAS31Validator,
    oas30_format_checker,
    oas31_format_checker,
)
from referencing import Registry

from .documents import escape

MAX_ERRORS = 50
"""The most violations listed for one part of a request."""

MAX_MESSAGE = 240
"""Messages longer than this (a long value quoted back) are shortened in the middle."""

OAS30 = "3.0"
OAS31 = "3.1"
JSON_SCHEMA = "json-schema"


@dataclass(frozen=True, slots=True)
class Violation:
    """One way a request differs from its description.

    :param where: ``"path"``, ``"query"``, ``"header"`` or ``"body"``.
    :param pointer: an RFC 6901 JSON pointer into that part (``/email``, ``/items/0``).
    :param message: what is wrong, for the client.
    """

    where: str
    pointer: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"in": self.where, "pointer": self.pointer, "message": self.message}


def _no_error(*_: Any) -> Iterator[ValidationError]:
    return iter(())


# OpenAPI 3.0 request bodies: a readOnly property is neither required nor refused
# (clients often send back what they read); a writeOnly one is required as usual.
OAS30Request = extend(OAS30WriteValidator, {"readOnly": _no_error})


_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_ASCII_EMAIL = re.compile(rf"(?={_ATOM}(?:\.{_ATOM})*@)[^@]{{1,64}}@(?=.{{4,253}}$)"
                          rf"(?:{_LABEL}\.)+[A-Za-z]{{2,63}}")
"""A plain ASCII address (dot-atom local part, a domain name with a top-level label of
letters): accepted at once; anything else is for ``email-validator`` to judge, which
takes about fifty times as long."""


def _email(instance: object) -> bool:
    if not isinstance(instance, str) or _ASCII_EMAIL.fullmatch(instance):
        return True
    try:
        validate_email(instance, check_deliverability=False)
    except EmailNotValidError:
        return False
    return True


def _safe(check: Callable[[Any], Any]) -> Callable[[Any], bool]:
    """A format check that answers False instead of raising (``byte`` raises on non-ASCII
    text, other checks on values their library did not expect)."""

    def safe(instance: Any) -> bool:
        try:
            return bool(check(instance))
        except Exception:
            return False

    return safe


def format_checker(dialect: str) -> FormatChecker:
    """Every format ``jsonschema`` knows (email, date, date-time, uri, uuid, ipv4,
    ipv6...), OpenAPI's (int32, int64, float, double, byte...), email by
    ``email-validator``; no check may raise anything but a format failure."""
    checker = FormatChecker()
    extra = oas30_format_checker if dialect == OAS30 else oas31_format_checker
    checker.checkers.update(extra.checkers)
    checker.checkers["email"] = (_email, ())
    checker.checkers["idn-email"] = (_email, ())
    checker.checkers = {name: (_safe(func), raises)
                        for name, (func, raises) in checker.checkers.items()}
    return checker


_CHECKERS = {dialect: format_checker(dialect) for dialect in (OAS30, OAS31, JSON_SCHEMA)}


def validator_class(dialect: str, schema: Any) -> type[Validator]:
    if dialect == OAS30:
        return OAS30Request
    if dialect == OAS31:
        return OAS31Validator
    found: type[Validator] = validator_for(schema, default=Draft202012Validator)
    return found


class SchemaCheck:
    """One compiled schema: :meth:`violations` of a value, as JSON pointers and messages."""

    __slots__ = ("location", "validator")

    def __init__(self, location: str, dialect: str, registry: Registry[Any]) -> None:
        """:param location: the schema's absolute URI (``file:///api.yaml#/paths/...``)
        in ``registry``.

        The validator starts where the schema stands (a resolver based there), so its
        references resolve as written, without a look-up of the schema per request.
        """
        self.location = location
        resolved = registry.resolver().lookup(location)
        cls = validator_class(dialect, resolved.contents)
        self.validator = cls(resolved.contents, registry=registry,
                             format_checker=_CHECKERS[dialect], _resolver=resolved.resolver)

    def violations(self, instance: Any, where: str, prefix: str = "") -> list[Violation]:
        """How ``instance`` breaks the schema (at most :data:`MAX_ERRORS`), pointers
        under ``prefix``. Never raises: a value that cannot be checked is a violation."""
        try:
            errors = list(itertools.islice(self.validator.iter_errors(instance), MAX_ERRORS))
        except RecursionError:
            return [Violation(where, prefix, "nested too deeply to be checked")]
        except Exception as exc:  # a schema keyword that fails on this value (huge numbers)
            return [Violation(where, prefix, f"cannot be checked against its schema "
                                             f"({type(exc).__name__})")]
        return [Violation(where, prefix + pointer_of(error), message_of(error))
                for error in errors if error.message != _NOT_NULLABLE]


def pointer_of(error: ValidationError) -> str:
    """The JSON pointer of the value an error is about; for a missing required
    property, the pointer where it should be."""
    pointer = "".join("/" + escape(str(part)) for part in error.absolute_path)
    if error.validator == "required" and isinstance(error.instance, dict):
        for name in error.validator_value if isinstance(error.validator_value, list) else ():
            if (isinstance(name, str) and name not in error.instance
                    and error.message == f"{name!r} is a required property"):
                return f"{pointer}/{escape(name)}"
    return pointer


_NOT_NULLABLE = "None for not nullable"
"""openapi-schema-validator's first error for a null where the 3.0 schema has no
``nullable: true``; a type error for the same value follows it, and says it better."""


def message_of(error: ValidationError) -> str:
    message = error.message
    if error.instance is None and message.startswith("None "):  # JSON's word, not Python's
        message = "null " + message[len("None "):]
    if error.validator == "format":  # jsonschema says "'x' is not a 'email'"
        message = f"{error.instance!r} is not a valid {error.validator_value}"
    if len(message) > MAX_MESSAGE:
        half = MAX_MESSAGE // 2
        message = f"{message[:half]} ... {message[-half:]}"
    return message
