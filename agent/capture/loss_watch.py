"""The log side of what the probes could not deliver.  /metrics counts it
(otel_ebpf_kernel_events_lost_total, ..._kernel_calls_untracked_total,
..._kernel_http_exchanges_shed_total); a user reading the agent's log
during an incident sees it too, rate-limited (agent/loss_log.py): records
the probes could not write, and HTTP/1.x exchanges they shed whole, each in
its own unit.  The counters are read from the kernel's maps at the
pipeline's housekeeping, a few map reads every couple of seconds."""
from __future__ import annotations

from agent.capture.records import PROBE_STATS_FIELDS
from agent.loss_log import LossLog

_LOST = PROBE_STATS_FIELDS.index("lost")
_UNTRACKED = PROBE_STATS_FIELDS.index("untracked")

SHED_REASONS = {
    "ring_fill": "the ring buffer was past its shed mark when their request came",
}


def record_loss_reasons(hint_http_exchanges: bool) -> dict[str, str]:
    """What each reason a record is lost for means, and what to do about it."""
    ring_full = ("ring buffer full: the agent drained it slower than the probes wrote "
                 "(a larger --ring-buffer-size absorbs bursts")
    if hint_http_exchanges:
        ring_full += (
            "; --http-exchanges on, or by-load, makes HTTP/1.x exchanges cheaper to process")
    ring_full += ")"
    return {
        "ring_full": ring_full,
        "untracked": "calls not followed to their end, their data not written: the table of "
                     "calls in flight was full",
    }


class KernelLossWatch:
    def __init__(self, capture):
        self.capture = capture
        hint = not capture.http_exchanges and capture.front_end.pairs_http_exchanges
        self.records = LossLog("records lost in the kernel",
                               "kernel capture recovered: no records lost",
                               record_loss_reasons(hint))
        self.shed = LossLog("HTTP/1.x exchanges shed whole (neither span written)",
                            "exchange shedding stopped: none shed",
                            SHED_REASONS) if capture.http_exchanges else None
        # The counts the last check saw: the first check logs what was
        # lost since the capture began, as the counters count it.
        self._seen: tuple[dict[str, int], dict[str, int]] = ({}, {})

    def _counts(self) -> tuple[dict[str, int], dict[str, int]]:
        """(records lost, exchanges shed), by reason, since the capture
        began."""
        stats = self.capture.probe_stats().values()
        records = {"ring_full": sum(s[_LOST] for s in stats),
                   "untracked": sum(s[_UNTRACKED] for s in stats)}
        return records, self.capture.http_shed() if self.shed is not None else {}

    def check(self) -> None:
        """Log what was lost since the last check (rate-limited), or note
        that nothing was."""
        seen_records, seen_shed = self._seen
        records, shed = self._seen = self._counts()
        _account(self.records, records, seen_records)
        if self.shed is not None:
            _account(self.shed, shed, seen_shed)


def _account(loss_log: LossLog, totals: dict[str, int], seen: dict[str, int]) -> None:
    lost = {reason: count - seen.get(reason, 0) for reason, count in totals.items()}
    if any(count > 0 for count in lost.values()):
        for reason, count in lost.items():
            loss_log.lost(reason, count)
    else:
        loss_log.delivered()
    loss_log.tick()
