"""Sampler: OpenTelemetry-compatible ratio and parent-based decisions."""
from __future__ import annotations

import random
import time

import pytest

from agent.spans.sampling import SAMPLERS, Sampler, ratio_bound
from agent.spans.model import KIND_SERVER, STATUS_ERROR, STATUS_UNSET, Span


def span(trace_id: bytes, parent: bytes = b"", flags: int = 1, status: int = STATUS_UNSET) -> Span:
    return Span(trace_id, b"\x01" * 8, parent, "GET", KIND_SERVER, 1, 2, [], None,
                status_code=status, trace_flags=flags)


def random_ids(n: int, seed: int = 7) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.getrandbits(128).to_bytes(16, "big") for _ in range(n)]


@pytest.mark.parametrize("ratio", [0.0, 0.01, 0.1, 0.25, 0.5, 0.9, 1.0])
def test_ratio_statistics(ratio):
    n = 20000
    sampler = Sampler(ratio)
    kept = sum(sampler.should_export(span(t)) for t in random_ids(n))
    # Binomial: 5 standard deviations (plus one span) of tolerance.
    tolerance = 5 * (n * ratio * (1 - ratio)) ** 0.5 + 1
    assert abs(kept - n * ratio) <= tolerance, (kept, n * ratio)
    assert sampler.sampled_out == n - kept
    if ratio == 0.0:
        assert kept == 0
    if ratio == 1.0:
        assert kept == n


def test_same_decision_as_opentelemetry_sdk():
    from opentelemetry.sdk.trace.sampling import Decision, TraceIdRatioBased
    for ratio in (0.001, 0.3, 0.77):
        ours = Sampler(ratio, parent_based=False)
        theirs = TraceIdRatioBased(ratio)
        assert ours.bound == theirs.bound
        for trace_id in random_ids(3000, seed=int(ratio * 1000)):
            expected = theirs.should_sample(None, int.from_bytes(trace_id, "big"), "x").decision \
                == Decision.RECORD_AND_SAMPLE
            assert ours.should_export(span(trace_id)) is expected


def test_decision_uses_lower_eight_bytes_only():
    sampler = Sampler(0.5)
    low = (ratio_bound(0.5) - 1).to_bytes(8, "big")
    high = ratio_bound(0.5).to_bytes(8, "big")
    assert sampler.should_export(span(b"\xff" * 8 + low))
    assert sampler.should_export(span(b"\x00" * 8 + low))
    assert not sampler.should_export(span(b"\x00" * 8 + high))


def test_all_spans_of_a_trace_agree_across_nodes():
    """Two agents with the same ratio decide every root of a trace alike."""
    a, b = Sampler(0.3), Sampler(0.3)
    for trace_id in random_ids(2000):
        assert a.should_export(span(trace_id)) == b.should_export(span(trace_id))
        flags = a.root_flags(trace_id)
        # A local child carrying the root's flags agrees with the root.
        assert a.should_export(span(trace_id, parent=b"\x02" * 8, flags=flags)) == \
            a.should_export(span(trace_id))


def test_remote_parent_flag_is_honoured():
    never = Sampler(0.0)
    always = Sampler(1.0)
    trace_id = (2 ** 64 - 1).to_bytes(16, "big")   # dropped by any ratio < 1
    assert never.should_export(span(trace_id, parent=b"\x09" * 8, flags=1))
    assert not always.should_export(span(trace_id, parent=b"\x09" * 8, flags=0))
    # Only bit 0 counts.
    assert not always.should_export(span(trace_id, parent=b"\x09" * 8, flags=0x02))
    assert always.should_export(span(trace_id, parent=b"\x09" * 8, flags=0x03))
    # remote_parent=False: the parent is local, decide as a root.
    assert not never.should_export(span(trace_id, parent=b"\x09" * 8, flags=1), remote_parent=False)


def test_non_parent_based_ignores_parent_flags():
    sampler = Sampler(1.0, parent_based=False)
    assert sampler.should_export(span(random_ids(1)[0], parent=b"\x09" * 8, flags=0))
    assert sampler.samples_everything


def test_errors_kept_unless_disabled():
    trace_id = (2 ** 64 - 1).to_bytes(16, "big")
    keep = Sampler(0.0)
    assert keep.should_export(span(trace_id, status=STATUS_ERROR))
    assert keep.should_export(span(trace_id, parent=b"\x01" * 8, flags=0, status=STATUS_ERROR))
    assert keep.kept_errors == 2 and keep.sampled_out == 0
    drop = Sampler(0.0, keep_errors=False)
    assert not drop.should_export(span(trace_id, status=STATUS_ERROR))
    assert drop.sampled_out == 1


def test_filter_keeps_order():
    sampler = Sampler(0.5)
    spans = [span(t) for t in random_ids(100)]
    kept = sampler.filter(spans)
    assert kept == [s for s in spans if Sampler(0.5).should_export(s)]
    assert sampler.sampled_out == 100 - len(kept)


def test_default_sampler_filters_a_batch_as_it_decides_each_span():
    """parentbased_always_on: a batch whose spans are all sampled goes out
    whole; one unsampled child among them is dropped, and counted, while
    roots and error spans stay."""
    ids = random_ids(6)
    sampled = [span(ids[0]), span(ids[1], parent=b"\x09" * 8, flags=1)]
    sampler = Sampler.from_environment({})
    assert sampler.filter(sampled) == sampled and sampler.sampled_out == 0
    mixed = sampled + [span(ids[2], parent=b"\x09" * 8, flags=0),
                       span(ids[3], flags=0),      # a root: decided by its id, kept
                       span(ids[4], parent=b"\x09" * 8, flags=0, status=STATUS_ERROR),
                       span(ids[5], parent=b"\x09" * 8, flags=0x02)]
    decide = Sampler.from_environment({})
    expected = [s for s in mixed if decide.should_export(s)]
    assert sampler.filter(mixed) == expected == [mixed[0], mixed[1], mixed[3], mixed[4]]
    assert sampler.sampled_out == decide.sampled_out == 2
    assert sampler.kept_errors == decide.kept_errors == 1


def test_invalid_ratio():
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError):
            Sampler(bad)


@pytest.mark.parametrize("env, name, ratio, parent_based", [
    ({}, "parentbased_always_on", 1.0, True),
    ({"OTEL_TRACES_SAMPLER": ""}, "parentbased_always_on", 1.0, True),
    ({"OTEL_TRACES_SAMPLER": "always_on"}, "always_on", 1.0, False),
    ({"OTEL_TRACES_SAMPLER": "always_off"}, "always_off", 0.0, False),
    ({"OTEL_TRACES_SAMPLER": "parentbased_always_off"}, "parentbased_always_off", 0.0, True),
    ({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.25"}, "traceidratio", 0.25, False),
    ({"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": " 0.5 "},
     "parentbased_traceidratio", 0.5, True),
    ({"OTEL_TRACES_SAMPLER": "parentbased_traceidratio"}, "parentbased_traceidratio", 1.0, True),
    ({"OTEL_TRACES_SAMPLER": "TraceIdRatio", "OTEL_TRACES_SAMPLER_ARG": "0"}, "traceidratio", 0.0, False),
    # The argument is ignored by samplers that take none.
    ({"OTEL_TRACES_SAMPLER": "always_on", "OTEL_TRACES_SAMPLER_ARG": "junk"}, "always_on", 1.0, False),
])
def test_from_environment(env, name, ratio, parent_based):
    sampler = Sampler.from_environment(env)
    assert (sampler.name, sampler.ratio, sampler.parent_based) == (name, ratio, parent_based)


def test_parentbased_always_off_still_follows_sampled_parent():
    sampler = Sampler.from_environment({"OTEL_TRACES_SAMPLER": "parentbased_always_off"})
    trace_id = random_ids(1)[0]
    assert not sampler.should_export(span(trace_id))
    assert sampler.should_export(span(trace_id, parent=b"\x05" * 8, flags=1))


@pytest.mark.parametrize("env, variable", [
    ({"OTEL_TRACES_SAMPLER": "jaeger_remote"}, "OTEL_TRACES_SAMPLER"),
    ({"OTEL_TRACES_SAMPLER": "ratio"}, "OTEL_TRACES_SAMPLER"),
    ({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "half"}, "OTEL_TRACES_SAMPLER_ARG"),
    ({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "1.5"}, "OTEL_TRACES_SAMPLER_ARG"),
    ({"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "-1"}, "OTEL_TRACES_SAMPLER_ARG"),
    ({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "nan"}, "OTEL_TRACES_SAMPLER_ARG"),
])
def test_from_environment_errors(env, variable):
    with pytest.raises(ValueError) as info:
        Sampler.from_environment(env)
    message = str(info.value)
    assert variable in message
    if variable == "OTEL_TRACES_SAMPLER":
        for allowed in SAMPLERS:
            assert allowed in message
    else:
        assert "between 0 and 1" in message


def test_cost_per_span():
    sampler = Sampler(0.5)
    spans = [span(t) for t in random_ids(20000)]
    started = time.perf_counter()
    sampler.filter(spans)
    per_span_us = (time.perf_counter() - started) / len(spans) * 1e6
    print(f"sampler: {per_span_us:.3f} µs/span")
    assert per_span_us < 20
