"""h2's connection object as the gateway sets it up, and what the protocol reads of it.

Three places reach past h2's public API, all for behaviour RFC 9113 asks for and h2
4.x does not offer; each is small and covered by the end-to-end tests:

- :class:`_LocalSettings`: SETTINGS_MAX_CONCURRENT_STREAMS is advertised, while
  streams beyond it are refused one by one (REFUSED_STREAM) by the protocol, not
  turned into a connection error by h2;
- :func:`head_pending`: whether a request head is half received (the request-head
  deadline), read from h2's frame buffer;
- a graceful GOAWAY (:func:`goaway_frame`) is written past h2, whose state machine
  would otherwise refuse to finish the streams in flight; after a peer's graceful
  GOAWAY, :func:`reopen` lets those streams finish.
"""

from __future__ import annotations

from h2.config import H2Configuration
from h2.connection import ConnectionState, H2Connection
from h2.errors import ErrorCodes
from h2.settings import SettingCodes, Settings
from hyperframe.frame import GoAwayFrame

from .limits import MAX_HEADER_LIST, STREAM_WINDOW, hard_stream_limit

_CONFIG = H2Configuration(client_side=False, header_encoding=None,
                          validate_inbound_headers=True,
                          # Cookie fields split for compression are joined again
                          # (RFC 9113 section 8.2.3): upstreams speak HTTP/1.1.
                          normalize_inbound_headers=True)

_HEADERS, _CONTINUATION = 0x1, 0x9  # frame types that carry a request head


class _LocalSettings(Settings):
    """Our settings, whose MAX_CONCURRENT_STREAMS h2 advertises without enforcing it.

    h2 treats a stream beyond it as a connection error; RFC 9113 section 5.1.2
    allows REFUSED_STREAM, which lets the client retry, so the protocol refuses
    such streams itself (counting running handlers, not h2's open streams) and
    h2 only stops a peer far over it (:func:`~pygate.http2.limits.hard_stream_limit`).
    """

    hard_limit = 200

    @property
    def max_concurrent_streams(self) -> int:
        return self.hard_limit

    @max_concurrent_streams.setter
    def max_concurrent_streams(self, value: int) -> None:
        self[SettingCodes.MAX_CONCURRENT_STREAMS] = value


def new_connection(max_concurrent_streams: int) -> H2Connection:
    """A server-side h2 connection with the gateway's settings."""
    conn = H2Connection(config=_CONFIG)
    settings = _LocalSettings(client=False, initial_values={
        SettingCodes.MAX_CONCURRENT_STREAMS: max_concurrent_streams,
        SettingCodes.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST,
        SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
    })
    settings.hard_limit = hard_stream_limit(max_concurrent_streams)
    conn.local_settings = settings
    conn.decoder.max_header_list_size = MAX_HEADER_LIST
    return conn


def head_pending(conn: H2Connection) -> bool:
    """A header block waiting for its CONTINUATION frames, or a HEADERS/CONTINUATION
    frame partly received (h2 has no public view of its frame buffer)."""
    buffer = conn.incoming_buffer
    if getattr(buffer, "_headers_buffer", None):
        return True
    data = getattr(buffer, "_data", b"")
    return len(data) > 3 and data[3] in (_HEADERS, _CONTINUATION)


def goaway_frame(last_stream_id: int) -> bytes:
    """A GOAWAY NO_ERROR frame, for a graceful close h2 does not know about."""
    return GoAwayFrame(0, last_stream_id=last_stream_id,
                       error_code=ErrorCodes.NO_ERROR).serialize()


def reopen(conn: H2Connection) -> None:
    """Undo the closing of h2's state machine by a peer's graceful GOAWAY: the streams
    up to its last one may still finish (RFC 9113 section 6.8)."""
    conn.state_machine.state = ConnectionState.SERVER_OPEN


__all__ = ["goaway_frame", "head_pending", "new_connection", "reopen"]
