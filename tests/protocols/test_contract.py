"""The protocol contract (agent/protocols/contract.py) and the connection
table every handler shares (agent/protocols/table.py)."""
from __future__ import annotations

from agent.capture.records import C
from agent.counters import counter
from agent.protocols.contract import ProtocolHandler
from agent.protocols.router import HANDLERS, ProtocolRouter
from agent.runtime.metrics import PREFIX, declared_families
from event_records import make_record

LOOPBACK = b"\0" * 10 + b"\xff\xff" + bytes([127, 0, 0, 1])
GET = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
STARTUP = (b"\0\0\0\x17\0\x03\0\0user\0app\0\0")


def data(conn_id, pid, protocol, payload, seq=0, direction=None):
    return make_record(payload, type=C["EVENT_DATA"], pid=pid, tid=pid, conn_id=conn_id,
                       start_ns=1000, end_ns=1010, length=len(payload), captured=len(payload),
                       direction=C["DIRECTION_EGRESS"] if direction is None else direction,
                       role=C["ROLE_CLIENT"], protocol=protocol, seq=seq,
                       local_addr=LOOPBACK, remote_addr=LOOPBACK, local_port=40000 + conn_id,
                       remote_port=80, family=10)


def test_every_handler_implements_the_contract():
    for handler in HANDLERS:
        assert issubclass(handler, ProtocolHandler)
        for method in ("open", "record", "gap", "discard"):
            assert getattr(handler, method) is not getattr(ProtocolHandler, method), \
                (handler.__name__, method)
        assert handler.PROTOCOL >= 0 and handler.NAME and handler.COUNTERS
    assert len({h.PROTOCOL for h in HANDLERS}) == len(HANDLERS)


def test_process_exit_drops_only_its_connections_of_every_protocol():
    router = ProtocolRouter()
    router.process([data(1, 10, C["PROTOCOL_HTTP1"], GET),
                    data(2, 10, C["PROTOCOL_HTTP2"], PREFACE),
                    data(3, 10, C["PROTOCOL_POSTGRES"], STARTUP),
                    data(4, 20, C["PROTOCOL_HTTP1"], GET)])
    assert len(router.table) == 4
    router.process([make_record(type=C["EVENT_PROCESS_EXIT"], pid=10)])
    assert list(router.table.by_id) == [4]
    assert router.counts["connections_expired"] == 3
    assert router.counts["requests_without_response"] == 1      # the HTTP/1 request
    router.forget_process(20)
    assert len(router.table) == 0 and router.table._by_pid == {}
    assert router.exited == [10, 20]


def test_eviction_expiry_and_close_return_the_table_to_baseline():
    router = ProtocolRouter(max_connections=2, idle_timeout_s=1.0)
    router.process([data(i, 10 + i, C["PROTOCOL_HTTP1"], GET) for i in range(1, 4)])
    assert list(router.table.by_id) == [2, 3] and router.counts["connections_evicted"] == 1
    router.process([make_record(type=C["EVENT_CLOSE"], conn_id=2)])
    assert router.expire(1010 + 2 * 10**9) == 1
    assert len(router.table) == 0 and router.table._by_pid == {}
    assert router.counts["connections_opened"] == 3
    assert router.counts["connections_closed"] == 1
    assert router.counts["connections_expired"] == 1


def test_a_gap_in_the_numbers_reaches_the_connections_handler():
    router = ProtocolRouter()
    head, rest = GET[:10], GET[10:]
    router.process([data(1, 10, C["PROTOCOL_HTTP1"], head, seq=1),
                    data(1, 10, C["PROTOCOL_HTTP1"], rest, seq=3)])   # 2 was lost
    assert router.counts["event_gaps"] == 1
    assert router.counts["messages_incomplete"] == 1     # the head being framed


class EchoHandler(ProtocolHandler):
    """A protocol added with nothing but a handler: every record is a request."""

    PROTOCOL = 99
    NAME = "echo"
    COUNTERS = (counter("echo_records", "echo_records", "Records of the echo protocol."),)

    def open(self, conn, record, hot):
        conn.state = []
        return True

    def record(self, conn, record, hot, out):
        self.counts["echo_records"] += 1

    def gap(self, conn):
        pass

    def discard(self, conn):
        pass


def test_a_new_protocol_is_one_registration():
    router = ProtocolRouter(handlers=HANDLERS + (EchoHandler,))
    router.process([data(1, 10, 99, b"x"), data(1, 10, 99, b"y")])
    assert len(router.table) == 1 and router.counts["events_unknown_protocol"] == 0
    families = {f.name: f for f in declared_families(router.counter_values())}
    assert families[f"{PREFIX}_echo_records"].samples[0].value == 2
