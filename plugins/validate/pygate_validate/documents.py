"""Reading OpenAPI documents and JSON Schema files, with every file their ``$ref``s name.

Pure: no aiohttp, no pluggy. A document is read once, when the configuration
loads: parsed as JSON or YAML (plain data only: YAML dates stay strings), then
every ``$ref`` is followed so that the files it names are loaded too (relative
to the file that holds the reference), and every reference is looked up. The
result is a :class:`Bundle`: the documents by URI and a ``referencing``
registry holding them, so validators never read a file or fail on a reference
while a request is being checked.

Problems are :class:`DocumentError`, whose message says which file and where.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urldefrag, urljoin, urlsplit
from urllib.request import url2pathname

import yaml
from referencing import Registry, Resource, Specification
from referencing.exceptions import CannotDetermineSpecification, Unresolvable
from referencing.jsonschema import DRAFT202012

MAX_FILES = 256
"""The most files one document may pull in through ``$ref``s."""


class DocumentError(ValueError):
    """A document that cannot be used: unreadable, not JSON/YAML, a bad ``$ref``."""


class _Loader(yaml.SafeLoader):
    """YAML's safe loader without timestamps: ``2024-01-01`` stays the string JSON has."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def shown(path: Path | str) -> str:
    """A path as error messages show it."""
    return repr(str(path))


def parse(data: bytes, name: str, *, as_json: bool) -> Any:
    """JSON or YAML text -> plain data (``name`` tells errors which file).

    With ``as_json`` (a ``.json`` file) the text is read as JSON; else as YAML (JSON is
    YAML too, so a JSON document under another name reads the same).
    """
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise DocumentError(f"{name} is not UTF-8 text") from None
    if as_json:
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DocumentError(f"{name} is not valid JSON: {exc.msg} (line {exc.lineno}, "
                                f"column {exc.colno})") from None
        except (ValueError, RecursionError) as exc:
            raise DocumentError(f"{name} is not valid JSON: {exc}") from None
    else:
        try:
            value = yaml.load(text, Loader=_Loader)
        except yaml.YAMLError as exc:
            raise DocumentError(f"{name} is not valid YAML or JSON: {_yaml_reason(exc)}") from None
    try:
        return plain(value)
    except RecursionError:
        raise DocumentError(f"{name} is nested too deeply (or refers to itself)") from None
    except ValueError as exc:
        raise DocumentError(f"{name}: {exc}") from None


def _yaml_reason(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        return f"{exc.problem} (line {mark.line + 1}, column {mark.column + 1})"
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def plain(value: Any, where: str = "") -> Any:
    """``value`` as JSON data: string keys, no sets, dates or bytes (YAML may make them)."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if isinstance(key, bool) or not isinstance(key, str | int | float):
                raise ValueError(f"the key {key!r} at {where or '/'} is not a string")
            name = str(key)
            out[name] = plain(item, f"{where}/{escape(name)}")
        return out
    if isinstance(value, list):
        return [plain(item, f"{where}/{index}") for index, item in enumerate(value)]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    raise ValueError(f"the value at {where or '/'} is not JSON data ({type(value).__name__})")


def escape(segment: str) -> str:
    """One RFC 6901 reference token."""
    return segment.replace("~", "~0").replace("/", "~1")


def read(path: Path) -> Any:
    """The parsed contents of the file at ``path``."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DocumentError(f"file not found: {shown(path)}") from None
    except IsADirectoryError:
        raise DocumentError(f"{shown(path)} is a folder, not a file") from None
    except OSError as exc:
        raise DocumentError(f"cannot read {shown(path)}: {exc.strerror or exc}") from None
    return parse(data, shown(path), as_json=path.suffix.lower() == ".json")


def path_of(uri: str) -> Path:
    """The file a ``file:`` URI names."""
    return Path(url2pathname(urlsplit(uri).path))


@dataclass(frozen=True, slots=True)
class Bundle:
    """A document and the files it refers to, ready for validators.

    :param uri: the ``file:`` URI of the main document.
    :param contents: every loaded document by URI (the main one included).
    :param registry: those documents (and each schema with an ``$id``) as resources.
    """

    uri: str
    contents: dict[str, Any]
    registry: Registry[Any]

    @property
    def root(self) -> Any:
        return self.contents[self.uri]


def refs(value: Any, base: str, where: str = "", *,
         ids: bool = False) -> Iterator[tuple[str, str, str]]:
    """``(reference, base URI, pointer)`` for every ``$ref`` string in ``value``.

    With ``ids``, an ``$id`` (JSON Schema 2019+) changes the base of what it holds.
    """
    stack: list[tuple[Any, str, str]] = [(value, base, where)]
    while stack:
        node, node_base, pointer = stack.pop()
        if isinstance(node, dict):
            if ids and isinstance(node.get("$id"), str):
                node_base = urljoin(node_base, node["$id"])
            ref = node.get("$ref")
            if isinstance(ref, str):
                yield ref, node_base, pointer + "/$ref"
            for key, item in node.items():
                if isinstance(item, dict | list):
                    stack.append((item, node_base, f"{pointer}/{escape(key)}"))
        elif isinstance(node, list):
            for index, item in enumerate(node):
                if isinstance(item, dict | list):
                    stack.append((item, node_base, f"{pointer}/{index}"))


def _identified(value: Any, base: str) -> Iterator[tuple[str, Any]]:
    """``(absolute URI, schema)`` for every object with an ``$id`` inside ``value``."""
    stack: list[tuple[Any, str]] = [(value, base)]
    while stack:
        node, node_base = stack.pop()
        if isinstance(node, dict):
            if isinstance(node.get("$id"), str):
                node_base = urljoin(node_base, node["$id"])
                yield urldefrag(node_base).url, node
            stack.extend((item, node_base) for item in node.values()
                         if isinstance(item, dict | list))
        elif isinstance(node, list):
            stack.extend((item, node_base) for item in node if isinstance(item, dict | list))


def load(path: Path, specification: Specification[Any] | None, *, ids: bool,
         root: Any = None) -> Bundle:
    """Read ``path`` (unless its contents are given as ``root``) and every file its
    ``$ref``s name; check that each reference resolves.

    :param specification: how the documents' schemas are read (draft 4 for OpenAPI 3.0,
        2020-12 for OpenAPI 3.1), for ``$id`` and anchors; ``None`` for JSON Schema
        files: the draft their ``$schema`` names, else 2020-12.
    :param ids: whether ``$id`` changes the base URI (JSON Schema 2019+).
    :raise DocumentError: a file cannot be read, or a reference cannot be resolved.
    """
    uri = path.resolve().as_uri()
    contents: dict[str, Any] = {uri: read(path) if root is None else root}
    queue = [uri]
    while queue:
        current = queue.pop()
        for ref, base, pointer in refs(contents[current], current, ids=ids):
            target = urldefrag(urljoin(base, ref)).url
            if not target or target in contents:
                continue
            where = f"$ref {ref!r} at {pointer} in {shown(path_of(current))}"
            if urlsplit(target).scheme != "file":
                raise DocumentError(f"{where}: only local files can be referred to (save the "
                                    "document next to this one and refer to it by a relative "
                                    "path)")
            if len(contents) >= MAX_FILES:
                raise DocumentError(f"{shown(path)} refers to more than {MAX_FILES} files")
            try:
                contents[target] = read(path_of(target))
            except DocumentError as exc:
                raise DocumentError(f"{where}: {exc}") from None
            queue.append(target)
    resources: list[tuple[str, Resource[Any]]] = []
    for doc_uri, doc in contents.items():
        resources.append((doc_uri, _resource(doc, specification, doc_uri)))
        if ids:
            resources.extend((found, _resource(schema, specification, found))
                             for found, schema in _identified(doc, doc_uri) if found != doc_uri)
    registry: Registry[Any] = Registry().with_resources(resources)
    resolver = registry.resolver()
    for doc_uri, doc in contents.items():
        for ref, base, pointer in refs(doc, doc_uri, ids=ids):
            try:
                resolver.lookup(urljoin(base, ref))
            except Unresolvable:
                raise DocumentError(f"$ref {ref!r} at {pointer} in {shown(path_of(doc_uri))} "
                                    f"cannot be resolved: nothing is there") from None
    return Bundle(uri=uri, contents=contents, registry=registry)


def _resource(contents: Any, specification: Specification[Any] | None, uri: str
              ) -> Resource[Any]:
    if specification is not None:
        return specification.create_resource(contents)
    try:
        return Resource.from_contents(contents, default_specification=DRAFT202012)
    except CannotDetermineSpecification:
        raise DocumentError(f"{shown(path_of(uri))} names an unknown $schema "
                            f"{contents.get('$schema')!r}") from None
