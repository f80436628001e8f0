"""HTTP spans from the probes' exchange records (agent/protocols/http1_records.py),
with as little Python per record as the rules allow.

Linking (the linker, main process): link_http1's rules (agent/spans/http.py)
on fields already split out.  The traceparent's ids come decoded by the
probes in its common form; any other value is read from the record's
bytes by the spec's rules.  Same-node links (the server span on the mirrored
connection becomes the client span's child): the probes mostly write a
server's record before its client's, so a client record's link goes
straight to its server's record (which the router puts right after it) or
to the server exchange held for it (client_wait); a client record that
came first waits briefly for a server exchange within its own times
(clients ahead).  None waits in the linker's per-connection queue, where a
later server exchange would take it; links from payload-path clients are
taken from that queue as before.  Proxy
links (an upstream call and the server request its thread serves) go
through the same ContextLinker tables as the payload path's.  Objects are
made only where a table keeps them; the exchange carries its connection's
fields as one tuple, made once per connection.

Building (the span stage): as the payload path's HTTP spans, through
span templates (agent/spans/templates.py), a record's shape being its
connection's fields and its request's.
"""
from __future__ import annotations

import time
from typing import NamedTuple

from agent.aging import expire_oldest
from agent.parsers.tracecontext import parse_tracestate, traceparent_ids
from agent.protocols import http1_records
from agent.spans import http
from agent.spans.context import RequestContext
from agent.spans.model import EXCHANGE_HEAD, KIND_CLIENT, KIND_SERVER, new_span_id, new_trace_id
from agent.spans.templates import ShapeTemplates

TAG = "http_record"

# connection: (kind, local_addr, local_port, remote_addr, remote_port,
# peer_addr, peer_port, scheme), one tuple per connection; request: (method,
# target, version_minor, host, user_agent, status_code), the values the
# record's bytes (None: header absent).  The two are what a span's template
# depends on.
RecordExchange = NamedTuple("RecordExchange", EXCHANGE_HEAD + [
    ("connection", tuple), ("request", tuple)])

# What a client record gives the server span on the mirrored connection,
# the fields a same-node link reads, is a plain (trace_id, span_id, flags).

# A client's record written before its server's (each side's record is
# written at the exit of its last call, and on another core the client can
# read the response and return before the server's write returns) waits
# this long for it.  Only a server exchange inside the client's (read after
# the request was sent, answered before the response was read) takes it:
# the next request's server exchange on a kept-alive connection cannot.
CLIENT_AHEAD_S = 2.0
MAX_CLIENTS_AHEAD = 4096


def _connection_fields(conn) -> tuple:
    """(connection tuple, link key, mirror key), kept on the connection
    (until NAT translates it: Connection.translated)."""
    kind = KIND_SERVER if conn.is_server else KIND_CLIENT
    fields = conn.record_fields = (
        (kind, conn.local_addr, conn.local_port, conn.remote_addr, conn.remote_port,
         conn.peer_addr, conn.peer_port, conn.scheme), conn.key(), conn.mirror_key())
    return fields


def _incoming(linker, traceparent):
    if traceparent is None or traceparent.__class__ is tuple:
        return traceparent
    ids = traceparent_ids(traceparent)
    if ids is None:
        linker.counts["traceparent_invalid"] += 1
    return ids


def _trace_state(linker, tracestate) -> str:
    if tracestate is None:
        return ""
    state = parse_tracestate(tracestate.decode("latin-1"))
    if state is None:
        linker.counts["tracestate_invalid"] += 1
        return ""
    return state


def link_record(linker, conn, fields: tuple, paired) -> tuple:
    """One exchange record's work item -> its exchange; paired: True for a
    client exchange whose server's (traced here) follows at once."""
    connection, link_key, mirror_key = conn.record_fields or _connection_fields(conn)
    traceparent = fields[3]
    incoming = None
    if traceparent.__class__ is tuple:
        incoming = traceparent          # decoded by the probes
    elif traceparent is not None:
        # Both ends traced here: the server's record follows its client's
        # with the same value.
        last = linker.record_traceparent
        if traceparent == last[0]:
            incoming = last[1]
        else:
            incoming = traceparent_ids(traceparent)
            linker.record_traceparent = (traceparent, incoming)
        if incoming is None:
            linker.counts["traceparent_invalid"] += 1
    if connection[0] == KIND_SERVER:
        if incoming is not None:
            trace_id, parent_id, flags = incoming
            span_id = new_span_id()
            trace_state = _trace_state(linker, fields[4]) if fields[4] is not None else ""
        else:
            trace_id, span_id, parent_id, trace_state = new_trace_id(), new_span_id(), b"", ""
            flags = linker.sampler.root_flags(trace_id)
        links = linker.paired_links
        sent = links.pop(mirror_key, None) if links else None
        link = linker.linker.take_client_link(mirror_key) if sent is None else None
        if sent is not None:
            linker.counts["linked_same_node"] += 1
            trace_id, parent_id, flags = sent
        elif link is not None:
            linker.counts["linked_same_node"] += 1
            trace_id, parent_id, flags = link.trace_id, link.span_id, link.flags
        elif linker.clients_ahead and (sent := _client_ahead(linker, mirror_key, fields)):
            linker.counts["linked_same_node"] += 1
            trace_id, parent_id, flags = sent
        elif linker.client_wait is not None and linker.client_wait.may_come(mirror_key):
            # Its client's record may come in a later batch.
            linker.hold_for_client(
                RequestContext(trace_id, span_id, parent_id, flags, trace_state), mirror_key)
    else:
        trace_id, span_id, parent_id, flags, trace_state = _client_context(
            linker, conn.pid, fields[0], incoming, fields[4])
        _client_sent(linker, link_key, (trace_id, span_id, flags), paired, fields)
    # A plain tuple, in RecordExchange's order: cheaper to make than the
    # named one, and what a span worker receives anyway.
    return (TAG, connection[0], conn.pid, trace_id, span_id, parent_id, flags, trace_state,
            fields[1], fields[2], connection, fields[5])


def _client_sent(linker, link_key: tuple, sent: tuple, paired: bool, fields: tuple) -> None:
    """Where a client record's link goes.  Its server's record usually
    ended before it: the router put that right after it (paired), or the
    server exchange went out already, held for it (client_wait) or not.
    Otherwise the link waits, as a client ahead of its server, for a server
    exchange within its own times; it never waits in the linker's tables,
    where a server seen later would take it for its own."""
    wait = linker.client_wait
    if paired:
        linker.paired_links[link_key] = sent
        if wait is not None:
            wait.saw_client(link_key)
        return
    held = wait.client_seen(link_key, (fields[1], fields[2])) if wait is not None else None
    if held is not None:
        linker.counts["linked_same_node"] += 1
        ctx = held.ctx
        ctx.trace_id, ctx.parent_span_id, ctx.flags = sent
        return
    ahead = linker.clients_ahead
    ahead.pop(link_key, None)
    ahead[link_key] = (time.monotonic(), fields[1], fields[2], sent)
    if len(ahead) > MAX_CLIENTS_AHEAD:
        del ahead[next(iter(ahead))]


def _client_ahead(linker, mirror_key: tuple, fields: tuple) -> tuple | None:
    """The link of the client record that came before this server
    exchange's record, if the exchange lies within that client's."""
    ahead = linker.clients_ahead.get(mirror_key)
    if ahead is None or not ahead[1] <= fields[1] <= fields[2] <= ahead[2]:
        return None
    del linker.clients_ahead[mirror_key]
    return ahead[3]


def forget_clients_ahead(ahead: dict, now: float) -> None:
    """Drop the clients ahead whose server's record did not come in time
    (its server is not traced here, or its record went out unlinked)."""
    expire_oldest(ahead, now - CLIENT_AHEAD_S, 0)


def _client_context(linker, pid: int, tid: int, incoming, tracestate) -> tuple:
    """ExchangeLinker.decide's client rules: (trace_id, span_id, parent_id,
    flags, trace_state)."""
    links = linker.linker
    if incoming is not None:
        trace_id, parent_id, flags = incoming
        server = links.forwarded_from(pid, trace_id, parent_id)
        if server is not None:
            return trace_id, new_span_id(), server.span_id, flags, server.trace_state
        # The client's own instrumentation chose this span id for the
        # downstream parent: the client span takes it.
        server = links.serving_thread(pid, tid)
        parent = server.span_id if server is not None and server.trace_id == trace_id else b""
        trace_state = _trace_state(linker, tracestate) if tracestate is not None else ""
        return trace_id, parent_id, parent, flags, trace_state
    server = links.serving_thread(pid, tid)
    if server is None:
        trace_id = new_trace_id()
        return trace_id, new_span_id(), b"", linker.sampler.root_flags(trace_id), ""
    return server.trace_id, new_span_id(), server.span_id, server.flags, server.trace_state


def link_serving(linker, conn, fields: tuple, _unused) -> None:
    """A server exchange whose upstream calls follow: its context is
    decided first and kept in the linker's tables while they are linked."""
    tid, traceparent, tracestate = fields[0], fields[3], fields[4]
    incoming = _incoming(linker, traceparent)
    if incoming is not None:
        ctx = RequestContext(incoming[0], new_span_id(), incoming[1], incoming[2],
                             _trace_state(linker, tracestate) if tracestate is not None else "")
    else:
        ctx = linker.new_root()
    linker.linker.server_started(conn.pid, tid, incoming, ctx)
    linker.record_serving = (ctx, incoming)


def link_served(linker, conn, fields: tuple, _unused) -> tuple:
    """The server exchange link_serving began, after its upstream calls."""
    connection, _, mirror_key = conn.record_fields or _connection_fields(conn)
    ctx, incoming = linker.record_serving
    linker.record_serving = None
    linker.linker.server_finished(conn.pid, fields[0], incoming, ctx)
    link = linker.paired_links.pop(mirror_key, None)
    if link is None and linker.clients_ahead:
        link = _client_ahead(linker, mirror_key, fields)
    if link is not None:
        linker.counts["linked_same_node"] += 1
        ctx.trace_id, ctx.parent_span_id, ctx.flags = link
    else:
        linker.join_client_on_this_node(ctx, mirror_key)
    return (TAG, connection[0], conn.pid, ctx.trace_id, ctx.span_id, ctx.parent_span_id,
            ctx.flags, ctx.trace_state, fields[1], fields[2], connection, fields[5])


LINKS = {http1_records.RECORD_TAG: link_record, http1_records.PAIRED_TAG: link_record,
         http1_records.SERVING_TAG: link_serving, http1_records.SERVED_TAG: link_served}


class RecordSpans:
    """Builds spans from record exchanges; `factory` (agent/spans/builder.py)
    holds the resources, redactor, routes and clock offset.  A record
    exchange's shape is its (connection, request) pair
    (agent/spans/templates.py); a shape's first span, and its template, are
    the payload path's (HttpSpans.span) of the same fields."""

    def __init__(self, factory):
        self.http = http.HttpSpans(factory)
        span = self.http.span
        # A record exchange's shape: (connection, request).
        self.shapes = ShapeTemplates(factory, lambda e: span(_http_exchange(e)), with_kind=False)
        self.build = self.shapes.build_shared


_VERSIONS = tuple("1.%d" % minor for minor in range(256))


def _http_exchange(e: tuple) -> tuple:
    """The fields of an HttpExchange (agent/spans/http.py) of a record
    exchange, what HttpSpans.span reads."""
    (_, kind, pid, trace_id, span_id, parent_id, flags, trace_state, start, end, connection,
     (method, target, version_minor, host, user_agent, status_code)) = e
    (_, local_addr, local_port, remote_addr, remote_port, peer_addr, peer_port,
     scheme) = connection
    return (http.TAG, kind, pid, trace_id, span_id, parent_id, flags, trace_state, start, end,
            method.decode("ascii", "replace"), target.decode("utf-8", "replace"),
            _VERSIONS[version_minor], None if host is None else host.decode("utf-8", "replace"),
            None if user_agent is None else user_agent.decode("utf-8", "replace"), status_code,
            local_addr, local_port, remote_addr, remote_port, peer_addr, peer_port, scheme, None)
