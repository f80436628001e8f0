"""Span templates: a span's name, kind, attributes and status depend only on
its request's fields and its connection's (its shape), so a shape seen
again is kept as a SpanTemplate, built once with routes and redaction
applied, and its spans become TemplatedSpans of ids, times, resource and
template, which the OTLP encoder and the request metrics read through the
template's cached forms.  A shape's first span is a plain Span: paths with
ids in them never repeat, and a template costs more to make than a span.
Redactions a template's building made are counted again for each of its
spans, as building each span would have counted them.

Used by the HTTP builders of both paths (agent/spans/http.py for the
payload path's exchanges, agent/spans/http_records.py for the probes'
exchange records), each with the shape its exchanges carry.
"""
from __future__ import annotations

from agent.spans.model import SpanTemplate, TemplatedSpan

# Distinct shapes kept per builder (a dict cleared when full: a workload's
# hot shapes refill it at once).
MAX_TEMPLATES = 4096
_UNSEEN = object()
new_span = tuple.__new__


class ShapeTemplates:
    """`plain(exchange)` builds an exchange's span without a template; the
    exchange's first ten fields are EXCHANGE_HEAD's (agent/spans/model.py),
    and its shape is every field after them, with its kind (e[1]) when
    `with_kind` (the record path's connection fields hold the kind).  A
    builder hands out this object's build itself: no call in between."""

    def __init__(self, factory, plain, with_kind: bool):
        self.factory = factory
        self.resources = factory.resources
        self.redaction_counts = factory.redactor.counts
        self.plain = plain
        self.with_kind = with_kind
        # shape -> its template, or None for a shape seen once.
        self.templates: dict[tuple, SpanTemplate | None] = {}
        # (id, id) of a shape's two objects -> (its template, the objects),
        # for build_shared.
        self.shared: dict[tuple, tuple] = {}

    def build(self, e: tuple):
        shape = (e[1],) + e[10:] if self.with_kind else e[10:]
        templates = self.templates
        template = templates.get(shape, _UNSEEN)
        if template is _UNSEEN:
            if len(templates) >= MAX_TEMPLATES:
                templates.clear()
            templates[shape] = None
            return self.plain(e)
        if template is None:
            template = templates[shape] = self._template(e)
        elif template.redactions:
            self._count_redactions(template)
        offset = self.factory.clock_offset_ns
        return new_span(TemplatedSpan, (e[3], e[4], e[5], e[7], e[8] + offset, e[9] + offset,
                                        e[6], self.resources.get(e[2]), template))

    def build_shared(self, e: tuple):
        """build, for exchanges of two shape fields (e[10], e[11]) that
        exchanges of one shape share as objects (the record path's
        connection and request tuples): a template is found by the objects'
        identities, with no hash of what they hold.  The entry keeps the
        objects alive, so their identities are not reused while it is kept;
        a shape whose objects do not repeat goes the way of build."""
        first, second = e[10], e[11]
        found = self.shared.get((id(first), id(second)))
        if found is None:
            span = self.build(e)
            if span.__class__ is TemplatedSpan:
                shared = self.shared
                if len(shared) >= MAX_TEMPLATES:
                    shared.clear()
                shared[(id(first), id(second))] = (span[8], first, second)
            return span
        template = found[0]
        if template.redactions:
            self._count_redactions(template)
        offset = self.factory.clock_offset_ns
        return new_span(TemplatedSpan, (e[3], e[4], e[5], e[7], e[8] + offset, e[9] + offset,
                                        e[6], self.resources.get(e[2]), template))

    def _count_redactions(self, template: SpanTemplate) -> None:
        counts = self.redaction_counts
        for rule, count in template.redactions:
            counts[rule] += count

    def _template(self, e: tuple) -> SpanTemplate:
        """The span `plain` builds for this shape, as a template."""
        counts = self.redaction_counts
        before = dict(counts)
        span = self.plain(e)
        return SpanTemplate(span.name, span.kind, span.attributes, span.status_code,
                            span.status_message,
                            tuple((rule, counts[rule] - before[rule]) for rule in counts
                                  if counts[rule] != before[rule]))
