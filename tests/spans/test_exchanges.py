"""Exchanges: one declared shape per kind, led by its tag, built by the
linker from the handlers' work items; the span factory builds the same
spans from them as from the plain tuples span workers receive."""
from __future__ import annotations

import os
import pickle

from agent.capture.recording import read_records
from agent.protocols.router import ProtocolRouter
from agent.spans import cache, db, grpc, http, http_records
from agent.spans.builder import BUILDERS, ExchangeLinker, SpanFactory
from agent.spans.redact import Redactor
from agent.spans.resources import ResourceCache
from protocols.test_h2_pipeline import records as h2_records
from protocols.sql_replay import MY, PG, Replay, writes

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures")
SHAPES = {http.TAG: http.HttpExchange, grpc.TAG: grpc.GrpcExchange, db.TAG: db.DbExchange,
          cache.TAG: cache.CacheExchange, http_records.TAG: http_records.RecordExchange}


def all_kinds():
    router, linker = ProtocolRouter(), ExchangeLinker()
    exchanges = []
    batches = [list(read_records(os.path.join(FIXTURES, "events", "http1_proxy.events"))),
               h2_records("grpc_calls"), h2_records("nghttp_nginx")]
    for protocol, name in ((PG, "psycopg_errors"), (MY, "pymysql_text")):
        replay = Replay(protocol, "client", None)
        replay.extend(writes(protocol, name))
        batches.append(replay.records)
    for batch in batches:
        exchanges += linker.exchanges(router.process(batch))
    return exchanges


def view(span):
    return (span.name, span.kind, span.status_code, span.trace_id, span.span_id,
            span.parent_span_id, span.start_ns, sorted(map(repr, span.attributes)))


def test_one_shape_per_kind_led_by_its_tag():
    exchanges = all_kinds()
    assert set(BUILDERS) == set(SHAPES)
    tags = {e.tag for e in exchanges}
    assert tags == {"http", "grpc", "db"}
    for e in exchanges:
        shape = SHAPES[e.tag]
        assert type(e) is shape and e._fields[0] == "tag" and len(e) == len(shape._fields)
    versions = {e.version for e in exchanges if e.tag == "http"}
    assert versions == {"1.1", "2"}        # plain HTTP/2 uses the HTTP builder
    assert {e.system for e in exchanges if e.tag == "db"} == {"postgresql", "mariadb"}


def test_plain_tuples_across_the_process_boundary_build_the_same_spans():
    exchanges = all_kinds()
    factory = SpanFactory(ResourceCache(host_attributes=[]), Redactor())
    named = factory.spans(exchanges)
    received = pickle.loads(pickle.dumps([tuple(e) for e in exchanges], pickle.HIGHEST_PROTOCOL))
    plain = factory.spans(received)
    assert [view(s) for s in plain] == [view(s) for s in named]
    assert factory.spans_server + factory.spans_client == 2 * len(exchanges)
