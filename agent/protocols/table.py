"""The connections of every protocol in one table: bounded (the least
recently used goes first), with idle expiry, a pid -> connections index for
process exits, and the records' sequence check.  Each connection's protocol
state is its handler's (agent/protocols/contract.py)."""
from __future__ import annotations

import ipaddress
from collections import OrderedDict

from agent.capture.records import C
from agent.counters import Counter, Metric, counter

_ROLE_SERVER = C["ROLE_SERVER"]
_FLAG_TLS = C["FLAG_TLS"]

CONNECTION_EVENTS = Metric("connection_events", "Connection lifecycle in the tracker.", "event")
COUNTERS = (
    Counter("connections_opened", CONNECTION_EVENTS, "opened"),
    Counter("connections_closed", CONNECTION_EVENTS, "closed"),
    Counter("connections_evicted", CONNECTION_EVENTS, "evicted"),
    Counter("connections_expired", CONNECTION_EVENTS, "expired"),
    counter("event_gaps", "event_gaps",
            "Connections whose records were numbered with a gap: records lost in between."),
)


_V4_MAPPED = b"\0" * 10 + b"\xff\xff"
# Formatting an address costs more than the rest of opening a connection,
# and a node talks to few peers: the texts are kept, up to this many.
MAX_CACHED_ADDRESSES = 4096
_address_texts: dict[bytes, str] = {}


def format_address(raw: bytes) -> str:
    text = _address_texts.get(raw)
    if text is None:
        if raw[:12] == _V4_MAPPED:
            text = ipaddress.IPv4Address(raw[12:]).compressed
        else:
            text = ipaddress.IPv6Address(raw).compressed
        if len(_address_texts) >= MAX_CACHED_ADDRESSES:
            _address_texts.clear()
        _address_texts[raw] = text
    return text


class Connection:
    """One socket as the kernel reported it, and its handler's state."""

    __slots__ = ("conn_id", "pid", "fd", "role", "local_addr", "local_port", "remote_addr",
                 "remote_port", "scheme", "protocol", "handler", "record", "state",
                 "last_seen_ns", "last_seq", "peer_addr", "peer_port", "_link_key",
                 "record_fields")

    def __init__(self, header: tuple, handler=None):
        (_, pid, _, fd, conn_id, _, end_ns, _, _, _, role, protocol, flags, _, _,
         local_addr, remote_addr, local_port, remote_port, _, _) = header
        self.conn_id = conn_id
        self.pid = pid
        self.fd = fd
        self.role = role
        self.local_addr = format_address(local_addr)
        self.remote_addr = format_address(remote_addr)
        self.local_port = local_port
        self.remote_port = remote_port
        # The socket that answers: the remote end unless NAT sent the
        # connection elsewhere (translated()).
        self.peer_addr = self.remote_addr
        self.peer_port = remote_port
        self._link_key = None
        # A TLS connection's data all comes from the TLS uprobes.
        self.scheme = "https" if flags & _FLAG_TLS else "http"
        self.protocol = protocol
        self.handler = handler
        self.record = handler.record if handler is not None else None   # the hot path's call
        self.state = None
        self.last_seen_ns = end_ns
        self.last_seq = 0
        # What exchange records' spans take of the connection, made at its
        # first record (agent/spans/http_records.py).
        self.record_fields = None

    @property
    def is_server(self) -> bool:
        return self.role == _ROLE_SERVER

    def mirror_key(self) -> tuple:
        """This connection as seen from its peer's end."""
        return (self.remote_addr, self.remote_port, self.local_addr, self.local_port)

    def key(self) -> tuple:
        """This connection as its peer's mirror_key() names it: after NAT,
        the translated tuple, so a client behind a Service address links to
        the pod's server span."""
        if self._link_key is not None:
            return self._link_key
        return (self.local_addr, self.local_port, self.remote_addr, self.remote_port)

    def translated(self, peer_addr: str, peer_port: int, seen_addr: str, seen_port: int) -> None:
        """The connection tracker's answer (agent/capture/conntrack.py): the
        peer really reached, and this end as that peer sees it."""
        self.peer_addr = peer_addr
        self.peer_port = peer_port
        self._link_key = (seen_addr, seen_port, peer_addr, peer_port)
        self.record_fields = None


class ConnectionTable:
    def __init__(self, counts: dict, max_connections: int, idle_timeout_ns: int):
        self.counts = counts
        self.max_connections = max_connections
        self.idle_timeout_ns = idle_timeout_ns
        self.by_id: OrderedDict[int, Connection] = OrderedDict()
        self._by_pid: dict[int, set[int]] = {}

    def __len__(self) -> int:
        return len(self.by_id)

    def add(self, conn: Connection) -> None:
        by_id = self.by_id
        if len(by_id) >= self.max_connections:
            self.drop(next(iter(by_id.values())))
            self.counts["connections_evicted"] += 1
        by_id[conn.conn_id] = conn
        pid_conns = self._by_pid.get(conn.pid)
        if pid_conns is None:
            self._by_pid[conn.pid] = {conn.conn_id}
        else:
            pid_conns.add(conn.conn_id)
        self.counts["connections_opened"] += 1

    def drop(self, conn: Connection) -> None:
        """Forget conn; its handler counts what it leaves unfinished."""
        conn.handler.discard(conn)
        del self.by_id[conn.conn_id]
        pid_conns = self._by_pid.get(conn.pid)
        if pid_conns is not None:
            pid_conns.discard(conn.conn_id)
            if not pid_conns:
                del self._by_pid[conn.pid]

    def gap(self, conn: Connection) -> None:
        """Records of conn were lost (the router checks data records'
        numbers, close() the close record's)."""
        self.counts["event_gaps"] += 1
        conn.handler.gap(conn)

    def close(self, conn: Connection, seq: int, out: list) -> None:
        """The close record carries the number of the connection's last
        data record: any other says the records in between were lost."""
        if seq and conn.last_seq != seq:
            self.gap(conn)
        conn.handler.close(conn, out)
        self.drop(conn)
        self.counts["connections_closed"] += 1

    def expire(self, now_ns: int) -> int:
        """Drop idle connections; the live ones' handlers drop requests
        waiting too long.  Returns connections dropped."""
        expired = 0
        idle_timeout = self.idle_timeout_ns
        for conn in list(self.by_id.values()):
            if now_ns - conn.last_seen_ns > idle_timeout:
                self.drop(conn)
                self.counts["connections_expired"] += 1
                expired += 1
            else:
                conn.handler.expire_requests(conn, now_ns)
        return expired

    def forget_process(self, pid: int) -> None:
        by_id = self.by_id
        for conn_id in self._by_pid.pop(pid, ()):
            conn = by_id.pop(conn_id)
            conn.handler.discard(conn)
            self.counts["connections_expired"] += 1
