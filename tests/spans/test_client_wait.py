"""A server exchange whose client's request record arrives after it (a TLS
client's uretprobe fired once the server had answered) waits for that
record and becomes its child; with nobody coming it leaves on time."""
from __future__ import annotations

import time

from agent.capture.records import C
from agent.protocols.router import ProtocolRouter
from agent.spans.builder import ExchangeLinker
from agent.spans.model import KIND_CLIENT, KIND_SERVER
from event_records import http1_record

CLIENT = ("127.0.0.1", 50123)
SERVER = ("127.0.0.1", 8443)
REQUEST = b"GET /cart HTTP/1.1\r\nHost: cart\r\n\r\n"
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
EGRESS, INGRESS = C["DIRECTION_EGRESS"], C["DIRECTION_INGRESS"]


def client(direction, payload, ts):
    return http1_record(1, 100, C["ROLE_CLIENT"], direction, payload, ts, CLIENT, SERVER)


def server(direction, payload, ts):
    return http1_record(2, 200, C["ROLE_SERVER"], direction, payload, ts, SERVER, CLIENT)


def test_server_exchange_first_waits_for_its_client_and_becomes_its_child():
    router, linker = ProtocolRouter(), ExchangeLinker(link_wait_s=5.0)
    # The server's whole exchange is drained before the client's request.
    first = linker.exchanges(router.process([server(INGRESS, REQUEST, 1100),
                                             server(EGRESS, RESPONSE, 1200)]))
    assert first == []
    second = linker.exchanges(router.process([client(EGRESS, REQUEST, 1000),
                                              client(INGRESS, RESPONSE, 1300)]))
    by_kind = {e.kind: e for e in second}
    assert set(by_kind) == {KIND_CLIENT, KIND_SERVER}
    assert by_kind[KIND_SERVER].trace_id == by_kind[KIND_CLIENT].trace_id
    assert by_kind[KIND_SERVER].parent_id == by_kind[KIND_CLIENT].span_id
    assert linker.counts["link_wait_linked"] == 1
    assert len(linker.client_wait) == 0


def test_a_server_exchange_nobody_claims_leaves_when_its_time_is_up():
    router, linker = ProtocolRouter(), ExchangeLinker(link_wait_s=0.05)
    assert linker.exchanges(router.process([server(INGRESS, REQUEST, 1100),
                                            server(EGRESS, RESPONSE, 1200)])) == []
    assert linker.release_held() == []
    time.sleep(0.06)
    released = linker.release_held()
    assert [e.kind for e in released] == [KIND_SERVER] and released[0].parent_id == b""
    assert linker.counts["link_wait_expired"] == 1


def test_without_a_wait_every_exchange_leaves_at_once():
    router, linker = ProtocolRouter(), ExchangeLinker()
    out = linker.exchanges(router.process([server(INGRESS, REQUEST, 1100),
                                           server(EGRESS, RESPONSE, 1200)]))
    assert [e.kind for e in out] == [KIND_SERVER]


def test_a_remote_peer_never_seen_as_a_client_is_not_held():
    router, linker = ProtocolRouter(), ExchangeLinker(link_wait_s=5.0)
    remote = ("10.0.0.9", 40000)
    records = [http1_record(3, 200, C["ROLE_SERVER"], INGRESS, REQUEST, 1100, SERVER, remote),
               http1_record(3, 200, C["ROLE_SERVER"], EGRESS, RESPONSE, 1200, SERVER, remote)]
    assert [e.kind for e in linker.exchanges(router.process(records))] == [KIND_SERVER]


def test_a_claimed_exchange_leaves_at_the_next_release_before_older_ones_expire():
    from agent.spans.client_wait import ClientWait

    class Ctx:
        trace_id, parent_span_id, flags = b"t" * 16, b"", 1

    counts = {"link_wait_linked": 0, "link_wait_expired": 0, "link_wait_overflow": 0}
    wait = ClientWait(hold_s=1.0, counts=counts, max_held=3)
    keys = [("127.0.0.1", port) for port in (1, 2, 3)]
    exchanges = [(0, 2, 42, b"", b"s%d" % i, b"", 0) for i in range(3)]
    for i, key in enumerate(keys):
        assert wait.hold(exchanges[i], Ctx(), key, now=10.0 + i / 10)
    assert not wait.hold(exchanges[0], Ctx(), ("127.0.0.1", 4), now=10.5)
    assert counts["link_wait_overflow"] == 1
    claimed = wait.client_seen(keys[1])
    assert claimed is not None and wait.client_seen(keys[1]) is None
    claimed.ctx.parent_span_id = b"c" * 8
    out: list = []
    wait.release(10.5, out)
    assert [(e[4], e[5]) for e in out] == [(b"s1", b"c" * 8)]
    assert len(wait) == 2
    # A released exchange frees its place at once, and the queue keeps its bound.
    assert wait.hold(exchanges[1], Ctx(), ("127.0.0.1", 5), now=10.6)
    assert len(wait._held) == 3
    out.clear()
    wait.release(11.05, out)
    assert [e[4] for e in out] == [b"s0"]
    out.clear()
    wait.release(12.0, out)
    assert sorted(e[4] for e in out) == [b"s1", b"s2"]
    assert len(wait) == 0 and not wait._waiting and not wait._held
    assert counts == {"link_wait_linked": 1, "link_wait_expired": 3, "link_wait_overflow": 1}


def server_exchange(router, linker, ts: int) -> list:
    return linker.exchanges(router.process([server(INGRESS, REQUEST, ts),
                                            server(EGRESS, RESPONSE, ts + 100)]))


def test_once_a_loopback_client_never_came_its_connection_stops_waiting_until_it_shows(
        monkeypatch):
    router, linker = ProtocolRouter(), ExchangeLinker(link_wait_s=0.05)
    assert server_exchange(router, linker, 1100) == []          # held: the client may come
    time.sleep(0.06)
    assert [e.kind for e in linker.release_held()] == [KIND_SERVER]
    assert linker.counts["link_wait_expired"] == 1
    # An untraced peer (a load generator): later exchanges leave at once, counted.
    for ts in (2100, 3100):
        assert [e.kind for e in server_exchange(router, linker, ts)] == [KIND_SERVER]
    assert linker.counts["link_wait_skipped"] == 2
    assert len(linker.client_wait) == 0
    # After a while one waits again, in case the port now belongs to a traced client.
    monkeypatch.setattr("agent.spans.client_wait.UNTRACED_FOR_S", 0.0)
    assert server_exchange(router, linker, 4100) == []
    assert linker.counts["link_wait_skipped"] == 2
    linker.release_held(flush=True)


def test_a_client_record_on_a_connection_thought_untraced_brings_the_wait_back():
    router, linker = ProtocolRouter(), ExchangeLinker(link_wait_s=0.05)
    assert server_exchange(router, linker, 1100) == []
    time.sleep(0.06)
    linker.release_held()
    assert [e.kind for e in server_exchange(router, linker, 2100)] == [KIND_SERVER]
    # The client's record came after all (later than the wait): it is traced.
    linker.exchanges(router.process([client(EGRESS, REQUEST, 3000),
                                     client(INGRESS, RESPONSE, 3300)]))
    assert len(server_exchange(router, linker, 4100)) == 1      # takes that client's link
    assert server_exchange(router, linker, 5100) == []          # waits for its client again
    second = linker.exchanges(router.process([client(EGRESS, REQUEST, 5000),
                                              client(INGRESS, RESPONSE, 5300)]))
    by_kind = {e.kind: e for e in second}
    assert by_kind[KIND_SERVER].parent_id == by_kind[KIND_CLIENT].span_id
    assert linker.counts["link_wait_skipped"] == 1 and linker.counts["link_wait_linked"] == 1
