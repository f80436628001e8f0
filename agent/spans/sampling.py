"""Head sampling of built spans, compatible with the OpenTelemetry samplers.

The agent is passive: it cannot change the traceparent a traced program
sends onward, so it only decides which of the spans it built are exported.
The decision is made so that every node (and every agent or SDK using the
OpenTelemetry samplers with the same ratio) keeps or drops a trace as a
whole:

- a span whose parent came from the wire (an incoming traceparent) follows
  the parent's sampled flag (trace-flags bit 0) under the parent-based
  samplers;
- a root span is decided by the trace id exactly as OpenTelemetry's
  TraceIdRatioBased sampler does: its lower 8 bytes, as a big-endian
  integer, below round(ratio * 2**64) are sampled.  Any span of the same
  trace gets the same answer on any node.

Error spans (status ERROR) are kept whatever the ratio when keep_errors is
set: they are the ones people look for.  That breaks the all-or-nothing
property for the trace around them, which is the usual trade-off.

Spans the agent builds with a *local* parent (a client span under the
server span that caused it, a server span linked to a client on the same
node) carry the flags of that local parent; the builder must give a trace
it starts itself the flags `root_flags(trace_id)` returns, so those children
agree with their root (see `should_export`).
"""
from __future__ import annotations

from agent.spans.model import STATUS_ERROR

_ID_LIMIT = 1 << 64
_LOW_MASK = _ID_LIMIT - 1

SAMPLERS = ("always_on", "always_off", "traceidratio", "parentbased_always_on",
            "parentbased_always_off", "parentbased_traceidratio")
DEFAULT_SAMPLER = "parentbased_always_on"


def ratio_bound(ratio: float) -> int:
    """The TraceIdRatioBased bound: lower 8 id bytes below it are sampled."""
    return round(ratio * _ID_LIMIT)


class Sampler:
    """should_export(span) -> bool; counts sampled_out (and kept_errors:
    error spans kept only because of keep_errors)."""

    __slots__ = ("ratio", "keep_errors", "parent_based", "bound", "name",
                 "sampled_out", "kept_errors")

    def __init__(self, ratio: float = 1.0, keep_errors: bool = True,
                 parent_based: bool = True):
        ratio = float(ratio)
        if not 0.0 <= ratio <= 1.0:     # also rejects NaN
            raise ValueError(f"sampling ratio must be within [0, 1], got {ratio!r}")
        self.ratio = ratio
        self.keep_errors = keep_errors
        self.parent_based = parent_based
        self.bound = ratio_bound(ratio)
        self.name = ("parentbased_" if parent_based else "") + "traceidratio"
        self.sampled_out = 0
        self.kept_errors = 0

    @property
    def samples_everything(self) -> bool:
        """True when should_export keeps every span: callers may skip it."""
        return self.bound >= _ID_LIMIT and not self.parent_based

    def root_flags(self, trace_id: bytes) -> int:
        """Trace flags (bit 0 = sampled) for a trace this node starts."""
        bound = self.bound
        if bound >= _ID_LIMIT:     # every id is below it (ratio 1, the default)
            return 1
        return 1 if int.from_bytes(trace_id[8:16], "big") < bound else 0

    def should_export(self, span, remote_parent: bool | None = None) -> bool:
        """Whether to export span.

        remote_parent: whether span.parent_span_id came from the wire; None
        means "has a parent at all" (right as long as the builder gives the
        traces it starts root_flags(), see the module doc).
        """
        if self.parent_based:
            has_parent = bool(span.parent_span_id) if remote_parent is None else remote_parent
            if has_parent:
                keep = bool(span.trace_flags & 1)
            else:
                keep = int.from_bytes(span.trace_id[8:16], "big") < self.bound
        else:
            keep = int.from_bytes(span.trace_id[8:16], "big") < self.bound
        if keep:
            return True
        if self.keep_errors and span.status_code == STATUS_ERROR:
            self.kept_errors += 1
            return True
        self.sampled_out += 1
        return False

    def filter(self, spans: list) -> list:
        """The spans to export, in order (the common per-batch call)."""
        if self.samples_everything:
            return spans
        if self.parent_based and self.bound >= _ID_LIMIT and \
                all(span.trace_flags & 1 for span in spans):
            # parentbased_always_on (the default) keeps every span whose
            # sampled flag is set, with a parent or without: a batch of
            # them needs no decision per span.
            return spans
        should = self.should_export
        return [span for span in spans if should(span)]

    def describe(self) -> str:
        return f"{self.name} ratio={self.ratio:g}"

    @classmethod
    def from_environment(cls, environ, keep_errors: bool = True) -> "Sampler":
        """The sampler OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG select.

        Unset or empty: parentbased_always_on.  The ratio argument applies to
        the traceidratio samplers (default 1.0) and is ignored by the others,
        as the specification says.  Raises ValueError naming the variable and
        the allowed values.
        """
        name = (environ.get("OTEL_TRACES_SAMPLER") or DEFAULT_SAMPLER).strip().lower()
        if name not in SAMPLERS:
            raise ValueError(
                f"OTEL_TRACES_SAMPLER={environ.get('OTEL_TRACES_SAMPLER')!r} is not supported; "
                f"allowed values: {', '.join(SAMPLERS)}")
        parent_based = name.startswith("parentbased_")
        base = name.removeprefix("parentbased_")
        if base == "always_on":
            ratio = 1.0
        elif base == "always_off":
            ratio = 0.0
        else:
            raw = environ.get("OTEL_TRACES_SAMPLER_ARG")
            if raw is None or not raw.strip():
                ratio = 1.0
            else:
                try:
                    ratio = float(raw)
                except ValueError:
                    ratio = float("nan")
                if not 0.0 <= ratio <= 1.0:
                    raise ValueError(
                        f"OTEL_TRACES_SAMPLER_ARG={raw!r} is not a valid ratio for "
                        f"OTEL_TRACES_SAMPLER={name}: expected a number between 0 and 1 "
                        f"(for example 0.25)")
        sampler = cls(ratio, keep_errors=keep_errors, parent_based=parent_based)
        sampler.name = name
        return sampler
