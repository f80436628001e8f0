"""Pair HTTP/2 events (agent.parsers.http2) per stream into exchanges, and
gRPC helpers.

    tracker = StreamTracker()
    done = tracker.feed(client_events, from_client=True, ts_ns=t)
    done += tracker.feed(server_events, from_client=False, ts_ns=t)

An exchange completes when both sides have ended the stream (END_STREAM),
when either side resets it (RST_STREAM: reset_error is the code), or when
the server's GOAWAY says it will never process it (reset_error
REFUSED_STREAM).  start_ns is the time passed with the first event of the
stream, end_ns the time passed with the event that completed it.

Trailers-only responses (one HEADERS with END_STREAM, as gRPC sends for an
error raised before any message) complete the exchange with that block as
response_headers and trailers None: grpc_status(trailers or
response_headers) reads either.  Informational (1xx) response heads are
skipped.  Client-sent trailers are ignored.  Streams the server pushes
(even ids) are not tracked.
"""
from __future__ import annotations

from agent.counters import counter

REFUSED_STREAM = 0x7
DEFAULT_MAX_STREAMS = 256

GRPC_STATUS_NAMES = ("OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED",
                     "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED",
                     "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL",
                     "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED")
# gRPC's mapping of HTTP status to gRPC status when a response carries no
# grpc-status (doc/http-grpc-status-mapping.md).
_HTTP_TO_GRPC = {400: 13, 401: 16, 403: 7, 404: 12, 429: 14, 502: 14, 503: 14, 504: 14}


COUNTERS = (
    counter("h2_streams_completed", "http2_streams_completed",
            "HTTP/2 streams completed: both ends ended them, or RST_STREAM or GOAWAY did."),
    counter("h2_streams_refused", "http2_streams_refused",
            "HTTP/2 streams the server refused by GOAWAY, never processed (error spans)."),
    counter("h2_streams_evicted", "http2_streams_evicted",
            "HTTP/2 streams dropped: more open streams on a connection than tracked."),
    counter("h2_events_ignored", "http2_events_ignored",
            "HTTP/2 DATA frames of streams whose HEADERS were not seen, and unknown events."),
)


class Exchange:
    """One request/response on one stream.  Header lists are [(name, value)]
    (str) or None when not seen; partial is True when any block of the
    exchange was only partly decoded (joined mid-stream, truncated capture);
    request_bytes / response_bytes sum the DATA frame lengths."""

    __slots__ = ("stream_id", "request_headers", "response_headers", "trailers", "start_ns",
                 "end_ns", "reset_error", "partial", "request_bytes", "response_bytes",
                 "client_ended", "server_ended")

    def __init__(self, stream_id: int, start_ns: int):
        self.stream_id = stream_id
        self.request_headers = None
        self.response_headers = None
        self.trailers = None
        self.start_ns = start_ns
        self.end_ns = None
        self.reset_error = None
        self.partial = False
        self.request_bytes = 0
        self.response_bytes = 0
        self.client_ended = False
        self.server_ended = False

    def __repr__(self):
        return (f"Exchange({self.stream_id}, req={self.request_headers!r}, "
                f"resp={self.response_headers!r}, trailers={self.trailers!r}, "
                f"reset={self.reset_error!r}, partial={self.partial})")


class StreamTracker:
    """Open streams of one connection, bounded: beyond max_streams the
    oldest is evicted.  `counts` holds the COUNTERS keys (one dict shared by
    every connection's tracker; a tracker of its own by default)."""

    __slots__ = ("max_streams", "_open", "counts")

    def __init__(self, max_streams: int = DEFAULT_MAX_STREAMS, counts: dict | None = None):
        self.max_streams = max_streams
        self._open = {}
        self.counts = counts if counts is not None else {c.key: 0 for c in COUNTERS}

    def __len__(self):
        return len(self._open)

    def has_request(self, sid: int) -> bool:
        """Whether stream sid already has its request headers or its client
        ended it: a HEADERS block the client sends now is trailers."""
        known = self._open.get(sid)
        return known is not None and (known.request_headers is not None or known.client_ended)

    def _stream(self, sid: int, ts_ns: int) -> Exchange:
        stream = self._open.get(sid)
        if stream is None:
            if len(self._open) >= self.max_streams:
                del self._open[next(iter(self._open))]
                self.counts["h2_streams_evicted"] += 1
            stream = self._open[sid] = Exchange(sid, ts_ns)
        return stream

    def feed(self, events, from_client: bool, ts_ns: int) -> list:
        """Exchanges completed by these events (from one H2Direction.feed)."""
        done = []
        for event in events:
            kind = event[0]
            if kind == "data":
                sid = event[1]
                stream = self._open.get(sid)
                if stream is None:
                    # No HEADERS seen on it (joined mid-stream, or already
                    # complete): nothing to attach the body to.
                    self.counts["h2_events_ignored"] += 1
                    continue
                if from_client:
                    stream.request_bytes += event[2]
                    if event[3]:
                        stream.client_ended = True
                else:
                    stream.response_bytes += event[2]
                    if event[3]:
                        stream.server_ended = True
            elif kind == "headers":
                _, sid, headers, end_stream, partial = event
                if not sid & 1:
                    continue
                stream = self._stream(sid, ts_ns)
                stream.partial = stream.partial or partial
                if from_client:
                    if stream.request_headers is None and not stream.client_ended:
                        stream.request_headers = headers
                    if end_stream:
                        stream.client_ended = True
                elif stream.response_headers is None:
                    status = _first(headers, ":status")
                    if status is not None and status[:1] == "1" and not end_stream:
                        continue   # 100 Continue, 103 Early Hints
                    stream.response_headers = headers
                    if end_stream:
                        stream.server_ended = True
                else:
                    stream.trailers = headers
                    if end_stream:
                        stream.server_ended = True
            elif kind == "rst":
                stream = self._open.pop(event[1], None)
                if stream is not None:
                    stream.reset_error = event[2]
                    stream.end_ns = ts_ns
                    self.counts["h2_streams_completed"] += 1
                    done.append(stream)
                continue
            elif kind == "goaway":
                if not from_client:
                    last = event[1]
                    for sid in [s for s in self._open if s > last]:
                        stream = self._open.pop(sid)
                        stream.reset_error = REFUSED_STREAM
                        stream.end_ns = ts_ns
                        self.counts["h2_streams_refused"] += 1
                        self.counts["h2_streams_completed"] += 1
                        done.append(stream)
                continue
            else:
                self.counts["h2_events_ignored"] += 1
                continue
            if stream.client_ended and stream.server_ended:
                del self._open[sid]
                stream.end_ns = ts_ns
                self.counts["h2_streams_completed"] += 1
                done.append(stream)
        return done

    def close(self) -> list:
        """The connection closed: the streams still open, unfinished
        (end_ns None)."""
        left = list(self._open.values())
        self._open.clear()
        return left


def _first(headers, name: str):
    if headers:
        for key, value in headers:
            if key == name:
                return value
    return None


def header(headers, name: str):
    """The first value of name (lower-case) in a header list, or None."""
    return _first(headers, name)


def is_grpc(request_headers) -> bool:
    """Whether a request is gRPC: content-type application/grpc, with or
    without a +format or ;parameters suffix (grpc-web included)."""
    content_type = _first(request_headers, "content-type")
    return content_type is not None and content_type[:16].lower() == "application/grpc"


def grpc_method(path) -> str | None:
    """'/package.Service/Method' -> 'package.Service/Method'; None when path
    is not of that form."""
    if not path or path[0] != "/":
        return None
    method = path[1:]
    service, slash, name = method.partition("/")
    if not service or not slash or not name or "/" in name or "?" in method:
        return None
    return method


def grpc_status(headers):
    """(code, name) from grpc-status in trailers (or a trailers-only
    response's headers).  Without grpc-status, a non-200 :status maps as
    gRPC clients map it (404 UNIMPLEMENTED, 503 UNAVAILABLE, ...).  None when
    neither tells."""
    value = _first(headers, "grpc-status")
    if value is not None:
        if value.isascii() and value.isdigit() and len(value) <= 3:
            code = int(value)
            if code < len(GRPC_STATUS_NAMES):
                return code, GRPC_STATUS_NAMES[code]
            return code, "UNKNOWN"
        return 2, "UNKNOWN"
    status = _first(headers, ":status")
    if status is None or not (status.isascii() and status.isdigit()) or status == "200":
        return None
    code = _HTTP_TO_GRPC.get(int(status), 2)
    return code, GRPC_STATUS_NAMES[code]
