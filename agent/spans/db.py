"""Database spans (database semantic conventions) from PostgreSQL and
MySQL/MariaDB queries: named by db.query.summary, else the operation and
table, else the system.  The text was sanitised by the SQL handler
(agent/protocols/sql_base.py); the redactor decides what of it is shown."""
from __future__ import annotations

from typing import NamedTuple

from agent.protocols.sql_base import PREPARE_DONE
from agent.spans import semconv
from agent.spans.http import new_exchange
from agent.spans.model import (EXCHANGE_HEAD, EXCHANGE_PEERS, KIND_CLIENT, KIND_SERVER,
                               STATUS_ERROR, STATUS_UNSET, Span)

TAG = "db"


# system: db.system.name; text as sent (None when unknown), sanitized with
# its literals replaced.
DbExchange = NamedTuple("DbExchange", EXCHANGE_HEAD + [
    ("system", str), ("namespace", str | None), ("text", str | None),
    ("sanitized", str | None), ("summary", str | None), ("operation", str | None),
    ("collection", str | None), ("error_code", str | None)] + EXCHANGE_PEERS)


def link_sql(linker, conn, query, completed) -> DbExchange | None:
    """An SQL work item (agent/protocols/sql_base.py) -> its exchange once
    the query completed.  A sqlcommenter traceparent makes the statement a
    child of the trace it names; without one, a client statement sent by a
    thread that is serving a traced request is a child of that request.
    A prepare that succeeded gives no span: a server end lets go of the
    link its client end made for it."""
    if completed is PREPARE_DONE:
        if conn.is_server:
            linker.linker.take_client_link(conn.mirror_key())
        return None
    if query.context is None:
        incoming = linker.incoming(query)
        if incoming is not None:
            ctx = linker.child_of_incoming(incoming, query)
        elif conn.is_server:
            ctx = linker.new_root()
        else:
            ctx = linker.child_of_serving_thread(conn.pid, query.tid)
        if not conn.is_server:
            linker.client_sent(conn.key(), ctx)
        query.context = ctx
    if completed is None:
        return None
    ctx = query.context
    if conn.is_server:
        linker.join_client_on_this_node(ctx, conn.mirror_key())
        kind = KIND_SERVER
    else:
        kind = KIND_CLIENT
    return new_exchange(DbExchange, (
        TAG, kind, conn.pid, ctx.trace_id, ctx.span_id, ctx.parent_span_id, ctx.flags,
        ctx.trace_state, query.start_ns, query.end_ns, query.system, query.namespace, query.text,
        query.sanitized, query.summary, query.operation, query.collection, query.error_code,
        conn.local_addr, conn.local_port, conn.remote_addr, conn.remote_port, conn.peer_addr,
        conn.peer_port))


def endpoints_and_status(attrs: list, kind: int, local_addr, local_port, remote_addr,
                         remote_port, peer_addr, peer_port, error_code) -> int:
    """The server/client and peer attributes of a database-like call (SQL,
    Redis, memcached), and its error code as both status code and
    error.type; returns the span status."""
    if kind == KIND_SERVER:
        attrs.append((semconv.SERVER_ADDRESS, local_addr))
        attrs.append((semconv.SERVER_PORT, local_port))
        attrs.append((semconv.CLIENT_ADDRESS, remote_addr))
    else:
        attrs.append((semconv.SERVER_ADDRESS, remote_addr))
        attrs.append((semconv.SERVER_PORT, remote_port))
    attrs.append((semconv.NETWORK_PEER_ADDRESS, peer_addr))
    attrs.append((semconv.NETWORK_PEER_PORT, peer_port))
    if error_code is None:
        return STATUS_UNSET
    attrs.append((semconv.DB_RESPONSE_STATUS_CODE, error_code))
    attrs.append((semconv.ERROR_TYPE, error_code))
    return STATUS_ERROR


class DbSpans:
    def __init__(self, factory):
        self.factory = factory

    def build(self, e: DbExchange) -> Span:
        (_, kind, pid, trace_id, span_id, parent_id, flags, trace_state, start, end, system,
         namespace, text, sanitized, summary, operation, collection, error_code, local_addr,
         local_port, remote_addr, remote_port, peer_addr, peer_port) = e
        attrs = [(semconv.DB_SYSTEM_NAME, system)]
        if namespace:
            attrs.append((semconv.DB_NAMESPACE, namespace))
        name = None
        if text is not None:
            if operation:
                attrs.append((semconv.DB_OPERATION_NAME, operation))
            if collection:
                attrs.append((semconv.DB_COLLECTION_NAME, collection))
            if summary:
                attrs.append((semconv.DB_QUERY_SUMMARY, summary))
                name = summary
            elif operation:
                name = f"{operation} {collection}" if collection else operation
            shown = self.factory.redactor.sql_text(sanitized if sanitized is not None else "?",
                                                   text)
            if shown is not None:
                attrs.append((semconv.DB_QUERY_TEXT, shown))
        status = endpoints_and_status(attrs, kind, local_addr, local_port, remote_addr,
                                      remote_port, peer_addr, peer_port, error_code)
        offset = self.factory.clock_offset_ns
        return Span(trace_id, span_id, parent_id, name or system, kind, start + offset,
                    end + offset, attrs, self.factory.resources.get(pid), status, "",
                    trace_state, flags)
