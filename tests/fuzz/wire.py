"""What goes on the wire and comes back: requests as raw parts, blocking sockets, parsing.

A :class:`Request` is kept in parts (method, target, version, whole header
lines, body) so that the shrinker can simplify it part by part; placeholders
stand for the IDs the fuzzer gives each request when it is sent.
"""

from __future__ import annotations

import gzip
import re
import socket
import struct
import time
import zlib
from dataclasses import dataclass

RID = b"@@RID@@"
"""Replaced by the request's own ``X-Request-ID`` when it is encoded."""
HIDDEN = b"@@HID@@"
"""Replaced by the ID of a request hidden in a body (``<rid>h``)."""
LENGTH = b"@@LEN@@"
"""Replaced by the length of a compressed body (known once it is compressed)."""


def chunked(body: bytes, size: int = 7) -> bytes:
    """``body`` in chunks of ``size`` bytes, with the last chunk."""
    return b"".join(b"%x\r\n" % len(body[i:i + size]) + body[i:i + size] + b"\r\n"
                    for i in range(0, len(body), size)) + b"0\r\n\r\n"


def compress(inner: bytes, coding: str) -> bytes:
    """``inner`` after enough ``x`` bytes that its compressed size equals that count.

    A gateway that decodes the body but forwards the compressed
    ``Content-Length`` then puts ``inner`` exactly where the upstream expects
    the next request.
    """
    def squeeze(data: bytes) -> bytes:
        return gzip.compress(data, mtime=0) if coding == "gzip" else zlib.compress(data)

    start = len(squeeze(inner))
    for count in range(start, start + 200):
        packed = squeeze(b"x" * count + inner)
        if len(packed) == count:
            return packed
    return squeeze(inner)


@dataclass(frozen=True)
class Request:
    """One request as raw parts; ``lines`` are whole header lines, written as given.

    ``coding`` says how ``body`` is written: as it is (``""``), ``"chunked"``,
    or compressed (``"gzip"``, ``"deflate"``, see :func:`compress`); it is
    applied when the placeholders are replaced, and so is ``LENGTH`` in the
    lines. ``payload``: the body the upstream should receive (the content of
    a chunked body; a compressed body as sent), ``None`` when the framing is
    broken and no answer is right.
    """

    method: bytes
    target: bytes
    version: bytes
    lines: tuple[bytes, ...]
    body: bytes = b""
    eol: bytes = b"\r\n"
    payload: bytes | None = b""
    coding: str = ""
    tags: frozenset[str] = frozenset()

    def encode(self, rid: bytes, hidden: bytes) -> tuple[bytes, bytes, bytes | None]:
        """``(head, body, payload)`` as written, with the placeholders replaced."""
        content = self.body.replace(HIDDEN, hidden)
        payload = None if self.payload is None else self.payload.replace(HIDDEN, hidden)
        if self.coding == "chunked":
            body = chunked(content)
        elif self.coding:
            body = payload = compress(content, self.coding)
        else:
            body = content
        start = b" ".join(p for p in (self.method, self.target, self.version) if p)
        head = self.eol.join((start, *self.lines)) + self.eol + self.eol
        return head.replace(RID, rid).replace(LENGTH, b"%d" % len(body)), body, payload


@dataclass(frozen=True)
class Exchange:
    """One connection: requests written back to back, then an ``ending``.

    ``ending``: ``"read"`` reads until the server closes, every request is
    answered, or the timeout; ``"half-close"`` shuts the write side first;
    ``"abort"`` closes with a reset right after writing, reading nothing;
    ``"close-after-first"`` resets the connection as soon as the first answer
    is in (a client that goes away between pipelined requests).
    ``split`` writes each head and each body as a send of its own.
    """

    requests: tuple[Request, ...]
    ending: str = "read"
    split: bool = False

    @property
    def tags(self) -> frozenset[str]:
        return frozenset().union(*(r.tags for r in self.requests)) | {f"end:{self.ending}"}

    def encode(self, rids: list[bytes], hidden: list[bytes]
               ) -> tuple[list[bytes], list[bytes | None]]:
        """``(parts to write, each request's expected upstream body)``."""
        parts: list[bytes] = []
        payloads: list[bytes | None] = []
        for request, rid, hid in zip(self.requests, rids, hidden, strict=True):
            head, body, payload = request.encode(rid, hid)
            parts += [head, body] if body else [head]
            payloads.append(payload)
        return (parts if self.split else [b"".join(parts)]), payloads


@dataclass
class Response:
    status: int
    headers: dict[str, list[str]]  # lower-case names
    body: bytes
    complete: bool

    def header(self, name: str) -> str | None:
        values = self.headers.get(name.lower())
        return values[0] if values else None


_STATUS = re.compile(rb"HTTP/\d\.\d (\d{3})(?: |\r\n|$)")


def parse_responses(data: bytes, methods: list[bytes], closed: bool
                    ) -> tuple[list[Response], bytes]:
    """Responses in ``data`` (interim 1xx included), and what follows the last one.

    ``methods`` are the requests' methods in order (a HEAD answer has no body);
    ``closed``: the server closed, so a body without a length ends here.
    Parsing stops after a 101 (WebSocket frames follow) and at bytes that are
    not a response head, which are returned.
    """
    out: list[Response] = []
    pos = 0
    final = 0
    while pos < len(data):
        end = data.find(b"\r\n\r\n", pos)
        match = _STATUS.match(data, pos)
        if end < 0 or match is None:
            break
        status = int(match.group(1))
        headers: dict[str, list[str]] = {}
        for line in data[pos:end].split(b"\r\n")[1:]:
            name, _, value = line.decode("latin-1").partition(":")
            headers.setdefault(name.strip().lower(), []).append(value.strip())
        pos = end + 4
        response = Response(status, headers, b"", True)
        out.append(response)
        if status == 101:
            return out, b""
        if status < 200:
            continue
        method = methods[final] if final < len(methods) else b"GET"
        final += 1
        if method == b"HEAD" or status in (204, 304):
            continue
        if "chunked" in (response.header("Transfer-Encoding") or "").lower():
            response.body, pos, response.complete = _dechunk(data, pos)
        elif response.header("Content-Length") is not None:
            try:
                length = int(response.header("Content-Length") or "")
            except ValueError:
                response.complete = False
                return out, data[pos:]
            response.body = data[pos:pos + length]
            response.complete = len(response.body) == length
            pos += len(response.body)
        else:
            response.body, pos, response.complete = data[pos:], len(data), closed
        if not response.complete:
            return out, b""
    return out, data[pos:]


def _dechunk(data: bytes, pos: int) -> tuple[bytes, int, bool]:
    """A chunked body from ``pos``: ``(body, end, complete)``."""
    body = b""
    while True:
        line_end = data.find(b"\r\n", pos)
        if line_end < 0:
            return body, len(data), False
        try:
            size = int(data[pos:line_end].split(b";")[0], 16)
        except ValueError:
            return body, len(data), False
        pos = line_end + 2
        if size == 0:
            while (line_end := data.find(b"\r\n", pos)) > pos:  # trailer lines
                pos = line_end + 2
            return (body, line_end + 2, True) if line_end >= 0 else (body, len(data), False)
        if len(data) < pos + size + 2:
            return body + data[pos:], len(data), False
        body += data[pos:pos + size]
        pos += size + 2


@dataclass
class Outcome:
    """What one connection gave back. ``end``: how the reading stopped."""

    data: bytes
    end: str  # "closed", "reset", "answered", "timeout", "aborted"
    responses: list[Response]
    rest: bytes  # bytes after the last response that did not parse as one

    @property
    def finals(self) -> list[Response]:
        return [r for r in self.responses if r.status >= 200 or r.status == 101]


def run_exchange(port: int, parts: list[bytes], ending: str, methods: list[bytes],
                 timeout: float) -> Outcome:
    """Write ``parts`` on a new connection, end it as told, read what comes back.

    Reading stops when the server closes, when every request has its final
    answer (or a 101 came), or after ``timeout`` seconds.
    """
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        try:
            for index, part in enumerate(parts):
                if index:
                    time.sleep(0.005)
                sock.sendall(part)
        except OSError:  # the gateway closed while we wrote: read what it said
            ending = "read"
        if ending == "abort":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return Outcome(b"", "aborted", [], b"")
        if ending == "half-close":
            try:
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        if ending == "close-after-first":
            outcome = _read(sock, methods, timeout, wanted=1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return outcome
        return _read(sock, methods, timeout)
    finally:
        sock.close()


def _read(sock: socket.socket, methods: list[bytes], timeout: float,
          wanted: int | None = None) -> Outcome:
    """Read until the server closes, ``wanted`` final answers (default: one per request)
    are in, a 101 came, or ``timeout``."""
    wanted = len(methods) if wanted is None else wanted
    data = b""
    deadline = time.monotonic() + timeout
    end = "timeout"
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        except OSError:
            end = "reset"
            break
        if not chunk:
            end = "closed"
            break
        data += chunk
        responses, _ = parse_responses(data, methods, closed=False)
        finals = [r for r in responses if r.status >= 200 or r.status == 101]
        if finals and (finals[-1].status == 101 or
                       (len(finals) >= wanted and finals[-1].complete)):
            end = "answered"
            break
    responses, rest = parse_responses(data, methods, closed=end == "closed")
    return Outcome(data, end, responses, rest)
