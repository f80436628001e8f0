"""One line per span for a human at a terminal.

    14:03:07.412 checkout         SERVER ERROR     12.407ms  POST /api/orders         trace=4bf92f3577b34da6a3ce929d0e0e4736 span=00f067aa0ba902b7 parent=-                 status=503 url=/api/orders peer=10.0.0.7 msg="upstream down"

Fixed-width columns first (time, service, kind, status, duration) so a column
of durations or ERRORs can be scanned; the name next (padded, never cut), then the ids
and the few attributes that say what happened.  Everything printed comes
from captured traffic, so control characters are escaped: a crafted URL must
not be able to move the cursor or forge extra lines.
"""
from __future__ import annotations

import sys
import time

from agent.export.otlp import FAILED, SUCCESS
from agent.spans.model import KIND_NAMES, STATUS_NAMES

# (label, attribute keys in order of preference): the first present wins.
_KEY_ATTRIBUTES = (
    ("status", ("http.response.status_code", "rpc.grpc.status_code")),
    ("url", ("url.full", "url.path")),
    ("server", ("server.address",)),
    ("port", ("server.port",)),
    ("peer", ("client.address", "network.peer.address")),
    ("db", ("db.system.name", "db.system")),
    ("error", ("error.type",)),
)

_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))}


def _clean(text) -> str:
    text = str(text)
    return text if text.isprintable() else text.translate(_CONTROL)


class ConsoleSink:
    def __init__(self, stream=None):
        self._stream = stream
        self.bytes_sent = 0
        self.requests_sent = 0
        self.rejected_spans = 0

    @staticmethod
    def format_span(span) -> str:
        seconds, nanos = divmod(span.start_ns, 1_000_000_000)
        clock = time.strftime("%H:%M:%S", time.localtime(seconds))
        resource = span.resource
        service = _clean(resource.service_name) if resource is not None else "-"
        duration_ms = (span.end_ns - span.start_ns) / 1e6
        extras = []
        attributes = dict(span.attributes)
        for label, keys in _KEY_ATTRIBUTES:
            for key in keys:
                value = attributes.get(key)
                if value is not None:
                    extras.append(f"{label}={_clean(value)}")
                    break
        return (f"{clock}.{nanos // 1_000_000:03d} {service:<16} "
                f"{KIND_NAMES.get(span.kind, span.kind):<6} "
                f"{STATUS_NAMES.get(span.status_code, span.status_code):<5} "
                f"{duration_ms:>10.3f}ms  {_clean(span.name):<24} "
                f"trace={span.trace_id.hex()} span={span.span_id.hex()} "
                f"parent={span.parent_span_id.hex() or '-':<16}"
                + ("  " + " ".join(extras) if extras else "")
                + (f' msg="{_clean(span.status_message)}"' if span.status_message else "")
                + "\n")

    def export(self, spans, timeout_s: float | None = None) -> str:
        stream = self._stream or sys.stdout
        text = "".join([self.format_span(span) for span in spans])
        try:
            stream.write(text)
            stream.flush()
        except (OSError, ValueError):  # closed pipe or stream: nothing will take it later
            return FAILED
        self.requests_sent += 1
        self.bytes_sent += len(text)
        return SUCCESS

    def shutdown(self) -> None:
        stream = self._stream or sys.stdout
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
