"""Demo JWTs for the demo configuration (HS256 with the demo secret).

The top-level pygate.toml verifies tokens with ``${JWT_SECRET:-DEMO_SECRET}``;
``python -m pygate.demo --token`` prints one for user "1" (role admin), valid 24 h.
"""

from __future__ import annotations

import os
import time

DEMO_SECRET = "pygate-demo-secret-do-not-use-in-production"


def demo_token(sub: str = "1", role: str = "admin", ttl: int = 86400) -> str:
    """An HS256 token the demo gateway accepts (needs pyjwt, installed with pygate-jwt)."""
    import jwt  # the jwt plugin's dependency; `make serve` installs it

    now = int(time.time())
    claims = {"sub": sub, "role": role, "iat": now, "exp": now + ttl, "iss": "pygate-demo"}
    secret = os.environ.get("JWT_SECRET") or DEMO_SECRET
    return jwt.encode(claims, secret, algorithm="HS256")
