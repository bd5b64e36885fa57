"""validate: requests checked against an OpenAPI 3.0/3.1 document or JSON Schemas.

``admit`` finds the request's operation in the document (by method, and by the
path the client sent under the document's ``servers`` base path), checks the
path, query and header parameters and the JSON body, and refuses a request
that breaks its description with one 400 problem document listing every
violation (``errors``: ``{"in", "pointer", "message"}``) before any upstream
is called; 415 for a body of a media type the operation does not take. With
``strict``, a request the document does not describe gets 404 (405 for a
described path). ``transform_request`` hands the body it read on to the
upstream request, byte for byte. See README.md for every setting.

The document and schemas are compiled when the configuration loads
(:mod:`.config`); per request only the look-up and the checks run.
"""

from __future__ import annotations

import asyncio

from aiohttp import web
from pydantic import BaseModel

from pygate.plugin import (
    BadRequest,
    Context,
    GatewayError,
    MethodNotAllowed,
    NotFound,
    hookimpl,
    read_body,
)

from .body import Unsupported, check_json
from .config import ValidateConfig
from .schemas import Violation

__version__ = "0.1.0"

NAME = "validate"

PRIORITY = 999
"""As Kong's request-validator: after authentication (its own phase, before ``admit``),
before acl (950) and rate-limit (910), so an invalid request does not count against a
limit, and before cache (100), so none is answered from it."""

THREAD_ABOVE = 256 * 1024
"""Bodies larger than this are parsed and checked off the event loop."""


@hookimpl
def config_schema() -> type[BaseModel]:
    return ValidateConfig


@hookimpl
async def admit(request: web.BaseRequest, ctx: Context) -> None:
    config: ValidateConfig = ctx.config
    plan = config.plan
    method = request.method
    found = plan.find(method, ctx.path)
    operation = found.operation
    if operation is None and plan.strict:
        if found.allow:
            raise MethodNotAllowed(f"the API description has no {method} operation for this "
                                   "path", headers={"Allow": found.allow})
        raise NotFound(f"the API description has no operation for {method} {ctx.path}")
    problems = plan.check_params(operation, found.path_params,
                                 request.rel_url.raw_query_string, request.headers)
    unsupported: Unsupported | None = None
    spec = plan.body_spec(operation)
    if spec is not None:
        required = spec.required_for(method)
        if not request.body_exists:
            if required:
                problems.append(Violation("body", "", "a request body is required"))
        else:
            entry, unsupported = spec.to_read(request.headers.get("Content-Type"),
                                              request.headers.get("Content-Encoding"))
            if unsupported is not None:
                problems.append(unsupported.violation)
            elif entry is not None:
                data = await read_body(request, ctx)  # the core sends it on (ctx.body)
                problems.extend(check_json(entry, data, required) if len(data) <= THREAD_ABOVE
                                else await asyncio.to_thread(check_json, entry, data, required))
    if not problems:
        return
    errors = [problem.as_dict() for problem in problems]
    count = f"{len(errors)} error{'s' if len(errors) != 1 else ''}"
    if unsupported is not None:
        raise GatewayError(f"unsupported media type; request validation failed: {count}",
                           status=415, headers=unsupported.headers, extra={"errors": errors})
    raise BadRequest(f"request validation failed: {count}", extra={"errors": errors})


__all__ = ["NAME", "PRIORITY", "ValidateConfig", "admit", "config_schema"]
