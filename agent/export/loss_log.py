"""Rate-limited log lines about spans lost at export.

The counters (otel_ebpf_spans_dropped_queue_full_total,
otel_ebpf_spans_export_failed_total) say how many spans were lost; a user
reading the agent's log during an incident must also see that it happens,
since when, and when it stops, without one line per dropped batch.  So the
first loss of an episode is logged at once, further losses at most once per
interval as one line with the count since the previous line, and a last line
when spans flow again: an export succeeded and an interval passed without
loss.
"""
from __future__ import annotations

import logging
import time

log = logging.getLogger(__name__)

LOG_INTERVAL_S = 5.0

REASONS = {
    "queue_full": "export queue full: the collector is slower than the traffic, or unreachable",
    "export_failed": "export failed after retries",
}


class LossLog:
    """Not thread-safe: the exporter calls it under its own lock."""

    def __init__(self, interval_s: float = LOG_INTERVAL_S, clock=time.monotonic,
                 wall_clock=time.time):
        self.interval_s = interval_s
        self._clock = clock
        self._wall_clock = wall_clock
        self._pending: dict[str, int] = {}
        self._episode_lost = 0
        self._episode_start_wall = 0.0
        self._last_line = float("-inf")
        self._last_loss = float("-inf")
        self._exported_since_loss = False
        self.detail = ""   # the sink's last error, shown with export failures

    @property
    def losing(self) -> bool:
        return self._episode_lost > 0

    def lost(self, reason: str, spans: int) -> None:
        if spans <= 0:
            return
        now = self._clock()
        if not self._episode_lost:
            self._episode_start_wall = self._wall_clock()
        self._pending[reason] = self._pending.get(reason, 0) + spans
        self._episode_lost += spans
        self._last_loss = now
        self._exported_since_loss = False
        self.tick(now)

    def exported(self) -> None:
        self._exported_since_loss = True

    def tick(self, now: float | None = None) -> None:
        if not self._episode_lost:
            return
        now = self._clock() if now is None else now
        if now - self._last_line < self.interval_s:
            return
        if self._pending:
            causes = "; ".join(f"{count} ({REASONS.get(reason, reason)})"
                               for reason, count in sorted(self._pending.items()))
            detail = f" [{self.detail}]" if "export_failed" in self._pending and self.detail else ""
            log.warning("spans lost at export: %s%s; %d lost since %s",
                        causes, detail, self._episode_lost, self._since())
            self._pending.clear()
            self._last_line = now
        elif self._exported_since_loss and now - self._last_loss >= self.interval_s:
            log.warning("span export recovered: no spans lost for %.0f s; %d lost since %s",
                        now - self._last_loss, self._episode_lost, self._since())
            self._episode_lost = 0
            self._last_line = now

    def _since(self) -> str:
        return time.strftime("%H:%M:%S", time.localtime(self._episode_start_wall))
