"""An HTTP/1.1 fuzzer for a running ``pygate serve``.

Shared by ``tests/test_fuzz_functional.py`` (a bounded run in the suite) and
``benchmarks/fuzz_http.py`` (``make fuzz``: a long run with a fresh seed):

- :mod:`.upstream`: the gateway configuration fuzzed (a template, a prefix, a
  ``jwt`` and a WebSocket route) and the aiohttp upstream behind it, which
  records the ``X-Request-ID`` of every request it receives and answers with
  it and a digest of the body it got;
- :mod:`.exchanges`: hypothesis strategies for one connection's worth of
  bytes (mutated request lines, headers and framing, pipelining, Bearer
  tokens with arbitrary bytes, WebSocket handshakes with garbage, bodies cut
  short before a half-close or an abort);
- :mod:`.wire`: raw blocking sockets and a lenient response parser;
- :mod:`.checks`: :class:`Fuzzer`, which sends exchanges from a thread pool
  and checks PRODUCT.md section 4, items 5 and 6, after every batch;
- :mod:`.drive`: hypothesis as the generator (:func:`drive`), and
  :func:`reproduce`, which shrinks a failure to the bytes that cause it.
"""

from .checks import Failure, Fuzzer
from .drive import Reproduction, drive, reproduce
from .upstream import FuzzUpstream, gateway_config

__all__ = ["Failure", "FuzzUpstream", "Fuzzer", "Reproduction", "drive", "gateway_config",
           "reproduce"]
