"""The contract every protocol handler implements, in the spirit of Pixie's
parse -> stitch: the parsers (agent/parsers) turn bytes into frames, a
handler stitches frames into requests and exchanges per connection.

The router (agent/protocols/router.py) looks a record's protocol tag up in
its handlers, and the connection table (agent/protocols/table.py) keeps the
connections of every protocol: eviction, idle expiry, the pid index, and
the sequence-gap check happen there, once, for all of them.  A handler
keeps only its protocol's state, in `conn.state`.

Work items a handler appends to `out`, in event order, for the linker
(agent/spans/builder.py), which looks their tag up in its own table:
    (tag, conn, request, None)       a request was seen
    (tag, conn, request, response)   it completed
`conn` is the table's Connection (addresses, pid, role); `request` carries
tid, traceparent/tracestate (str or None) and a `context` slot for the
linker.

Adding a protocol: a parser in agent/parsers, a kernel unit that tags its
connections, a handler here registered in router.HANDLERS, and its span
builder registered in agent/spans/builder.py.
"""
from __future__ import annotations

from typing import NamedTuple

from agent.counters import Metric, ParseErrors

# Records the stage drops whole, by reason: the router's and any handler's.
EVENTS_SKIPPED = Metric("events_skipped", "Drained records not used, by reason.", "reason")


class Limits(NamedTuple):
    """What a handler may keep per connection."""

    max_pending: int = 64              # requests waiting for their response
    max_header_bytes: int = 16384      # an HTTP/1 head longer than this is invalid
    request_timeout_ns: int = 120 * 10**9
    max_streams: int = 256             # HTTP/2 streams open at once
    max_statements: int = 256          # SQL prepared statements / portals


def expire_waiting(pending, slot: int, timeout_ns: int, now_ns: int) -> int:
    """Requests in `pending` (oldest first; each entry holds its request at
    entry[slot]) waiting longer than timeout_ns become None placeholders,
    so that later responses keep their pairing; returns how many expired."""
    expired = 0
    for entry in pending:
        request = entry[slot]
        if request is None:
            continue
        if now_ns - request.start_ns <= timeout_ns:
            break
        entry[slot] = None
        expired += 1
    return expired


class ProtocolHandler:
    """Base of every handler.  Subclasses set PROTOCOL (the kernel's
    PROTOCOL_* tag), NAME (the protocol label of parse errors), COUNTERS
    (agent/counters.py declarations of the keys they increment in
    self.counts) and PARSE_ERRORS (the reasons of their parse errors), and
    implement the methods below."""

    PROTOCOL: int = -1
    NAME: str = ""
    COUNTERS: tuple = ()
    # The reasons parse_error() is called with (agent/counters.py).
    PARSE_ERRORS: ParseErrors | None = None

    def __init__(self, counts: dict, parse_errors: dict, limits: Limits):
        self.counts = counts
        self.parse_errors = parse_errors
        self.limits = limits

    def open(self, conn, record, hot: tuple) -> bool:
        """A record of a connection the table does not know: set conn.state
        (and conn.role when the bytes tell it) and return True, or count why
        not and return False (the record is skipped, nothing is kept)."""
        raise NotImplementedError

    def record(self, conn, record, hot: tuple, out: list) -> None:
        """One data record of conn; `hot` holds the header fields through
        seq (agent/capture/records.py).  Never raises for any bytes."""
        raise NotImplementedError

    def gap(self, conn) -> None:
        """Records of conn were lost (counted by the table): drop what can
        no longer be framed and wait for the next message start."""
        raise NotImplementedError

    def close(self, conn, out: list) -> None:
        """conn closed: complete what its close completes (a response that
        runs to the connection's end).  discard() follows."""

    def discard(self, conn) -> None:
        """conn is forgotten (closed, expired, evicted, its process exited):
        count what it leaves unfinished."""
        raise NotImplementedError

    def expire_requests(self, conn, now_ns: int) -> None:
        """Drop requests of a live connection waiting longer than the
        request timeout, counting them."""

    def parse_error(self, reason: str, protocol: str | None = None) -> None:
        key = (protocol or self.NAME, reason or "invalid")
        self.parse_errors[key] = self.parse_errors.get(key, 0) + 1
