"""Trace-context links the wire alone does not carry.

Three rules connect spans that the agent sees on one node:
- a server request in flight in a process, keyed by its incoming
  (trace id, parent id): an outgoing request that carries the very same
  traceparent was forwarded unchanged (proxies such as nginx do this), so its
  client span is a child of that server span rather than a copy of the caller;
- the server request a thread is serving: an outgoing request with no
  traceparent made on that thread belongs to it;
- a client span, keyed by its connection's 4-tuple: the server span on the
  mirrored tuple (the same connection seen from the other end) is its child.
All tables are bounded; the oldest entries go first.
"""
from __future__ import annotations

from collections import deque


class RequestContext:
    __slots__ = ("trace_id", "span_id", "parent_span_id", "flags", "trace_state")

    def __init__(self, trace_id: bytes, span_id: bytes, parent_span_id: bytes, flags: int,
                 trace_state: str):
        self.trace_id = trace_id
        self.span_id = span_id
        self.parent_span_id = parent_span_id
        self.flags = flags
        self.trace_state = trace_state


def _bounded_put(table: dict, key, value, limit: int) -> None:
    """Insert; past the limit the oldest entry goes (dicts keep insertion order)."""
    table[key] = value
    if len(table) > limit:
        del table[next(iter(table))]


class ContextLinker:
    def __init__(self, max_entries: int = 65536, max_links_per_connection: int = 64):
        self._by_incoming: dict[tuple, RequestContext] = {}
        self._by_thread: dict[tuple, RequestContext] = {}
        self._client_links: dict[tuple, deque] = {}
        self._max = max_entries
        self._max_links = max_links_per_connection

    def __len__(self) -> int:
        return len(self._by_incoming) + len(self._by_thread) + len(self._client_links)

    def server_started(self, pid: int, tid: int, incoming: tuple | None, ctx: RequestContext) -> None:
        if incoming is not None:
            _bounded_put(self._by_incoming, (pid, incoming[0], incoming[1]), ctx, self._max)
        _bounded_put(self._by_thread, (pid, tid), ctx, self._max)

    def server_finished(self, pid: int, tid: int, incoming: tuple | None, ctx: RequestContext) -> None:
        if incoming is not None:
            key = (pid, incoming[0], incoming[1])
            if self._by_incoming.get(key) is ctx:
                del self._by_incoming[key]
        if self._by_thread.get((pid, tid)) is ctx:
            del self._by_thread[(pid, tid)]

    # Both asked for every client span: an empty table (no server request
    # in flight) answers without a key to build and hash.
    def forwarded_from(self, pid: int, trace_id: bytes, parent_id: bytes) -> RequestContext | None:
        table = self._by_incoming
        return table.get((pid, trace_id, parent_id)) if table else None

    def serving_thread(self, pid: int, tid: int) -> RequestContext | None:
        table = self._by_thread
        return table.get((pid, tid)) if table else None

    def client_sent(self, connection_key: tuple, ctx: RequestContext) -> None:
        links = self._client_links.get(connection_key)
        if links is None:
            links = deque(maxlen=self._max_links)
            _bounded_put(self._client_links, connection_key, links, self._max)
        links.append(ctx)

    def take_client_link(self, mirror_key: tuple) -> RequestContext | None:
        links = self._client_links.get(mirror_key)
        if not links:
            return None
        ctx = links.popleft()
        if not links:
            del self._client_links[mirror_key]
        return ctx
