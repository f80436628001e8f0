"""gRPC spans (RPC semantic conventions) from HTTP/2 exchanges whose
request is gRPC; the other HTTP/2 exchanges become HTTP spans with
network.protocol.version "2" (agent/spans/http.py)."""
from __future__ import annotations

from typing import NamedTuple

from agent.parsers.http2 import error_name
from agent.protocols.http2_streams import (GRPC_STATUS_NAMES, grpc_method, grpc_status, header,
                                           is_grpc)
from agent.spans import semconv
from agent.spans.http import TAG as HTTP_TAG, HttpExchange, new_exchange
from agent.spans.model import (EXCHANGE_HEAD, EXCHANGE_PEERS, KIND_CLIENT, KIND_SERVER,
                               STATUS_ERROR, STATUS_UNSET, Span)

TAG = "grpc"


# path: '/package.Service/Method'; grpc_code: grpc-status (or mapped from
# :status), None when neither tells.
GrpcExchange = NamedTuple("GrpcExchange", EXCHANGE_HEAD + [
    ("path", str | None), ("authority", str | None), ("user_agent", str | None),
    ("grpc_code", int | None), ("reset_error", int | None)] + EXCHANGE_PEERS)


def link_h2(linker, conn, request, exchange):
    """An HTTP/2 work item (agent/protocols/http2.py) -> a GrpcExchange or
    an HttpExchange once the stream completed.  Streams are multiplexed:
    both ends see the same stream ids, so the same-node link is keyed by
    connection and stream."""
    if request.context is None:
        request.context = linker.decide(conn, request, request.tid,
                                        conn.key() + (request.stream_id,))
    if exchange is None:
        return None
    ctx, incoming = request.context
    if conn.is_server:
        linker.server_finished(conn, request.tid, incoming, ctx,
                               conn.mirror_key() + (request.stream_id,))
        kind = KIND_SERVER
    else:
        kind = KIND_CLIENT
    headers = request.headers
    response = exchange.response_headers
    if is_grpc(headers):
        found = grpc_status(exchange.trailers or response)
        return new_exchange(GrpcExchange, (
            TAG, kind, conn.pid, ctx.trace_id, ctx.span_id, ctx.parent_span_id, ctx.flags,
            ctx.trace_state, request.start_ns, exchange.end_ns, header(headers, ":path"),
            header(headers, ":authority") or header(headers, "host"),
            header(headers, "user-agent"), found[0] if found is not None else None,
            exchange.reset_error, conn.local_addr, conn.local_port, conn.remote_addr,
            conn.remote_port, conn.peer_addr, conn.peer_port))
    status = header(response, ":status")
    status_code = int(status) if status is not None and status.isascii() \
        and status.isdigit() and len(status) == 3 else None
    return new_exchange(HttpExchange, (
        HTTP_TAG, kind, conn.pid, ctx.trace_id, ctx.span_id, ctx.parent_span_id, ctx.flags,
        ctx.trace_state, request.start_ns, exchange.end_ns, header(headers, ":method"),
        header(headers, ":path"), "2", header(headers, ":authority") or header(headers, "host"),
        header(headers, "user-agent"), status_code, conn.local_addr, conn.local_port,
        conn.remote_addr, conn.remote_port, conn.peer_addr, conn.peer_port, conn.scheme,
        exchange.reset_error))


class GrpcSpans:
    def __init__(self, factory):
        self.factory = factory

    def build(self, e: GrpcExchange) -> Span:
        (_, kind, pid, trace_id, span_id, parent_id, flags, trace_state, start, end, path,
         authority, user_agent, grpc_code, reset, local_addr, local_port, remote_addr,
         remote_port, peer_addr, peer_port) = e
        factory = self.factory
        method = grpc_method(path)
        host, host_port = factory.host_of(authority)
        attrs = [(semconv.RPC_SYSTEM_NAME, semconv.RPC_SYSTEM_GRPC)]
        if method is not None:
            attrs.append((semconv.RPC_METHOD, method))
        if kind == KIND_SERVER:
            attrs.append((semconv.SERVER_ADDRESS, host or local_addr))
            attrs.append((semconv.SERVER_PORT, host_port or local_port))
            attrs.append((semconv.CLIENT_ADDRESS, remote_addr))
        else:
            attrs.append((semconv.SERVER_ADDRESS, host or remote_addr))
            attrs.append((semconv.SERVER_PORT, host_port or remote_port))
        attrs.append((semconv.NETWORK_PEER_ADDRESS, peer_addr))
        attrs.append((semconv.NETWORK_PEER_PORT, peer_port))
        attrs.append((semconv.NETWORK_PROTOCOL_NAME, "http"))
        attrs.append((semconv.NETWORK_PROTOCOL_VERSION, "2"))
        if user_agent:
            attrs.append((semconv.USER_AGENT_ORIGINAL, user_agent))
        status = STATUS_UNSET
        error_type = None
        if grpc_code is not None:
            name = GRPC_STATUS_NAMES[grpc_code] if grpc_code < len(GRPC_STATUS_NAMES) \
                else "UNKNOWN"
            attrs.append((semconv.RPC_RESPONSE_STATUS_CODE, name))
            if name != "OK" and (kind == KIND_CLIENT or name in semconv.GRPC_SERVER_ERRORS):
                error_type = name
        if reset and grpc_code is None:
            # Reset midway (RST_STREAM, or refused by GOAWAY): no status.
            error_type = error_name(reset)
        if error_type is not None:
            status = STATUS_ERROR
            attrs.append((semconv.ERROR_TYPE, error_type))
        offset = factory.clock_offset_ns
        return Span(trace_id, span_id, parent_id, method or semconv.RPC_SYSTEM_GRPC, kind,
                    start + offset, end + offset, attrs, factory.resources.get(pid), status, "",
                    trace_state, flags)
