"""Reassemble and match: the stage between the drain and span building.

Each data record goes to the handler of its connection's protocol
(HANDLERS: the kernel's protocol tag -> handler, agent/protocols/contract.py);
process records (exec, exit) and closes are handled here and in the shared
connection table (agent/protocols/table.py).  Output, per batch, is the
handlers' work items in event order.  Everything kept is bounded, and
everything thrown away is counted in `self.counts`.
"""
from __future__ import annotations

from agent.capture.records import (C, EVENT_HEADER, EVENT_HEADER_SIZE, ffi, prefix_struct)
from agent.counters import Counter, counter, unique
from agent.protocols import table as table_module
from agent.protocols.contract import EVENTS_SKIPPED, Limits
from agent.protocols.http1 import Http1Handler
from agent.protocols.http1_records import EVENT_HTTP_EXCHANGE, EXCHANGE_SIZE, ExchangeRecords
from agent.protocols.http2 import Http2Handler
from agent.protocols.memcached import MemcachedHandler
from agent.protocols.mysql import MysqlHandler
from agent.protocols.postgres import PostgresHandler
from agent.protocols.redis import RedisHandler
from agent.protocols.table import Connection, ConnectionTable

# One line per protocol: its handler class (the kernel tag is its PROTOCOL).
HANDLERS = (Http1Handler, Http2Handler, PostgresHandler, MysqlHandler, RedisHandler,
            MemcachedHandler)

COUNTERS = (
    Counter("events_unknown_protocol", EVENTS_SKIPPED, "unknown_protocol"),
    counter("records_malformed", "records_malformed", "Ring buffer records too short to decode."),
)

_ROLE_CLIENT = C["ROLE_CLIENT"]
_EVENT_DATA = C["EVENT_DATA"]
_EVENT_CLOSE = C["EVENT_CLOSE"]
_EVENT_PROCESS_EXIT = C["EVENT_PROCESS_EXIT"]
_EVENT_PROCESS_EXEC = C["EVENT_PROCESS_EXEC"]
_EVENT_TLS_LIBRARY_OPEN = C["EVENT_TLS_LIBRARY_OPEN"]
_TLS_LIBRARY_RECORD_SIZE = ffi.sizeof("struct tls_library_record")

# The per-event fields, through `seq`: the hot loop unpacks only these;
# addresses and ports are read once, when a connection opens.
_HOT_HEADER = prefix_struct("struct event_header", "seq")


class ProtocolRouter:
    def __init__(self, max_connections: int = 65536, max_pending_requests: int = 64,
                 max_header_bytes: int = 16384, idle_timeout_s: float = 300.0,
                 request_timeout_s: float = 120.0, handlers=HANDLERS):
        self.max_connections = max_connections
        self.counter_declarations = unique(COUNTERS, table_module.COUNTERS,
                                           *(h.COUNTERS for h in handlers))
        self.counts = {c.key: 0 for c in self.counter_declarations}
        # (protocol, reason) -> count
        self.parse_errors: dict[tuple[str, str], int] = {}
        limits = Limits(max_pending=max_pending_requests, max_header_bytes=max_header_bytes,
                        request_timeout_ns=int(request_timeout_s * 1e9))
        self.handlers = {h.PROTOCOL: h(self.counts, self.parse_errors, limits)
                         for h in handlers}
        # The (protocol, reasons) exported at 0 until their first error.
        self.parse_error_declarations = tuple(h.PARSE_ERRORS for h in handlers if h.PARSE_ERRORS)
        self.table = ConnectionTable(self.counts, max_connections, int(idle_timeout_s * 1e9))
        # Processes that called exec, for the TLS library scan to look at.
        self.execs: list[int] = []
        # Their exec records (start time, filename): read before the batch's
        # new processes' resources are, which a short-lived one needs.
        self.exec_records: list = []
        # Records of libssl files traced processes opened: the TLS probes
        # attach to them before the batch's other work.
        self.tls_library_opens: list = []
        # Processes seen for the first time (their first connection, or the
        # first after an exec): their resource is read while they live
        # (agent/runtime/pipeline.py), not when their spans are built.
        self.new_pids: list[int] = []
        self._known_pids: set[int] = set()
        # Processes whose exit was handled: the kernel keeps their names
        # until the pipeline lets go of them (agent/runtime/pipeline.py).
        self.exited: list[int] = []
        # Client connections opened in this batch, for the NAT look-up
        # (agent/runtime/pipeline.py sets a list when conntrack is in use).
        self.new_clients: list[Connection] | None = None
        self.exchange_records = ExchangeRecords(replay=self._route)

    def connections_tracked(self) -> int:
        return len(self.table)

    def records_held(self) -> int:
        """Records waiting for the proxy's server exchange they were sent
        for (agent/protocols/http1_records.py)."""
        return self.exchange_records.held_count()

    def counter_values(self):
        """(declaration, value) of every counter of the stage."""
        counts = self.counts
        return [(c, counts[c.key]) for c in self.counter_declarations]

    # -- hot path ---------------------------------------------------------
    def process(self, records: list) -> list:
        out: list = []
        self._route(records, out)
        if self.exchange_records.deferred:
            self.exchange_records.release_deferred(out)
        return out

    def _route(self, records: list, out: list) -> None:
        table = self.table
        by_id = table.by_id
        get = by_id.get
        move_to_end = by_id.move_to_end
        handlers = self.handlers
        unpack = _HOT_HEADER.unpack_from
        header_size = EVENT_HEADER_SIZE
        waiting = self.exchange_records.waiting
        exchange_items = self.exchange_records.items
        exchange_note = self.exchange_records.note
        held = self.exchange_records.held
        for record in records:
            if len(record) < header_size:
                self.counts["records_malformed"] += 1
                continue
            hot = unpack(record)
            conn_id = hot[4]
            if held and conn_id in held:
                self.exchange_records.hold(conn_id, record, out)
                continue
            conn = get(conn_id)
            event_type = hot[0]
            if event_type != _EVENT_DATA and event_type != EVENT_HTTP_EXCHANGE \
                    and self._control(hot, conn, out, record):
                continue
            protocol = hot[11]
            if conn is None or conn.protocol != protocol:
                handler = handlers.get(protocol)
                if handler is None:
                    self.counts["events_unknown_protocol"] += 1
                    continue
                if conn is not None:       # the kernel classified it anew
                    table.drop(conn)
                conn = self._open(record, hot, handler)
                if conn is None:
                    continue
            else:
                move_to_end(conn_id)
            conn.last_seen_ns = hot[6]
            seq = hot[14]
            if seq:
                last_seq = conn.last_seq
                # A connection's records are numbered 1..65535, then 1
                # again (0: not numbered); a skipped number is a loss.
                if last_seq and seq != last_seq % 65535 + 1:
                    table.gap(conn)
                conn.last_seq = seq
            if event_type != _EVENT_DATA:
                # An exchange record, or the probes' note about a connection
                # the payload path reads (a type this agent does not know
                # is malformed here).
                taken = len(record) >= EXCHANGE_SIZE and exchange_items(conn, record, hot, out) \
                    if event_type == EVENT_HTTP_EXCHANGE else exchange_note(conn, record, hot, out)
                if not taken:
                    self.counts["records_malformed"] += 1
                continue
            if waiting and conn_id in waiting:
                self.exchange_records.flush(conn_id, out)
            conn.record(conn, record, hot, out)

    def _control(self, hot: tuple, conn, out: list, record) -> bool:
        """Close and process records; False for others (read as data)."""
        event_type = hot[0]
        if event_type == _EVENT_CLOSE:
            self.exchange_records.flush(hot[4], out)
            if conn is not None:
                self.table.close(conn, hot[14], out)
        elif event_type == _EVENT_PROCESS_EXIT:
            self.forget_process(hot[1])
        elif event_type == _EVENT_PROCESS_EXEC:
            self.execs.append(hot[1])
            self.exec_records.append(record)
            self._known_pids.discard(hot[1])   # a new program: read it again
        elif event_type == _EVENT_TLS_LIBRARY_OPEN:
            if len(record) >= _TLS_LIBRARY_RECORD_SIZE:
                self.tls_library_opens.append(record)
            else:
                self.counts["records_malformed"] += 1
        else:
            return False
        return True

    def _open(self, record, hot: tuple, handler) -> Connection | None:
        conn = Connection(EVENT_HEADER.unpack_from(record), handler)
        if not handler.open(conn, record, hot):
            return None
        self.table.add(conn)
        if self.new_clients is not None and conn.role == _ROLE_CLIENT:
            self.new_clients.append(conn)
        known = self._known_pids
        if conn.pid not in known:
            if len(known) >= 4 * self.max_connections:
                known.clear()
            known.add(conn.pid)
            self.new_pids.append(conn.pid)
        return conn

    # -- housekeeping -----------------------------------------------------
    def expire(self, now_ns: int) -> int:
        """Drop idle connections and requests that never got an answer."""
        return self.table.expire(now_ns)

    def forget_process(self, pid: int) -> None:
        self._known_pids.discard(pid)
        if len(self.exited) < self.max_connections:   # the pipeline drains it
            self.exited.append(pid)
        self.table.forget_process(pid)
