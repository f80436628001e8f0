"""Rate-limited log lines about loss a user must act on: spans lost at
export (agent/export/batch.py) or at a busy span worker
(agent/runtime/span_worker.py), records the probes could not write and
exchanges they shed (agent/capture/loss_watch.py).

The counters on /metrics say how much was lost; a user reading the agent's
log during an incident must also see that it happens, since when, and when
it stops, without one line per lost batch.  So the first loss of an episode
is logged at once, further losses at most once per interval as one line
with the count since the previous line, and a last line when things flow
again: something was delivered and an interval passed without loss.  The
episode's total in that last line reconciles with the counters.
"""
from __future__ import annotations

import logging
import time

log = logging.getLogger(__name__)

LOG_INTERVAL_S = 5.0


class LossLog:
    """One kind of loss, in one unit: `subject` heads its loss lines
    ("spans lost at export"), `recovered` its episode's last line ("span
    export recovered: no spans lost"), and `reasons` says what each reason
    counted under lost() means.  Not thread-safe: its user calls it under its own
    lock, or from one thread."""

    def __init__(self, subject: str, recovered: str, reasons: dict[str, str],
                 detail_reasons: tuple[str, ...] = (), interval_s: float = LOG_INTERVAL_S,
                 clock=time.monotonic, wall_clock=time.time):
        self.subject = subject
        self.recovered = recovered
        self.reasons = reasons
        self.interval_s = interval_s
        self._clock = clock
        self._wall_clock = wall_clock
        self._pending: dict[str, int] = {}
        self._episode_lost = 0
        self._episode_start_wall = 0.0
        self._last_line = float("-inf")
        self._last_loss = float("-inf")
        self._delivered_since_loss = False
        # Shown with the lines that count a loss of one of detail_reasons
        # (the export sink's last error with failed exports).
        self.detail = ""
        self.detail_reasons = detail_reasons

    @property
    def losing(self) -> bool:
        return self._episode_lost > 0

    def lost(self, reason: str, count: int) -> None:
        if count <= 0:
            return
        now = self._clock()
        if not self._episode_lost:
            self._episode_start_wall = self._wall_clock()
        self._pending[reason] = self._pending.get(reason, 0) + count
        self._episode_lost += count
        self._last_loss = now
        self._delivered_since_loss = False
        self.tick(now)

    def delivered(self) -> None:
        self._delivered_since_loss = True

    def tick(self, now: float | None = None) -> None:
        if not self._episode_lost:
            return
        now = self._clock() if now is None else now
        if now - self._last_line < self.interval_s:
            return
        if self._pending:
            causes = "; ".join(f"{count} ({self.reasons.get(reason, reason)})"
                               for reason, count in sorted(self._pending.items()))
            detail = f" [{self.detail}]" if self.detail and any(
                reason in self._pending for reason in self.detail_reasons) else ""
            log.warning("%s: %s%s; %d lost since %s", self.subject, causes, detail,
                        self._episode_lost, self._since())
            self._pending.clear()
            self._last_line = now
        elif self._delivered_since_loss and now - self._last_loss >= self.interval_s:
            log.warning("%s for %.0f s; %d lost since %s", self.recovered,
                        now - self._last_loss, self._episode_lost, self._since())
            self._episode_lost = 0
            self._last_line = now

    def _since(self) -> str:
        return time.strftime("%H:%M:%S", time.localtime(self._episode_start_wall))
