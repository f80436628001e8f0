"""Build spans: turns matched HTTP/1.x exchanges into OpenTelemetry spans
that follow the stable HTTP semantic conventions.

Span names are `{method}` (never the raw path: paths are unbounded and would
explode span-name cardinality); unknown methods become `_OTHER` / `HTTP`.
"""
from __future__ import annotations

import time

from agent.connections import ITEM_EXCHANGE, ITEM_REQUEST, Connection, Message
from agent.context import ContextLinker, RequestContext
from agent.parsers import PARSED
from agent.parsers.http1 import split_target
from agent.parsers.tracecontext import parse_traceparent, parse_tracestate
from agent.redact import Redactor
from agent.resources import ResourceCache
from agent.routes import RouteNamer
from agent.sampling import Sampler
from agent.spans import (KIND_CLIENT, KIND_SERVER, STATUS_ERROR, STATUS_UNSET, Span,
                         new_span_id, new_trace_id)

KNOWN_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS",
                           "TRACE", "PATCH", "QUERY"))


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


class HttpSpanBuilder:
    def __init__(self, resources: ResourceCache, redactor: Redactor, scheme: str = "http",
                 sampler: Sampler | None = None, routes: RouteNamer | None = None):
        self.resources = resources
        self.redactor = redactor
        self.sampler = sampler or Sampler()
        self.routes = routes or RouteNamer()
        self.linker = ContextLinker()
        self.scheme = scheme
        self.clock_offset_ns = monotonic_to_wall_offset_ns()
        self.counts = {"traceparent_invalid": 0, "tracestate_invalid": 0, "linked_same_node": 0}
        self.spans_server = 0
        self.spans_client = 0
        self._hosts: dict = {}

    def refresh_clock(self) -> None:
        self.clock_offset_ns = monotonic_to_wall_offset_ns()

    def build(self, items: list) -> list[Span]:
        spans = []
        for item in items:
            if item[0] == ITEM_REQUEST:
                self._on_request(item[1], item[2])
            elif item[0] == ITEM_EXCHANGE:
                spans.append(self._span(item[1], item[2], item[3]))
        return spans

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

    def _on_request(self, conn: Connection, message: Message) -> None:
        request = message.parsed
        incoming = self._incoming(request)
        linker = self.linker
        if conn.is_server:
            if incoming is not None:
                ctx = RequestContext(incoming[0], new_span_id(), incoming[1], incoming[2],
                                     self._trace_state(request))
            else:
                trace_id = new_trace_id()
                ctx = RequestContext(trace_id, new_span_id(), b"", self.sampler.root_flags(trace_id), "")
            linker.server_started(conn.pid, message.tid, incoming, ctx)
        else:
            if incoming is not None:
                server = linker.forwarded_from(conn.pid, incoming[0], incoming[1])
                if server is not None:
                    ctx = RequestContext(incoming[0], new_span_id(), server.span_id,
                                         incoming[2], server.trace_state)
                else:
                    # The client's own instrumentation chose this span id for
                    # the downstream parent: the client span takes it.
                    server = linker.serving_thread(conn.pid, message.tid)
                    parent = server.span_id if server is not None and \
                        server.trace_id == incoming[0] else b""
                    ctx = RequestContext(incoming[0], incoming[1], parent, incoming[2],
                                         self._trace_state(request))
            else:
                server = linker.serving_thread(conn.pid, message.tid)
                if server is not None:
                    ctx = RequestContext(server.trace_id, new_span_id(), server.span_id,
                                         server.flags, server.trace_state)
                else:
                    trace_id = new_trace_id()
                    ctx = RequestContext(trace_id, new_span_id(), b"",
                                         self.sampler.root_flags(trace_id), "")
            linker.client_sent(conn.key(), ctx)
        message.context = (ctx, incoming)

    def _connection_constants(self, conn: Connection) -> tuple:
        """Attributes and resource that every span of a connection shares."""
        peer = [("network.peer.address", conn.remote_addr), ("network.peer.port", conn.remote_port)]
        if conn.is_server:
            peer.insert(0, ("client.address", conn.remote_addr))
        conn.span_cache = (peer, self.resources.get(conn.pid))
        return conn.span_cache

    def _host(self, host: str | None) -> tuple[str | None, int | None]:
        cached = self._hosts.get(host)
        if cached is None:
            if len(self._hosts) >= 4096:
                self._hosts.clear()
            cached = self._hosts[host] = _host_and_port(host)
        return cached

    def _span(self, conn: Connection, request_message: Message, response_message: Message) -> Span:
        if request_message.context is None:
            self._on_request(conn, request_message)
        ctx, incoming = request_message.context
        request = request_message.parsed
        status_code = response_message.parsed.status_code
        peer, resource = conn.span_cache or self._connection_constants(conn)
        method = request.method
        known = method in KNOWN_METHODS
        path, query = split_target(request.target)
        host, host_port = self._host(request.host)
        status = STATUS_UNSET
        if conn.is_server:
            linker = self.linker
            linker.server_finished(conn.pid, request_message.tid, incoming, ctx)
            link = linker.take_client_link(conn.mirror_key())
            if link is not None:
                self.counts["linked_same_node"] += 1
                ctx.trace_id, ctx.parent_span_id, ctx.flags = link.trace_id, link.span_id, link.flags
            kind = KIND_SERVER
            self.spans_server += 1
            start = request_message.first_end_ns
            attrs = [("http.request.method", method if known else "_OTHER"),
                     ("url.path", path), ("url.scheme", self.scheme),
                     ("server.address", host or conn.local_addr),
                     ("server.port", host_port or conn.local_port)]
            if query is not None:
                attrs.append(("url.query", self.redactor.redact_query(query)))
            if status_code >= 500:
                status = STATUS_ERROR
        else:
            kind = KIND_CLIENT
            self.spans_client += 1
            start = request_message.first_start_ns
            server_address = host or conn.remote_addr
            server_port = host_port or conn.remote_port
            attrs = [("http.request.method", method if known else "_OTHER"),
                     ("server.address", server_address), ("server.port", server_port),
                     ("url.full", self._url_full(request.target, server_address, server_port,
                                                 path, query))]
            if status_code >= 400:
                status = STATUS_ERROR
        name = method if known else "HTTP"
        if known and self.routes.patterns:
            name, route = self.routes.name(method, path)
            if route is not None:
                attrs.append(("http.route", route))
        attrs += peer
        attrs.append(("network.protocol.version", request.version))
        attrs.append(("http.response.status_code", status_code))
        if not known:
            attrs.append(("http.request.method_original", method))
        if request.user_agent:
            attrs.append(("user_agent.original", request.user_agent))
        if status == STATUS_ERROR:
            attrs.append(("error.type", str(status_code)))
        offset = self.clock_offset_ns
        return Span(ctx.trace_id, ctx.span_id, ctx.parent_span_id, name, kind, start + offset,
                    response_message.last_end_ns + offset, attrs, resource, status, "",
                    ctx.trace_state, ctx.flags)

    def _url_full(self, target: str, host: str, port: int, path: str, query: str | None) -> str:
        if "://" in target:
            return self.redactor.redact_url(target)
        default_port = 443 if self.scheme == "https" else 80
        authority = host if port == default_port else f"{host}:{port}"
        if ":" in host and not host.startswith("["):
            authority = f"[{host}]" if port == default_port else f"[{host}]:{port}"
        url = f"{self.scheme}://{authority}{path}"
        if query is not None:
            url += "?" + self.redactor.redact_query(query)
        return url
