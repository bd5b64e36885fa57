"""Bundled demo services (users, orders, products) for ``make serve`` and the README.

Run them with ``python -m pygate.demo``; build one in a test with :func:`make_app`.
"""

from pygate.demo.services import DEFAULT_PORTS, SERVICES, make_app

__all__ = ["DEFAULT_PORTS", "SERVICES", "make_app"]
