"""Build spans from the protocol handlers' work items, in two halves.

ExchangeLinker (stateful, runs beside the handlers in the main process)
decides each exchange's trace context: ids from the wire, same-node links,
sampling flags for traces it starts.  It emits one NamedTuple per exchange,
of one shape per kind (agent/spans/http.py, grpc.py, db.py), each led by its
kind tag: cheap to pickle to a span worker process.

SpanFactory (stateless but for caches, runs in the span worker) turns
those exchanges into spans with the kind's attribute builder.

A protocol registers its linking function under its handler's item tag
(LINKS) and its exchange's builder under the exchange's tag (BUILDERS).
"""
from __future__ import annotations

import time

from agent.counters import Counter, Metric
from agent.parsers.tracecontext import parse_traceparent, parse_tracestate
from agent.protocols import http1 as http1_items, http2 as http2_items, sql_base as sql_items
from agent.protocols import cache_base as cache_items
from agent.spans import cache, client_wait, db, grpc, http, http_records
from agent.spans.context import ContextLinker, RequestContext
from agent.spans.model import KIND_SERVER, Span, new_span_id, new_trace_id
from agent.spans.redact import Redactor
from agent.spans.resources import ResourceCache
from agent.spans.routes import RouteNamer
from agent.spans.sampling import Sampler

# Handler item tag -> linking function (linker, conn, request, response or
# None) -> exchange or None.
LINKS = {
    http1_items.ITEM_TAG: http.link_http1,
    http2_items.ITEM_TAG: grpc.link_h2,
    sql_items.ITEM_TAG: db.link_sql,
    cache_items.ITEM_TAG: cache.link_cache,
    **http_records.LINKS,
}
# Exchange tag -> attribute builder class (built with the factory).
BUILDERS = {http.TAG: http.HttpSpans, grpc.TAG: grpc.GrpcSpans, db.TAG: db.DbSpans,
            cache.TAG: cache.CacheSpans, http_records.TAG: http_records.RecordSpans}

# A process's resource, read by the capture loop while the process lived:
# (RESOURCE_MARKER, pid, attributes), ahead of that process's exchanges.
RESOURCE_MARKER = "resource"

TRACE_CONTEXT_INVALID = Metric("trace_context_invalid",
                               "Invalid incoming trace-context headers, ignored.", "header")
COUNTERS = client_wait.COUNTERS + (
    Counter("traceparent_invalid", TRACE_CONTEXT_INVALID, "traceparent"),
    Counter("tracestate_invalid", TRACE_CONTEXT_INVALID, "tracestate"),
    Counter("linked_same_node", Metric(
        "trace_links_same_node", "Server spans made children of a client span traced on this "
        "node (the same connection seen from both ends)."), None),
)


def monotonic_to_wall_offset_ns() -> int:
    """Kernel timestamps are CLOCK_MONOTONIC; spans want UNIX time."""
    return time.time_ns() - time.monotonic_ns()


# A dict cleared when full: a pair of requests (client, server) is a few
# items apart.
RECENT_TRACEPARENTS = 4096
_NOT_SEEN = object()


class ExchangeLinker:
    def __init__(self, sampler: Sampler | None = None, link_wait_s: float = 0.0):
        """link_wait_s: how long a server exchange may wait for its
        client's request on this node (agent/spans/client_wait.py); 0
        emits every exchange at once (replays and tests)."""
        self.sampler = sampler or Sampler()
        self.linker = ContextLinker()
        self.counts = {c.key: 0 for c in COUNTERS}
        self.client_wait = client_wait.ClientWait(link_wait_s, self.counts) \
            if link_wait_s > 0 else None
        self._hold = None      # (ctx, mirror key) of the exchange being built, to hold
        # (context, incoming) of the server exchange record whose upstream
        # calls are being linked (agent/spans/http_records.py).
        self.record_serving = None
        # Client links of exchange records for the server exchange record
        # the router put right after them: mirror key -> link, within a batch.
        self.paired_links: dict = {}
        # traceparent values of payload-path requests seen lately -> their
        # ids (None: invalid).
        self._recent_traceparents: dict = {}
        # The last traceparent value of an exchange record, and its ids.
        self.record_traceparent: tuple = (None, None)
        # Client links of exchange records that came before their server's
        # record (agent/spans/http_records.py): link key -> (when seen,
        # start_ns, end_ns, link), oldest first, kept for CLIENT_AHEAD_S.
        self.clients_ahead: dict = {}

    def counter_values(self):
        counts = self.counts
        return [(c, counts[c.key]) for c in COUNTERS]

    def links_tracked(self) -> int:
        return len(self.linker) + len(self.clients_ahead)

    def exchanges(self, items: list) -> list[tuple]:
        out = []
        links = LINKS
        wait = self.client_wait
        for tag, conn, request, response in items:
            exchange = links[tag](self, conn, request, response)
            if exchange is not None:
                hold = self._hold
                if hold is None:
                    out.append(exchange)
                else:
                    self._hold = None
                    if not wait.hold(exchange, hold[0], hold[1], time.monotonic()):
                        out.append(exchange)
        if wait is not None and len(wait):
            wait.release(time.monotonic(), out)
        if self.paired_links:    # a pair split by NAT translation: not linked here
            self.paired_links.clear()
        if self.clients_ahead:
            http_records.forget_clients_ahead(self.clients_ahead, time.monotonic())
        return out

    def holding(self) -> bool:
        """Whether server exchanges wait for their clients (client_wait)."""
        return self.client_wait is not None and len(self.client_wait) > 0

    def release_held(self, flush: bool = False) -> list[tuple]:
        """The held exchanges whose time is up, or all of them when the
        capture stops (the capture loop asks between batches)."""
        out = []
        if self.client_wait is not None and len(self.client_wait):
            self.client_wait.release(float("inf") if flush else time.monotonic(), out)
        return out

    # -- what the protocols' linking functions use -------------------------
    def incoming(self, request) -> tuple | None:
        value = request.traceparent
        if value is None:
            return None
        # With both ends traced here, the server's request carries the
        # value its client's did, a few items later: parsed once.
        recent = self._recent_traceparents
        ids = recent.get(value, _NOT_SEEN)
        if ids is _NOT_SEEN:
            status, ids, _ = parse_traceparent(value)
            if len(recent) >= RECENT_TRACEPARENTS:
                recent.clear()
            recent[value] = ids
        if ids is None:
            self.counts["traceparent_invalid"] += 1
        return ids

    def trace_state(self, request) -> str:
        if request.tracestate is None:
            return ""
        state = parse_tracestate(request.tracestate)
        if state is None:
            self.counts["tracestate_invalid"] += 1
            return ""
        return state

    def new_root(self) -> RequestContext:
        trace_id = new_trace_id()
        return RequestContext(trace_id, new_span_id(), b"", self.sampler.root_flags(trace_id), "")

    def decide(self, conn, request, tid: int, link_key: tuple) -> tuple:
        """(context, incoming traceparent) of a request seen on conn;
        `request` has .traceparent and .tracestate (str or None); a client's
        context is remembered under link_key for the server that reads it."""
        incoming = self.incoming(request)
        linker = self.linker
        if conn.is_server:
            ctx = self.child_of_incoming(incoming, request) if incoming is not None \
                else self.new_root()
            linker.server_started(conn.pid, tid, incoming, ctx)
        else:
            if incoming is not None:
                server = linker.forwarded_from(conn.pid, incoming[0], incoming[1])
                if server is not None:
                    ctx = RequestContext(incoming[0], new_span_id(), server.span_id,
                                         incoming[2], server.trace_state)
                else:
                    # The client's own instrumentation chose this span id for
                    # the downstream parent: the client span takes it.
                    server = linker.serving_thread(conn.pid, tid)
                    parent = server.span_id if server is not None and \
                        server.trace_id == incoming[0] else b""
                    ctx = RequestContext(incoming[0], incoming[1], parent, incoming[2],
                                         self.trace_state(request))
            else:
                ctx = self.child_of_serving_thread(conn.pid, tid)
            self.client_sent(link_key, ctx)
        return (ctx, incoming)

    def client_sent(self, link_key: tuple, ctx: RequestContext) -> None:
        """A client request on link_key: remembered for its server end, or
        given at once to a server exchange held for it."""
        self.linker.client_sent(link_key, ctx)
        if self.client_wait is not None:
            held = self.client_wait.client_seen(link_key)
            if held is not None:
                self.join_client_on_this_node(held.ctx, link_key, wait=False)

    def server_finished(self, conn, tid: int, incoming, ctx: RequestContext,
                        mirror_key: tuple) -> None:
        """A server request completed: the thread serves it no more, and it
        becomes the child of its client when that was traced on this node."""
        self.linker.server_finished(conn.pid, tid, incoming, ctx)
        self.join_client_on_this_node(ctx, mirror_key)

    def child_of_incoming(self, incoming: tuple, request) -> RequestContext:
        return RequestContext(incoming[0], new_span_id(), incoming[1], incoming[2],
                              self.trace_state(request))

    def child_of_serving_thread(self, pid: int, tid: int) -> RequestContext:
        """A child of the server request the thread is serving, else a new root."""
        server = self.linker.serving_thread(pid, tid)
        if server is None:
            return self.new_root()
        return RequestContext(server.trace_id, new_span_id(), server.span_id, server.flags,
                              server.trace_state)

    def join_client_on_this_node(self, ctx: RequestContext, mirror_key: tuple,
                                 wait: bool = True) -> None:
        """A server span whose client was traced on this node becomes its
        child; one whose client may yet be seen waits for it (the exchange
        being built is held)."""
        link = self.linker.take_client_link(mirror_key)
        if link is not None:
            self.counts["linked_same_node"] += 1
            ctx.trace_id, ctx.parent_span_id, ctx.flags = link.trace_id, link.span_id, link.flags
        elif wait and self.client_wait is not None and self.client_wait.may_come(mirror_key):
            self.hold_for_client(ctx, mirror_key)

    def hold_for_client(self, ctx: RequestContext, mirror_key: tuple) -> None:
        """Hold the exchange being built until its client's record comes
        (the caller found no link and asked client_wait.may_come)."""
        self._hold = (ctx, mirror_key)


class SpanFactory:
    def __init__(self, resources: ResourceCache, redactor: Redactor,
                 routes: RouteNamer | None = None):
        self.resources = resources
        self.redactor = redactor
        self.routes = routes or RouteNamer()
        self.host_of = http.HostCache().lookup
        self.clock_offset_ns = monotonic_to_wall_offset_ns()
        self.spans_server = 0
        self.spans_client = 0
        self.builders = {tag: cls(self).build for tag, cls in BUILDERS.items()}

    def refresh_clock(self) -> None:
        self.clock_offset_ns = monotonic_to_wall_offset_ns()

    def spans(self, exchanges: list) -> list[Span]:
        out = []
        builders = self.builders
        server = 0
        for e in exchanges:
            tag = e[0]
            if tag == RESOURCE_MARKER:
                self.resources.put(e[1], e[2])
                continue
            if e[1] == KIND_SERVER:
                server += 1
            out.append(builders[tag](e))
        self.spans_server += server
        self.spans_client += len(out) - server
        return out


class SpanBuilder:
    """Both halves in one call, for tests and benchmarks.  The agent runs
    them apart: the linker in its capture loop, the factory in its span
    stage (agent/runtime/pipeline.py, agent/runtime/span_worker.py)."""

    def __init__(self, resources: ResourceCache, redactor: Redactor,
                 sampler: Sampler | None = None, routes: RouteNamer | None = None):
        self.linker = ExchangeLinker(sampler)
        self.factory = SpanFactory(resources, redactor, routes)

    def build(self, items: list) -> list[Span]:
        return self.factory.spans(self.linker.exchanges(items))


# agent/runtime/span_worker.py builds its stage with this name.
