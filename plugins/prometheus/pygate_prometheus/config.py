"""The ``[plugins.prometheus]`` table: no settings yet.

The metrics are process-wide (one set per worker, summed at scrape time), so a
setting could not differ between routes anyway; a route opts out with
``plugins = { prometheus = false }``. Unknown keys are configuration errors,
as for every plugin.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class PrometheusConfig(BaseModel):
    """Settings of the ``prometheus`` plugin (none): see the plugin's README."""

    model_config = ConfigDict(extra="forbid")
