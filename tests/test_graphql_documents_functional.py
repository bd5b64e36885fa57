"""Automatic Persisted Queries and the cache of prepared documents, end to end.

PRODUCT.md section 6: a request with only the sha256 hash of an unknown document
answers the ``PersistedQueryNotFound`` error (the shape Apollo clients expect,
then retrying with the document); a request with the document and its hash
stores it (bounded, per route); later requests, GET ones too, send the hash
alone, so HTTP caches can keep their answers. A hash that does not match its
document is refused and nothing is stored; ``persisted_queries = false`` turns
it off. Parsed and validated documents are kept per route (bounded), so a
repeated query is not parsed or validated again.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from pygate import graphql_documents
from tests.conftest import UpstreamFactory, problem

SCHEMA = "type Query { user(id: ID!): User }\ntype User { id: ID! name: String }"
QUERY = 'query User { user(id: "1") { id name } }'
GRAPHQL_RESPONSE = "application/graphql-response+json"


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def extensions(digest: str) -> dict[str, Any]:
    return {"persistedQuery": {"version": 1, "sha256Hash": digest}}


async def service(upstream: UpstreamFactory) -> Any:
    async def user(request: web.Request) -> web.Response:
        return web.json_response({"id": request.match_info["id"], "name": "Ada"})

    return await upstream(routes={"GET /users/{id}": user})


def config(up: Any, **graphql: Any) -> dict[str, Any]:
    return {"upstreams": {"users": {"targets": [up.url]}},
            "routes": [{"name": "graphql", "path": "/graphql", "graphql": {
                "schema": "schema.graphql", **graphql, "resolvers": {
                    "Query.user": {"upstream": "users", "path": "/users/{args.id}"}}}}]}


@pytest.fixture
def schema_dir(tmp_path: Path) -> str:
    (tmp_path / "schema.graphql").write_text(SCHEMA)
    return str(tmp_path)


async def post(gw: Any, payload: dict[str, Any], accept: str | None = None
               ) -> tuple[int, Any, Any]:
    headers = {"Accept": accept} if accept else {}
    async with gw.session.post(gw.url + "/graphql", json=payload, headers=headers) as response:
        return response.status, response.headers, await response.json(content_type=None)


async def get(gw: Any, digest: str, accept: str | None = None) -> tuple[int, Any, Any]:
    headers = {"Accept": accept} if accept else {}
    params = {"extensions": json.dumps(extensions(digest))}
    async with gw.session.get(gw.url + "/graphql", params=params, headers=headers) as response:
        return response.status, response.headers, await response.json(content_type=None)


NOT_FOUND = {"errors": [{"message": "PersistedQueryNotFound",
                         "extensions": {"code": "PERSISTED_QUERY_NOT_FOUND"}}]}


async def test_the_apollo_flow_and_get_by_hash(
        pygate_gateway: Any, upstream: UpstreamFactory, schema_dir: str) -> None:
    up = await service(upstream)
    gw = await pygate_gateway(config(up), base_dir=schema_dir)
    digest = sha256(QUERY)
    # 1. The hash alone: not found (200 for application/json, as Apollo Server answers;
    #    400 for a GraphQL-over-HTTP client), never to be cached, no call made.
    status, headers, body = await get(gw, digest)
    assert (status, body) == (200, NOT_FOUND)
    assert headers["Cache-Control"] == "no-store"
    status, headers, body = await post(gw, {"extensions": extensions(digest)}, GRAPHQL_RESPONSE)
    assert (status, body) == (400, NOT_FOUND)
    assert headers["Content-Type"].startswith(GRAPHQL_RESPONSE)
    assert up.seen == []
    # 2. The document with its hash: run, and stored.
    status, _, body = await post(gw, {"query": QUERY, "extensions": extensions(digest)})
    assert (status, body) == (200, {"data": {"user": {"id": "1", "name": "Ada"}}})
    # 3. The hash alone, by POST and by GET (upper-case digits too).
    status, _, body = await post(gw, {"extensions": extensions(digest)})
    assert (status, body) == (200, {"data": {"user": {"id": "1", "name": "Ada"}}})
    status, _, body = await get(gw, digest.upper())
    assert (status, body) == (200, {"data": {"user": {"id": "1", "name": "Ada"}}})
    assert len(up.seen) == 3


async def test_a_get_by_hash_is_what_http_caches_keep(
        pygate_gateway: Any, upstream: UpstreamFactory, schema_dir: str) -> None:
    """A GET by hash is a short URL with an ordinary 200 (varying by Accept, the media type
    depending on it), which an HTTP cache in front of the gateway may keep; the not-found
    answer says ``no-store``, so no cache keeps it past the document's registration."""
    up = await service(upstream)
    gw = await pygate_gateway(config(up), base_dir=schema_dir)
    digest = sha256(QUERY)
    status, headers, _ = await get(gw, digest)
    assert status == 200 and headers["Cache-Control"] == "no-store"
    await post(gw, {"query": QUERY, "extensions": extensions(digest)})
    async with gw.session.get(gw.url + "/graphql", params={
            "extensions": json.dumps(extensions(digest))}) as response:
        assert response.status == 200
        assert len(str(response.url)) < 200
        assert response.headers["Vary"] == "Accept"
        assert "Cache-Control" not in response.headers
        assert response.headers["Content-Type"] == "application/json; charset=utf-8"
        assert await response.json() == {"data": {"user": {"id": "1", "name": "Ada"}}}


async def test_a_hash_that_does_not_match_is_refused_and_nothing_stored(
        pygate_gateway: Any, upstream: UpstreamFactory, schema_dir: str) -> None:
    up = await service(upstream)
    gw = await pygate_gateway(config(up), base_dir=schema_dir)
    wrong = sha256("{ something else }")
    status, _, body = await post(gw, {"query": QUERY, "extensions": extensions(wrong)})
    assert status == 400 and "does not match" in problem(body)["detail"]
    assert (await post(gw, {"extensions": extensions(wrong)}))[2] == NOT_FOUND
    # A document that does not validate is not stored either.
    bad = "{ user(id: 1) { nickname } }"
    status, _, body = await post(gw, {"query": bad, "extensions": extensions(sha256(bad))})
    assert status == 200 and body["errors"][0]["extensions"]["code"] == \
        "GRAPHQL_VALIDATION_FAILED"
    assert (await post(gw, {"extensions": extensions(sha256(bad))}))[2] == NOT_FOUND
    # Extensions that are not a persisted query of version 1 with a sha256 digest.
    for extension in ({"version": 2, "sha256Hash": sha256(QUERY)},
                      {"version": 1, "sha256Hash": "abc"}, "hash"):
        status, _, body = await post(gw, {"extensions": {"persistedQuery": extension}})
        assert status == 400 and problem(body)["errors"], extension
    assert up.seen == []


async def test_persisted_queries_off(
        pygate_gateway: Any, upstream: UpstreamFactory, schema_dir: str) -> None:
    up = await service(upstream)
    gw = await pygate_gateway(config(up, persisted_queries=False), base_dir=schema_dir)
    digest = sha256(QUERY)
    status, headers, body = await post(gw, {"extensions": extensions(digest)})
    assert headers["Cache-Control"] == "no-store"
    assert (status, body) == (200, {"errors": [{
        "message": "PersistedQueryNotSupported",
        "extensions": {"code": "PERSISTED_QUERY_NOT_SUPPORTED"}}]})
    # With the document the hash is not needed: it runs, and nothing is stored.
    status, _, body = await post(gw, {"query": QUERY, "extensions": extensions(digest)})
    assert (status, body) == (200, {"data": {"user": {"id": "1", "name": "Ada"}}})
    assert (await post(gw, {"extensions": extensions(digest)}))[2]["errors"][0]["message"] == \
        "PersistedQueryNotSupported"


async def test_the_store_is_bounded(
        pygate_gateway: Any, upstream: UpstreamFactory, schema_dir: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(graphql_documents, "PERSISTED", 3)
    up = await service(upstream)
    gw = await pygate_gateway(config(up), base_dir=schema_dir)
    queries = [f'{{ user(id: "{n}") {{ id }} }}' for n in range(4)]
    for query in queries:
        await post(gw, {"query": query, "extensions": extensions(sha256(query))})
    # The oldest went: its hash alone is not found; the three most recent are there.
    assert (await post(gw, {"extensions": extensions(sha256(queries[0]))}))[2] == NOT_FOUND
    for n, query in enumerate(queries[1:], 1):
        body = (await post(gw, {"extensions": extensions(sha256(query))}))[2]
        assert body == {"data": {"user": {"id": str(n)}}}


async def test_a_repeated_document_is_not_parsed_or_validated_again(
        pygate_gateway: Any, upstream: UpstreamFactory, schema_dir: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []
    parse, validate = graphql_documents.parse, graphql_documents.validate

    def counting_parse(text: str) -> Any:
        seen.append("parse")
        return parse(text)

    def counting_validate(*args: Any) -> Any:
        seen.append("validate")
        return validate(*args)

    monkeypatch.setattr(graphql_documents, "parse", counting_parse)
    monkeypatch.setattr(graphql_documents, "validate", counting_validate)
    monkeypatch.setattr(graphql_documents, "DOCUMENTS", 2)
    up = await service(upstream)
    gw = await pygate_gateway(config(up), base_dir=schema_dir)
    query = "query U($id: ID!) { user(id: $id) { name } }"
    for n in range(3):  # other variables, the same document
        body = (await post(gw, {"query": query, "variables": {"id": str(n)}}))[2]
        assert body == {"data": {"user": {"name": "Ada"}}}
    assert seen == ["parse", "validate"]
    # A refused document is kept refused.
    for _ in range(2):
        assert (await post(gw, {"query": "{ user { name } }"}))[2]["errors"]
    assert seen == ["parse", "validate"] * 2
    # Bounded: a third document pushes out the least recently used one.
    await post(gw, {"query": '{ user(id: "9") { id } }'})
    await post(gw, {"query": query, "variables": {"id": "1"}})
    assert seen == ["parse", "validate"] * 4
