"""The counters the stages declare (agent/counters.py) are what the agent
exports: users' dashboards read these names and labels."""
from __future__ import annotations

from agent.protocols.router import ProtocolRouter
from agent.runtime.metrics import PREFIX, declared_families
from agent.spans.builder import ExchangeLinker

UNLABELLED = (
    "requests_without_response responses_without_request http_heads_truncated "
    "messages_incomplete records_malformed http2_events_without_preface http2_streams_evicted "
    "http2_streams_unfinished http2_streams_reset http2_streams_without_request "
    "http2_header_blocks_partial http2_decoder_resyncs sql_queries_without_response "
    "sql_responses_without_query sql_framing_lost sql_tail_recoveries sql_fallback_completions "
    "sql_events_without_direction sql_events_skipped_resync sql_tls_connections "
    "sql_compressed_connections sql_statements_evicted sql_unknown_statements "
    "sql_executes_skipped http2_streams_refused http_records_misread").split()
LABELLED = {
    "events_skipped": ("reason", {"resync", "unknown_protocol"}),
    "connection_events": ("event", {"opened", "closed", "evicted", "expired"}),
    "http_messages": ("type", {"request", "response"}),
    "trace_context_invalid": ("header", {"traceparent", "tracestate"}),
}


def exported():
    router, linker = ProtocolRouter(), ExchangeLinker()
    return {family.name: family for family in
            declared_families(router.counter_values() + linker.counter_values())}


def test_names_and_labels_stay():
    families = exported()
    for name in UNLABELLED:
        family = families[f"{PREFIX}_{name}"]
        assert [s.labels for s in family.samples] == [{}], name
    for name, (label, values) in LABELLED.items():
        family = families[f"{PREFIX}_{name}"]
        assert {s.labels[label] for s in family.samples} == values, name


def test_each_metric_declared_once_with_one_help():
    router, linker = ProtocolRouter(), ExchangeLinker()
    declared = [c for c, _ in router.counter_values() + linker.counter_values()]
    helps: dict = {}
    for c in declared:
        assert helps.setdefault(c.metric.name, c.metric.help) == c.metric.help, c.metric.name
    assert len({c.key for c in declared}) == len(declared)


def test_values_come_from_the_counts():
    router = ProtocolRouter()
    router.process([b"short"])
    family = {f.name: f for f in declared_families(router.counter_values())}
    assert family[f"{PREFIX}_records_malformed"].samples[0].value == 1
