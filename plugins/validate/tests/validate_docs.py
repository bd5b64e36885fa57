"""Documents the tests share: an OpenAPI 3.0 document (YAML) and a 3.1 one (JSON)."""

from __future__ import annotations

import json
from typing import Any

USERS_30 = """\
openapi: 3.0.3
info: {title: users, version: "1"}
servers:
  - url: https://api.example.com/api
paths:
  /users:
    get:
      parameters:
        - {name: limit, in: query, required: true, schema: {type: integer, maximum: 100}}
        - {name: tag, in: query, schema: {type: array, items: {type: string}}}
        - {name: fields, in: query, explode: false,
           schema: {type: array, items: {type: string, enum: [name, email]}}}
        - name: filter
          in: query
          style: deepObject
          schema: {type: object, properties: {age: {type: integer}, kind: {type: string}}}
      responses: {"200": {description: ok}}
    post:
      requestBody:
        required: true
        content:
          application/json:
            schema: {$ref: '#/components/schemas/NewUser'}
          text/plain: {}
      responses: {"201": {description: created}}
  /users/me:
    get:
      responses: {"200": {description: ok}}
  /users/{id}:
    parameters:
      - {name: id, in: path, required: true, schema: {type: integer, minimum: 1}}
    get:
      parameters:
        - name: X-Mode
          in: header
          required: true
          schema: {type: string, enum: [fast, full]}
        - {name: X-Trace, in: header, schema: {type: array, items: {type: integer}}}
      responses: {"200": {description: ok}}
    put:
      requestBody:
        content:
          application/json:
            schema: {$ref: 'schemas/user.yaml'}
      responses: {"200": {description: ok}}
  /files/{name}.{ext}:
    get:
      parameters:
        - {name: name, in: path, required: true, schema: {type: string, minLength: 2}}
        - {name: ext, in: path, required: true, schema: {type: string, enum: [txt, md]}}
      responses: {"200": {description: ok}}
  /colors/{list}:
    get:
      parameters:
        - {name: list, in: path, required: true, style: label, explode: true,
           schema: {type: array, items: {type: integer}}}
      responses: {"200": {description: ok}}
  /points/{point}:
    get:
      parameters:
        - {name: point, in: path, required: true, style: matrix,
           schema: {type: object, properties: {x: {type: integer}, y: {type: integer}}}}
      responses: {"200": {description: ok}}
components:
  schemas:
    NewUser:
      type: object
      required: [name, email]
      properties:
        name: {type: string, minLength: 1}
        email: {type: string, format: email}
        id: {type: string, format: uuid}
        born: {type: string, format: date-time}
        birthday: {type: string, format: date}
        site: {type: string, format: uri}
        ip: {type: string, format: ipv4}
        ip6: {type: string, format: ipv6}
        nick: {type: string, nullable: true}
        age: {type: integer, format: int32}
        since: {type: string, enum: [2020-01-01]}
        created: {type: string, readOnly: true}
"""

USER_SCHEMA_FILE = """\
type: object
required: [name]
properties:
  name: {type: string}
  manager: {$ref: '#/definitions/Ref'}
definitions:
  Ref: {type: integer, minimum: 1}
"""


def orders_31() -> str:
    """An OpenAPI 3.1 document, as JSON."""
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "orders", "version": "1"},
        "paths": {
            "/orders": {
                "post": {
                    "requestBody": {"required": True, "content": {"application/json": {
                        "schema": {"$ref": "#/components/schemas/Order"}}}},
                    "responses": {"201": {"description": "created"}},
                },
            },
            "/orders/{id}": {
                "get": {
                    "parameters": [
                        {"name": "id", "in": "path", "required": True,
                         "schema": {"type": "string", "format": "uuid"}},
                        {"name": "when", "in": "query",
                         "schema": {"type": ["string", "null"], "format": "date"}},
                        {"name": "q", "in": "query",
                         "content": {"application/json": {"schema": {
                             "type": "object", "required": ["a"],
                             "properties": {"a": {"type": "integer"}}}}}},
                    ],
                    "responses": {"200": {"description": "ok"}},
                },
            },
        },
        "components": {"schemas": {"Order": {
            "type": "object",
            "required": ["item", "count"],
            "properties": {
                "item": {"type": "string"},
                "count": {"type": "integer", "exclusiveMinimum": 0},
                "note": {"type": ["string", "null"]},
                "contact": {"type": "string", "format": "email"},
            },
            "additionalProperties": False,
        }}},
    }
    return json.dumps(doc, indent=2)
