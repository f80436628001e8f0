"""Build spans from matched HTTP/1.x, HTTP/2 and SQL exchanges, in two halves.

HttpExchangeLinker (stateful, runs beside reassembly in the main process)
decides each exchange's trace context: ids from the wire, same-node links,
sampling flags for traces it starts.  It emits one plain tuple per exchange
(Exchange below): cheap to pickle to a span worker process.

HttpSpanFactory (stateless but for caches, runs in the span worker) turns
those tuples into spans that follow the stable HTTP semantic conventions.
Span names are `{method}`, or `{method} {route}` for configured routes, never
the raw path; unknown methods become `_OTHER` / `HTTP`.  Database spans
follow the database conventions: named by db.query.summary, their text
sanitised (agent/spans/redact.py) before it leaves the factory.
"""
from __future__ import annotations

import time

from agent.spans import semconv
from agent.protocols.tracker import ITEM_EXCHANGE, ITEM_REQUEST, Connection, Message
from agent.spans.context import ContextLinker, RequestContext
from agent.protocols.http2 import ITEM_H2_EXCHANGE, ITEM_H2_REQUEST, H2Request
from agent.protocols.http2_streams import GRPC_STATUS_NAMES, grpc_method, grpc_status, header, is_grpc
from agent.parsers.http2 import error_name
from agent.parsers import PARSED
from agent.parsers.http1 import split_target
from agent.parsers.sql import query_info, sanitize
from agent.parsers.tracecontext import parse_traceparent, parse_tracestate
from agent.spans.redact import Redactor
from agent.spans.resources import ResourceCache
from agent.spans.routes import RouteNamer
from agent.spans.sampling import Sampler
from agent.protocols.sql import ITEM_SQL_EXCHANGE, ITEM_SQL_REQUEST, SqlQuery
from agent.spans.model import (KIND_CLIENT, KIND_SERVER, STATUS_ERROR, STATUS_UNSET, Span,
                         new_span_id, new_trace_id)

KNOWN_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS",
                           "TRACE", "PATCH", "QUERY"))

# Exchange tuple layout (what crosses to the span worker).
(E_KIND, E_PID, E_TRACE_ID, E_SPAN_ID, E_PARENT_ID, E_FLAGS, E_TRACE_STATE, E_START_NS,
 E_END_NS, E_METHOD, E_TARGET, E_VERSION, E_HOST, E_USER_AGENT, E_STATUS_CODE,
 E_LOCAL_ADDR, E_LOCAL_PORT, E_REMOTE_ADDR, E_REMOTE_PORT, E_SCHEME) = range(20)

# HTTP/2 exchange tuples: a second shape, told apart by its first item.
# Plain HTTP/2 and gRPC alike; the factory decides from H2_GRPC.
H2_MARKER = "h2"
(H2_TAG, H2_KIND, H2_PID, H2_TRACE_ID, H2_SPAN_ID, H2_PARENT_ID, H2_FLAGS, H2_TRACE_STATE,
 H2_START_NS, H2_END_NS, H2_METHOD, H2_PATH, H2_AUTHORITY, H2_USER_AGENT, H2_STATUS_CODE,
 H2_GRPC, H2_GRPC_STATUS, H2_RESET_ERROR, H2_LOCAL_ADDR, H2_LOCAL_PORT, H2_REMOTE_ADDR,
 H2_REMOTE_PORT, H2_SCHEME) = range(23)

# A process's resource, read by the capture loop while the process lived:
# (RESOURCE_MARKER, pid, attributes), ahead of that process's exchanges.
RESOURCE_MARKER = "resource"

# Database exchange tuples: the third shape.
SQL_MARKER = "sql"
(SQL_TAG, SQL_KIND, SQL_PID, SQL_TRACE_ID, SQL_SPAN_ID, SQL_PARENT_ID, SQL_FLAGS,
 SQL_TRACE_STATE, SQL_START_NS, SQL_END_NS, SQL_SYSTEM, SQL_NAMESPACE, SQL_TEXT,
 SQL_ERROR_CODE, SQL_LOCAL_ADDR, SQL_LOCAL_PORT, SQL_REMOTE_ADDR, SQL_REMOTE_PORT) = range(18)
# The sanitiser's dialect per db.system.name (MariaDB speaks MySQL's).
_SQL_DIALECTS = {"postgresql": "postgresql", "mysql": "mysql", "mariadb": "mysql"}


def monotonic_to_wall_offset_ns() -> int:
    """Kernel timestamps are CLOCK_MONOTONIC; spans want UNIX time."""
    return time.time_ns() - time.monotonic_ns()


def _host_and_port(host: str | None) -> tuple[str | None, int | None]:
    if not host:
        return None, None
    if host.startswith("["):
        end = host.find("]")
        name, rest = host[1:end], host[end + 1:]
        port = rest[1:] if rest.startswith(":") else ""
    else:
        name, _, port = host.partition(":")
    return name, int(port) if port.isdigit() else None


class HttpExchangeLinker:
    def __init__(self, sampler: Sampler | None = None):
        self.sampler = sampler or Sampler()
        self.linker = ContextLinker()
        self.counts = {"traceparent_invalid": 0, "tracestate_invalid": 0, "linked_same_node": 0}

    def exchanges(self, items: list) -> list[tuple]:
        out = []
        for item in items:
            if item[0] == ITEM_REQUEST:
                self._on_request(item[1], item[2])
            elif item[0] == ITEM_EXCHANGE:
                out.append(self._exchange(item[1], item[2], item[3]))
            elif item[0] == ITEM_H2_REQUEST:
                self._on_h2_request(item[1], item[2])
            elif item[0] == ITEM_H2_EXCHANGE:
                out.append(self._h2_exchange(item[1], item[2], item[3]))
            elif item[0] == ITEM_SQL_REQUEST:
                self._on_sql_request(item[1], item[2])
            elif item[0] == ITEM_SQL_EXCHANGE:
                out.append(self._sql_exchange(item[1], item[2]))
        return out

    def _on_sql_request(self, conn: Connection, query: SqlQuery) -> None:
        """A sqlcommenter traceparent makes the statement a child of the
        trace it names; without one, a client statement sent by a thread
        that is serving a traced request is a child of that request."""
        incoming = self._incoming(query)
        if incoming is not None:
            ctx = self._child_of_incoming(incoming, query)
        elif conn.is_server:
            ctx = self._new_root()
        else:
            ctx = self._child_of_serving_thread(conn.pid, query.tid)
        if not conn.is_server:
            self.linker.client_sent(conn.key(), ctx)
        query.context = ctx

    def _sql_exchange(self, conn: Connection, query: SqlQuery) -> tuple:
        if query.context is None:
            self._on_sql_request(conn, query)
        ctx = query.context
        if conn.is_server:
            self._join_client_on_this_node(ctx, conn.mirror_key())
            kind = KIND_SERVER
        else:
            kind = KIND_CLIENT
        return (SQL_MARKER, kind, conn.pid, ctx.trace_id, ctx.span_id, ctx.parent_span_id,
                ctx.flags, ctx.trace_state, query.start_ns, query.end_ns, query.system,
                query.namespace, query.text, query.error_code, conn.local_addr,
                conn.local_port, conn.remote_addr, conn.remote_port)

    def _on_h2_request(self, conn: Connection, request: H2Request) -> None:
        # Streams are multiplexed: both ends see the same stream ids, so the
        # same-node link is keyed by connection and stream.
        request.context = self._decide(conn, request, request.tid,
                                       conn.key() + (request.stream_id,))

    def _h2_exchange(self, conn: Connection, request: H2Request, exchange) -> tuple:
        if request.context is None:
            self._on_h2_request(conn, request)
        ctx, incoming = request.context
        if conn.is_server:
            linker = self.linker
            linker.server_finished(conn.pid, request.tid, incoming, ctx)
            self._join_client_on_this_node(ctx, conn.mirror_key() + (request.stream_id,))
            kind = KIND_SERVER
        else:
            kind = KIND_CLIENT
        headers = request.headers
        response = exchange.response_headers
        status = header(response, ":status")
        status_code = int(status) if status is not None and status.isascii() \
            and status.isdigit() and len(status) == 3 else None
        grpc = is_grpc(headers)
        grpc_code = None
        if grpc:
            found = grpc_status(exchange.trailers or response)
            if found is not None:
                grpc_code = found[0]
        return (H2_MARKER, kind, conn.pid, ctx.trace_id, ctx.span_id, ctx.parent_span_id,
                ctx.flags, ctx.trace_state, request.start_ns, exchange.end_ns,
                header(headers, ":method"), header(headers, ":path"),
                header(headers, ":authority") or header(headers, "host"),
                header(headers, "user-agent"), status_code, grpc, grpc_code,
                exchange.reset_error, conn.local_addr, conn.local_port, conn.remote_addr,
                conn.remote_port, conn.scheme)

    def _incoming(self, request) -> tuple | None:
        if request.traceparent is None:
            return None
        status, value, _ = parse_traceparent(request.traceparent)
        if status != PARSED:
            self.counts["traceparent_invalid"] += 1
            return None
        return value

    def _trace_state(self, request) -> str:
        if request.tracestate is None:
            return ""
        state = parse_tracestate(request.tracestate)
        if state is None:
            self.counts["tracestate_invalid"] += 1
            return ""
        return state

    def _new_root(self) -> RequestContext:
        trace_id = new_trace_id()
        return RequestContext(trace_id, new_span_id(), b"", self.sampler.root_flags(trace_id), "")

    def _on_request(self, conn: Connection, message: Message) -> None:
        message.context = self._decide(conn, message.parsed, message.tid, conn.key())

    def _decide(self, conn: Connection, request, tid: int, link_key: tuple) -> tuple:
        """(context, incoming traceparent) of a request seen on conn;
        `request` has .traceparent and .tracestate (str or None); a client's
        context is remembered under link_key for the server that reads it."""
        incoming = self._incoming(request)
        linker = self.linker
        if conn.is_server:
            ctx = self._child_of_incoming(incoming, request) if incoming is not None \
                else self._new_root()
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
                                         self._trace_state(request))
            else:
                ctx = self._child_of_serving_thread(conn.pid, tid)
            linker.client_sent(link_key, ctx)
        return (ctx, incoming)

    def _child_of_incoming(self, incoming: tuple, request) -> RequestContext:
        return RequestContext(incoming[0], new_span_id(), incoming[1], incoming[2],
                              self._trace_state(request))

    def _child_of_serving_thread(self, pid: int, tid: int) -> RequestContext:
        """A child of the server request the thread is serving, else a new root."""
        server = self.linker.serving_thread(pid, tid)
        if server is None:
            return self._new_root()
        return RequestContext(server.trace_id, new_span_id(), server.span_id, server.flags,
                              server.trace_state)

    def _join_client_on_this_node(self, ctx: RequestContext, mirror_key: tuple) -> None:
        """A server span whose client was traced on this node becomes its child."""
        link = self.linker.take_client_link(mirror_key)
        if link is not None:
            self.counts["linked_same_node"] += 1
            ctx.trace_id, ctx.parent_span_id, ctx.flags = link.trace_id, link.span_id, link.flags

    def _exchange(self, conn: Connection, request_message: Message,
                  response_message: Message) -> tuple:
        if request_message.context is None:
            self._on_request(conn, request_message)
        ctx, incoming = request_message.context
        request = request_message.parsed
        if conn.is_server:
            linker = self.linker
            linker.server_finished(conn.pid, request_message.tid, incoming, ctx)
            self._join_client_on_this_node(ctx, conn.mirror_key())
            kind, start = KIND_SERVER, request_message.first_end_ns
        else:
            kind, start = KIND_CLIENT, request_message.first_start_ns
        return (kind, conn.pid, ctx.trace_id, ctx.span_id, ctx.parent_span_id, ctx.flags,
                ctx.trace_state, start, response_message.last_end_ns, request.method,
                request.target, request.version, request.host, request.user_agent,
                response_message.parsed.status_code, conn.local_addr, conn.local_port,
                conn.remote_addr, conn.remote_port, conn.scheme)


class HttpSpanFactory:
    def __init__(self, resources: ResourceCache, redactor: Redactor,
                 routes: RouteNamer | None = None):
        self.resources = resources
        self.redactor = redactor
        self.routes = routes or RouteNamer()
        self.clock_offset_ns = monotonic_to_wall_offset_ns()
        self.spans_server = 0
        self.spans_client = 0
        self._hosts: dict = {}

    def refresh_clock(self) -> None:
        self.clock_offset_ns = monotonic_to_wall_offset_ns()

    def _host(self, host: str | None) -> tuple[str | None, int | None]:
        cached = self._hosts.get(host)
        if cached is None:
            if len(self._hosts) >= 4096:
                self._hosts.clear()
            cached = self._hosts[host] = _host_and_port(host)
        return cached

    def spans(self, exchanges: list) -> list[Span]:
        out = []
        for e in exchanges:
            tag = e[0]
            if tag == H2_MARKER:
                out.append(self.h2_span(e))
            elif tag == SQL_MARKER:
                out.append(self.sql_span(e))
            elif tag == RESOURCE_MARKER:
                self.resources.put(e[1], e[2])
            else:
                out.append(self.span(e))
        return out

    def sql_span(self, e: tuple) -> Span:
        """A database span: named by db.query.summary, else the operation
        and table, else the system; text sanitised unless asked otherwise."""
        (_, kind, pid, trace_id, span_id, parent_id, flags, trace_state, start, end, system,
         namespace, text, error_code, local_addr, local_port, remote_addr, remote_port) = e
        attrs = [(semconv.DB_SYSTEM_NAME, system)]
        if namespace:
            attrs.append((semconv.DB_NAMESPACE, namespace))
        name = None
        if text is not None:
            sanitized = sanitize(text, _SQL_DIALECTS.get(system))
            summary, operation, collection = query_info(sanitized)
            if operation:
                attrs.append((semconv.DB_OPERATION_NAME, operation))
            if collection:
                attrs.append((semconv.DB_COLLECTION_NAME, collection))
            if summary:
                attrs.append((semconv.DB_QUERY_SUMMARY, summary))
                name = summary
            elif operation:
                name = f"{operation} {collection}" if collection else operation
            shown = self.redactor.sql_text(sanitized, text)
            if shown is not None:
                attrs.append((semconv.DB_QUERY_TEXT, shown))
        if kind == KIND_SERVER:
            self.spans_server += 1
            attrs.append((semconv.SERVER_ADDRESS, local_addr))
            attrs.append((semconv.SERVER_PORT, local_port))
            attrs.append((semconv.CLIENT_ADDRESS, remote_addr))
        else:
            self.spans_client += 1
            attrs.append((semconv.SERVER_ADDRESS, remote_addr))
            attrs.append((semconv.SERVER_PORT, remote_port))
        attrs.append((semconv.NETWORK_PEER_ADDRESS, remote_addr))
        attrs.append((semconv.NETWORK_PEER_PORT, remote_port))
        status = STATUS_UNSET
        if error_code is not None:
            status = STATUS_ERROR
            attrs.append((semconv.DB_RESPONSE_STATUS_CODE, error_code))
            attrs.append((semconv.ERROR_TYPE, error_code))
        offset = self.clock_offset_ns
        return Span(trace_id, span_id, parent_id, name or system, kind, start + offset,
                    end + offset, attrs, self.resources.get(pid), status, "", trace_state, flags)

    def h2_span(self, e: tuple) -> Span:
        """An HTTP/2 exchange: a gRPC span, or an HTTP span as HTTP/1's with
        network.protocol.version "2"."""
        reset = e[H2_RESET_ERROR]
        if not e[H2_GRPC]:
            status_code = e[H2_STATUS_CODE]
            span = self.span((e[H2_KIND], e[H2_PID], e[H2_TRACE_ID], e[H2_SPAN_ID],
                              e[H2_PARENT_ID], e[H2_FLAGS], e[H2_TRACE_STATE], e[H2_START_NS],
                              e[H2_END_NS], e[H2_METHOD] or "_OTHER", e[H2_PATH] or "",
                              "2", e[H2_AUTHORITY], e[H2_USER_AGENT], status_code or 0,
                              e[H2_LOCAL_ADDR], e[H2_LOCAL_PORT], e[H2_REMOTE_ADDR],
                              e[H2_REMOTE_PORT], e[H2_SCHEME]))
            # What a joined connection's header blocks did not reveal is left
            # out, not filled in: "" is no path and _OTHER no unknown method.
            unknown = set()
            if status_code is None:
                unknown |= {"http.response.status_code", "error.type"}
            if e[H2_PATH] is None:
                unknown |= {"url.path", "url.query", "url.full"}
            if e[H2_METHOD] is None:
                unknown |= {"http.request.method", "http.request.method_original"}
            if unknown:
                span.attributes = [a for a in span.attributes if a[0] not in unknown]
            if reset and span.status_code != STATUS_ERROR:
                span.status_code = STATUS_ERROR
                span.attributes.append((semconv.ERROR_TYPE, error_name(reset)))
            return span
        (_, kind, pid, trace_id, span_id, parent_id, flags, trace_state, start, end, _,
         path, authority, user_agent, _, _, grpc_code, _, local_addr, local_port,
         remote_addr, remote_port, _) = e
        method = grpc_method(path)
        host, host_port = self._host(authority)
        attrs = [(semconv.RPC_SYSTEM_NAME, semconv.RPC_SYSTEM_GRPC)]
        if method is not None:
            attrs.append((semconv.RPC_METHOD, method))
        if kind == KIND_SERVER:
            self.spans_server += 1
            attrs.append((semconv.SERVER_ADDRESS, host or local_addr))
            attrs.append((semconv.SERVER_PORT, host_port or local_port))
            attrs.append((semconv.CLIENT_ADDRESS, remote_addr))
        else:
            self.spans_client += 1
            attrs.append((semconv.SERVER_ADDRESS, host or remote_addr))
            attrs.append((semconv.SERVER_PORT, host_port or remote_port))
        attrs.append((semconv.NETWORK_PEER_ADDRESS, remote_addr))
        attrs.append((semconv.NETWORK_PEER_PORT, remote_port))
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
        offset = self.clock_offset_ns
        return Span(trace_id, span_id, parent_id, method or semconv.RPC_SYSTEM_GRPC, kind,
                    start + offset, end + offset, attrs, self.resources.get(pid), status, "",
                    trace_state, flags)

    def span(self, e: tuple) -> Span:
        (kind, pid, trace_id, span_id, parent_id, flags, trace_state, start, end, method,
         target, version, host_header, user_agent, status_code, local_addr, local_port,
         remote_addr, remote_port, scheme) = e
        known = method in KNOWN_METHODS
        path, query = split_target(target)
        host, host_port = self._host(host_header)
        status = STATUS_UNSET
        if kind == KIND_SERVER:
            self.spans_server += 1
            attrs = [("http.request.method", method if known else "_OTHER"),
                     ("url.path", path), ("url.scheme", scheme),
                     ("server.address", host or local_addr),
                     ("server.port", host_port or local_port),
                     ("client.address", remote_addr)]
            if query is not None:
                attrs.append(("url.query", self.redactor.redact_query(query)))
            if status_code >= 500:
                status = STATUS_ERROR
        else:
            self.spans_client += 1
            server_address = host or remote_addr
            server_port = host_port or remote_port
            attrs = [("http.request.method", method if known else "_OTHER"),
                     ("server.address", server_address), ("server.port", server_port),
                     ("url.full", self._url_full(scheme, target, server_address,
                                                 server_port, path, query))]
            if status_code >= 400:
                status = STATUS_ERROR
        name = method if known else "HTTP"
        if known and self.routes.patterns:
            name, route = self.routes.name(method, path)
            if route is not None:
                attrs.append(("http.route", route))
        attrs.append(("network.peer.address", remote_addr))
        attrs.append(("network.peer.port", remote_port))
        attrs.append(("network.protocol.version", version))
        attrs.append(("http.response.status_code", status_code))
        if not known:
            attrs.append(("http.request.method_original", method))
        if user_agent:
            attrs.append(("user_agent.original", user_agent))
        if status == STATUS_ERROR:
            attrs.append(("error.type", str(status_code)))
        offset = self.clock_offset_ns
        return Span(trace_id, span_id, parent_id, name, kind, start + offset, end + offset,
                    attrs, self.resources.get(pid), status, "", trace_state, flags)

    def _url_full(self, scheme: str, target: str, host: str, port: int, path: str,
                  query: str | None) -> str:
        if "://" in target:
            return self.redactor.redact_url(target)
        default_port = 443 if scheme == "https" else 80
        bracketed = f"[{host}]" if ":" in host and not host.startswith("[") else host
        authority = bracketed if port == default_port else f"{bracketed}:{port}"
        url = f"{scheme}://{authority}{path}"
        if query is not None:
            url += "?" + self.redactor.redact_query(query)
        return url


class HttpSpanBuilder:
    """Both halves in one process: for tests, replay and --span-workers 0."""

    def __init__(self, resources: ResourceCache, redactor: Redactor,
                 sampler: Sampler | None = None, routes: RouteNamer | None = None):
        self.linker = HttpExchangeLinker(sampler)
        self.factory = HttpSpanFactory(resources, redactor, routes)

    def build(self, items: list) -> list[Span]:
        return self.factory.spans(self.linker.exchanges(items))
