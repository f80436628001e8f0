"""HTTP spans (stable HTTP semantic conventions) from HTTP/1.x exchanges,
and from plain HTTP/2 ones (network.protocol.version "2").

Span names are `{method}`, or `{method} {route}` for configured routes,
never the raw path; unknown methods become `_OTHER` / `HTTP`.  What a
joined HTTP/2 connection's header blocks did not reveal (method, path,
status: None in the exchange) is left out, not filled in.
"""
from __future__ import annotations

from typing import NamedTuple

from agent.parsers.http1 import split_target
from agent.parsers.http2 import error_name
from agent.spans.model import (EXCHANGE_HEAD, EXCHANGE_PEERS, KIND_CLIENT, KIND_SERVER,
                               STATUS_ERROR, STATUS_UNSET, Span)
from agent.spans.templates import ShapeTemplates

TAG = "http"
# Exchanges are built with tuple.__new__ (what NamedTuple's generated
# __new__ calls): one Python call less per exchange on the main process.
new_exchange = tuple.__new__
KNOWN_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS",
                           "TRACE", "PATCH", "QUERY"))


# method, target, status_code: None when not decoded (HTTP/2 joined
# mid-connection); reset_error: HTTP/2's RST_STREAM code, or REFUSED_STREAM
# by GOAWAY.
HttpExchange = NamedTuple("HttpExchange", EXCHANGE_HEAD + [
    ("method", str | None), ("target", str | None), ("version", str), ("host", str | None),
    ("user_agent", str | None), ("status_code", int | None)] + EXCHANGE_PEERS + [
    ("scheme", str), ("reset_error", int | None)])


def link_http1(linker, conn, message, response) -> HttpExchange | None:
    """An HTTP/1 work item (agent/protocols/http1.py) -> its exchange once
    the response completed it."""
    if message.context is None:
        message.context = linker.decide(conn, message.parsed, message.tid, conn.key())
    if response is None:
        return None
    ctx, incoming = message.context
    request = message.parsed
    if conn.is_server:
        linker.linker.server_finished(conn.pid, message.tid, incoming, ctx)
        linker.join_client_on_this_node(ctx, conn.mirror_key())
        kind, start = KIND_SERVER, message.first_end_ns
    else:
        kind, start = KIND_CLIENT, message.first_start_ns
    return new_exchange(HttpExchange, (
        TAG, kind, conn.pid, ctx.trace_id, ctx.span_id, ctx.parent_span_id, ctx.flags,
        ctx.trace_state, start, response.last_end_ns, request.method, request.target,
        request.version, request.host, request.user_agent, response.parsed.status_code,
        conn.local_addr, conn.local_port, conn.remote_addr, conn.remote_port, conn.peer_addr,
        conn.peer_port, conn.scheme, None))


def host_and_port(host: str | None) -> tuple[str | None, int | None]:
    """A Host header or :authority -> (name, port or None)."""
    if not host:
        return None, None
    if host.startswith("["):
        end = host.find("]")
        name, rest = host[1:end], host[end + 1:]
        port = rest[1:] if rest.startswith(":") else ""
    else:
        name, _, port = host.partition(":")
    return name, int(port) if port.isdigit() else None


class HostCache:
    """host_and_port with the results of the values seen lately."""

    __slots__ = ("_hosts",)

    def __init__(self):
        self._hosts: dict = {}

    def lookup(self, host: str | None) -> tuple[str | None, int | None]:
        cached = self._hosts.get(host)
        if cached is None:
            if len(self._hosts) >= 4096:
                self._hosts.clear()
            cached = self._hosts[host] = host_and_port(host)
        return cached


class HttpSpans:
    """Builds HTTP spans; `factory` (agent/spans/builder.py) holds the
    resources, redactor, routes, host cache and clock offset.  An
    exchange's shape (agent/spans/templates.py) is its kind and every
    field from its method on: all that span() reads but ids and times."""

    def __init__(self, factory):
        self.factory = factory
        self.redactor = factory.redactor
        self.routes = factory.routes
        self.resources = factory.resources
        self.host_of = factory.host_of
        self.shapes = ShapeTemplates(factory, self.span, with_kind=True)
        self.build = self.shapes.build

    def span(self, e: HttpExchange) -> Span:
        """The exchange's span, built field by field."""
        (_, kind, pid, trace_id, span_id, parent_id, flags, trace_state, start, end, method,
         target, version, host_header, user_agent, status_code, local_addr, local_port,
         remote_addr, remote_port, peer_addr, peer_port, scheme, reset_error) = e
        unknown = None
        if method is None or target is None or status_code is None:
            unknown = _unknown(method, target, status_code)
            method, target = method or "_OTHER", target or ""
        known = method in KNOWN_METHODS
        path, query = split_target(target)
        host, host_port = self.host_of(host_header)
        status = STATUS_UNSET
        if kind == KIND_SERVER:
            attrs = [("http.request.method", method if known else "_OTHER"),
                     ("url.path", path), ("url.scheme", scheme),
                     ("server.address", host or local_addr),
                     ("server.port", host_port or local_port),
                     ("client.address", remote_addr)]
            if query is not None:
                attrs.append(("url.query", self.redactor.redact_query(query)))
            if status_code is not None and status_code >= 500:
                status = STATUS_ERROR
        else:
            server_address = host or remote_addr
            server_port = host_port or remote_port
            attrs = [("http.request.method", method if known else "_OTHER"),
                     ("server.address", server_address), ("server.port", server_port),
                     ("url.full", self._url_full(scheme, target, server_address,
                                                 server_port, path, query))]
            if status_code is not None and status_code >= 400:
                status = STATUS_ERROR
        name = method if known else "HTTP"
        if known and self.routes.patterns:
            name, route = self.routes.name(method, path)
            if route is not None:
                attrs.append(("http.route", route))
        attrs.append(("network.peer.address", peer_addr))
        attrs.append(("network.peer.port", peer_port))
        attrs.append(("network.protocol.version", version))
        attrs.append(("http.response.status_code", status_code))
        if not known:
            attrs.append(("http.request.method_original", method))
        if user_agent:
            attrs.append(("user_agent.original", user_agent))
        if status == STATUS_ERROR:
            attrs.append(("error.type", str(status_code)))
        if unknown is not None:
            attrs = [a for a in attrs if a[0] not in unknown]
        if reset_error and status != STATUS_ERROR:
            status = STATUS_ERROR
            attrs.append(("error.type", error_name(reset_error)))
        offset = self.factory.clock_offset_ns
        return Span(trace_id, span_id, parent_id, name, kind, start + offset, end + offset,
                    attrs, self.resources.get(pid), status, "", trace_state, flags)

    def _url_full(self, scheme: str, target: str, host: str, port: int, path: str,
                  query: str | None) -> str:
        redactor = self.redactor
        if "://" in target:
            return redactor.redact_url(target)
        default_port = 443 if scheme == "https" else 80
        bracketed = f"[{host}]" if ":" in host and not host.startswith("[") else host
        authority = bracketed if port == default_port else f"{bracketed}:{port}"
        url = f"{scheme}://{authority}{path}"
        if query is not None:
            url += "?" + redactor.redact_query(query)
        return url


def _unknown(method, target, status_code) -> set:
    """The attributes a joined HTTP/2 connection's header blocks did not
    reveal: left out, not filled in ("" is no path, _OTHER no unknown method)."""
    unknown = set()
    if status_code is None:
        unknown |= {"http.response.status_code", "error.type"}
    if target is None:
        unknown |= {"url.path", "url.query", "url.full"}
    if method is None:
        unknown |= {"http.request.method", "http.request.method_original"}
    return unknown
