"""Counter declarations: each stage declares the counters it increments,
next to the code that counts, and the self-metrics endpoint
(agent/runtime/metrics.py) walks the declarations.

A stage keeps its values in a plain dict (`counts[key] += 1` on the hot
path); a declaration says which exported metric a key feeds:

    REQUESTS = Metric("http_messages", "HTTP/1.x messages framed.", "type")
    COUNTERS = (Counter("http_requests", REQUESTS, "request"),
                Counter("records_malformed",
                        Metric("records_malformed", "Ring buffer records too short to decode.")))

Several keys may feed one labelled metric (one label value each); a metric's
name and help are written once, in its Metric.
"""
from __future__ import annotations

from typing import NamedTuple


class Metric(NamedTuple):
    """An exported counter: name without the agent's prefix, help text,
    and the name of its one label (None: unlabelled)."""

    name: str
    help: str
    label: str | None = None


class Counter(NamedTuple):
    """A stage's counts[key] feeds `metric`, under `label_value` when the
    metric is labelled."""

    key: str
    metric: Metric
    label_value: str | None = None


def counter(key: str, name: str, help: str) -> Counter:
    """An unlabelled counter exported as `name`."""
    return Counter(key, Metric(name, help))


def unique(*declarations) -> tuple:
    """The counters of several declarations, each once (handlers sharing a
    base share its declarations); two different declarations of one key
    are an error (two stages would count into one value by mistake)."""
    by_key: dict[str, Counter] = {}
    for declared in declarations:
        for c in declared:
            known = by_key.setdefault(c.key, c)
            if known is not c:
                raise ValueError(f"counter {c.key!r} declared twice")
    return tuple(by_key.values())



class ParseErrors(NamedTuple):
    """The reasons a protocol handler counts the messages it could not
    parse under: `parse_errors{protocol, reason}` is exported at 0 for each
    from the start, so that rate() and alerts work before the first error
    (agent/runtime/metrics.py).  A reason not declared is still counted,
    from its first error on."""

    protocol: str
    reasons: tuple


def parse_errors(protocol: str, *reasons: str) -> ParseErrors:
    return ParseErrors(protocol, tuple(dict.fromkeys(reasons)))
