"""A client behind a Service address and the server pod it reached, both
traced on one node, through ProtocolRouter -> ExchangeLinker ->
SpanFactory: the router lists the new client connection, the
connection tracker's answer (here written as the kernel gives it, the real
look-up is tests/kernel/test_nat.py) translates it, and the two spans link."""
from __future__ import annotations


from agent.capture.records import C
from agent.protocols.router import ProtocolRouter
from agent.spans.builder import SpanBuilder
from agent.spans.model import KIND_CLIENT, KIND_SERVER
from agent.spans.redact import Redactor
from agent.spans.resources import ResourceCache
from event_records import http1_record

CLIENT = ("10.0.1.2", 50123)
SERVICE = ("10.96.0.10", 80)
POD = ("10.0.2.7", 8080)
REQUEST = b"GET /cart HTTP/1.1\r\nHost: cart\r\n\r\n"
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def _exchange():
    egress, ingress = C["DIRECTION_EGRESS"], C["DIRECTION_INGRESS"]
    client, server = C["ROLE_CLIENT"], C["ROLE_SERVER"]
    return [http1_record(1, 100, client, egress, REQUEST, 1000, CLIENT, SERVICE),
            http1_record(2, 200, server, ingress, REQUEST, 1100, POD, CLIENT),
            http1_record(2, 200, server, egress, RESPONSE, 1200, POD, CLIENT),
            http1_record(1, 100, client, ingress, RESPONSE, 1300, CLIENT, SERVICE)]


def _spans(translate: bool):
    router = ProtocolRouter()
    router.new_clients = []
    builder = SpanBuilder(ResourceCache(host_attributes=[]), Redactor())
    items = router.process(_exchange())
    assert [(c.remote_addr, c.remote_port) for c in router.new_clients] == [SERVICE]
    if translate:
        for conn in router.new_clients:
            conn.translated(POD[0], POD[1], CLIENT[0], CLIENT[1])
    spans = builder.build(items)
    client = next(s for s in spans if s.kind == KIND_CLIENT)
    server = next(s for s in spans if s.kind == KIND_SERVER)
    return client, server, builder


def test_translated_client_links_to_the_pod_and_names_both_addresses():
    client, server, builder = _spans(translate=True)
    assert server.trace_id == client.trace_id
    assert server.parent_span_id == client.span_id
    assert builder.linker.counts["linked_same_node"] == 1
    attributes = dict(client.attributes)
    assert attributes["server.address"] == "cart"             # the Host header, as asked
    assert attributes["url.full"] == "http://cart/cart"
    assert (attributes["network.peer.address"], attributes["network.peer.port"]) == POD


def test_untranslated_client_keeps_the_service_and_does_not_link():
    client, server, builder = _spans(translate=False)
    assert server.trace_id != client.trace_id
    assert builder.linker.counts["linked_same_node"] == 0
    attributes = dict(client.attributes)
    assert (attributes["network.peer.address"], attributes["network.peer.port"]) == SERVICE


def test_without_a_resolver_the_router_keeps_no_list():
    router = ProtocolRouter()
    router.process(_exchange())
    assert router.new_clients is None
