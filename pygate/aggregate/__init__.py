"""Aggregate routes: several upstream calls composed into one JSON response.

- :mod:`.placeholders`: ``{id}``, ``{query.NAME}``, ``{header.NAME}``,
  ``{identity.FIELD}``, ``{CALL.a.b}``; templates split once, values encoded
  where they land.
- :mod:`.plan` compiles a route's ``aggregate`` table once, at load: the
  calls, the call graph, its stages, and the configuration errors.
- :mod:`.run` makes the calls for one request, concurrently where the graph
  allows, and decides the outcome (partial results, 502, 504).
- :mod:`.shape` applies ``fields`` and ``rename`` to each call's result.
- :mod:`.explain` prints a plan as stages for ``pygate explain``.

The ``aggregate`` hook, which may replace the composed body, runs in
:mod:`pygate.kinds.aggregate`.
"""

from .explain import describe
from .plan import AggregatePlan, CallPlan, compile_plan
from .run import Composed, Transform, call_headers, execute

__all__ = ["AggregatePlan", "CallPlan", "Composed", "Transform", "call_headers", "compile_plan",
           "describe", "execute"]
