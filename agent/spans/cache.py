"""Redis and memcached spans (database semantic conventions) from the cache
handlers' commands (agent/protocols/cache_base.py): named by the command.

db.query.text (Redis only) is the command with one "?" per argument: the
handler never keeps an argument, so no value, key or AUTH password can
reach it.  `--sql-text off` leaves it out, like SQL text; `raw` shows the
same placeholder text (there is no raw text to show).  memcached keys are
never exported: a retrieval carries how many it named
(db.operation.batch.size, when more than one) and how many were found
(memcached.hits)."""
from __future__ import annotations

from typing import NamedTuple

from agent.spans import semconv
from agent.spans.db import endpoints_and_status
from agent.spans.http import new_exchange
from agent.spans.model import (EXCHANGE_HEAD, EXCHANGE_PEERS, KIND_CLIENT, KIND_SERVER,
                               Span)

TAG = "cache"

CacheExchange = NamedTuple("CacheExchange", EXCHANGE_HEAD + [
    ("system", str), ("operation", str), ("query_text", str | None),
    ("namespace", str | None), ("error_type", str | None), ("batch_size", int),
    ("hits", int)] + EXCHANGE_PEERS)


def link_cache(linker, conn, op, completed) -> CacheExchange | None:
    """A cache work item -> its exchange once the command completed.  A
    client command sent by a thread serving a traced request is that
    request's child (neither protocol carries trace context); a command
    the server read is a root, or the child of its client traced on this
    node."""
    if op.context is None:
        if conn.is_server:
            ctx = linker.new_root()
        else:
            ctx = linker.child_of_serving_thread(conn.pid, op.tid)
            linker.client_sent(conn.key(), ctx)
        op.context = ctx
    if completed is None:
        return None
    ctx = op.context
    if conn.is_server:
        linker.join_client_on_this_node(ctx, conn.mirror_key())
        kind = KIND_SERVER
    else:
        kind = KIND_CLIENT
    return new_exchange(CacheExchange, (
        TAG, kind, conn.pid, ctx.trace_id, ctx.span_id, ctx.parent_span_id, ctx.flags,
        ctx.trace_state, op.start_ns, op.end_ns, op.system, op.operation, op.query_text,
        op.namespace, op.error_type, op.batch_size, op.hits, conn.local_addr, conn.local_port,
        conn.remote_addr, conn.remote_port, conn.peer_addr, conn.peer_port))


class CacheSpans:
    def __init__(self, factory):
        self.factory = factory

    def build(self, e: CacheExchange) -> Span:
        (_, kind, pid, trace_id, span_id, parent_id, flags, trace_state, start, end, system,
         operation, query_text, namespace, error_type, batch_size, hits, local_addr,
         local_port, remote_addr, remote_port, peer_addr, peer_port) = e
        attrs = [(semconv.DB_SYSTEM_NAME, system), (semconv.DB_OPERATION_NAME, operation)]
        if namespace is not None:
            attrs.append((semconv.DB_NAMESPACE, namespace))
        if query_text is not None and self.factory.redactor.sql_text_mode != "off":
            attrs.append((semconv.DB_QUERY_TEXT, query_text))
        if batch_size > 1:
            attrs.append((semconv.DB_OPERATION_BATCH_SIZE, batch_size))
        if hits >= 0:
            attrs.append((semconv.MEMCACHED_HITS, hits))
        status = endpoints_and_status(attrs, kind, local_addr, local_port, remote_addr,
                                      remote_port, peer_addr, peer_port, error_type)
        offset = self.factory.clock_offset_ns
        return Span(trace_id, span_id, parent_id, operation, kind, start + offset, end + offset,
                    attrs, self.factory.resources.get(pid), status, "", trace_state, flags)
