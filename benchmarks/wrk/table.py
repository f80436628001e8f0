"""The rows of results and the table printed from them: for each (service,
config, rate), its median-p99 round against the baseline's."""
from __future__ import annotations

import random
import statistics
from dataclasses import dataclass, field

# Rows whose spans reach the receiver (counted there, not by the tracer).
EXPORTING_CONFIGS = ("agent", "agent-records", "sdk")


@dataclass
class Row:
    service: str
    config: str
    rate: int
    achieved: float = 0.0
    completed: int = 0
    failed: int = 0
    p50_us: float = float("nan")
    p99_us: float = float("nan")
    p999_us: float = float("nan")
    svc_cpu_s: float = 0.0
    tracer_cpu_s: float = float("nan")
    spans_built: float = float("nan")
    spans_received: float = float("nan")
    kernel_lost: float = float("nan")
    rss_peak: float = float("nan")
    pss_end: float = float("nan")       # summed PSS after the load
    receiver_cpu_s: float = float("nan")
    host_busy: float = float("nan")
    host_steal: float = float("nan")
    programs_s: float = float("nan")    # in the tracer's BPF programs (--program-time)
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)


def fmt(value, spec: str, missing: str = "-") -> str:
    if value is None or (isinstance(value, float) and value != value):
        return missing
    return format(value, spec)


def ratio(value: float, base: float) -> str:
    if not base or value != value or base != base:
        return "-"
    return f"x{value / base:.2f}"


def median_rounds(rows: list[Row]) -> tuple[list[Row], dict]:
    """One row per (service, config, rate): the round with the median p99;
    and the p99s of every round, by the same key."""
    rounds: dict[tuple, list[Row]] = {}
    for r in rows:
        rounds.setdefault((r.service, r.config, r.rate), []).append(r)
    chosen, p99s = [], {}
    for key, group in rounds.items():
        ordered = sorted(group, key=lambda r: r.p99_us if r.p99_us == r.p99_us else float("inf"))
        chosen.append(ordered[(len(ordered) - 1) // 2])
        p99s[key] = [r.p99_us for r in group]
    return chosen, p99s


def p99_ratio_interval(p99s: list[float], base_p99s: list[float], resamples: int = 2000,
                       level: float = 0.95) -> tuple[float, float] | None:
    """A bootstrap interval for median(p99s) / median(base_p99s) over the
    rounds.  Round i of both ran in the same minutes (rounds interleave), so
    rounds are drawn in pairs: a slow minute of the machine stays on both
    sides.  None below three rounds."""
    pairs = [(p, b) for p, b in zip(p99s, base_p99s) if p == p and b == b]
    if len(pairs) < 3:
        return None
    draw = random.Random(0)
    ratios = []
    for _ in range(resamples):
        sample = draw.choices(pairs, k=len(pairs))
        ratios.append(statistics.median(p for p, _ in sample)
                      / statistics.median(b for _, b in sample))
    ratios.sort()
    tail = round(resamples * (1 - level) / 2)
    return ratios[tail], ratios[resamples - 1 - tail]


def print_table(rows: list[Row], p99s: dict) -> None:
    baselines = {(r.service, r.rate): r for r in rows if r.config == "baseline"}
    header = ["service", "config", "rate", "achieved", "p50us", "p99us", "p99 rounds us", "p99.9us",
              "p50x", "p99x", "p99x 95%", "p99.9x", "+p50us", "+p99us", "svcCPU ms/1kreq",
              "tracer cores", "tracer CPU s/1k spans", "kernel us/req", "peakRSS MB", "PSS MB", "spans/req",
              "lost%", "kern lost", "steal%"]
    lines = [header]
    for r in rows:
        base = baselines.get((r.service, r.rate))
        spans = r.spans_received if r.config in EXPORTING_CONFIGS else r.spans_built
        spans_per_req = spans / r.completed if r.completed and spans == spans else float("nan")
        lost = (1 - spans_per_req) * 100 if spans_per_req == spans_per_req else float("nan")
        per_1k_spans = (r.tracer_cpu_s / spans * 1000
                        if spans == spans and spans and r.tracer_cpu_s == r.tracer_cpu_s else float("nan"))
        if r.config == "hooks":
            per_1k_spans = float("nan")
        interval = (p99_ratio_interval(p99s[(r.service, r.config, r.rate)],
                                       p99s[(r.service, "baseline", r.rate)])
                    if base and r is not base else None)
        lines.append([
            r.service, r.config, str(r.rate), f"{r.achieved:.0f}",
            fmt(r.p50_us, ".0f"), fmt(r.p99_us, ".0f"),
            " ".join(fmt(p, ".0f") for p in p99s[(r.service, r.config, r.rate)]),
            fmt(r.p999_us, ".0f"),
            ratio(r.p50_us, base.p50_us) if base else "-",
            ratio(r.p99_us, base.p99_us) if base else "-",
            f"{interval[0]:.2f}-{interval[1]:.2f}" if interval else "-",
            ratio(r.p999_us, base.p999_us) if base else "-",
            fmt(r.p50_us - base.p50_us, "+.0f") if base else "-",
            fmt(r.p99_us - base.p99_us, "+.0f") if base else "-",
            fmt(r.svc_cpu_s / r.completed * 1e6 if r.completed else float("nan"), ".1f"),
            fmt(r.tracer_cpu_s / r.seconds if r.seconds else float("nan"), ".2f"),
            fmt(per_1k_spans, ".3f"),
            fmt(r.programs_s / r.completed * 1e6 if r.completed else float("nan"), ".2f"),
            fmt(r.rss_peak / 1e6 if r.rss_peak == r.rss_peak else float("nan"), ".0f"),
            fmt(r.pss_end / 1e6 if r.pss_end == r.pss_end else float("nan"), ".0f"),
            fmt(spans_per_req, ".3f"),
            fmt(lost, ".2f"),
            fmt(r.kernel_lost, ".0f"),
            fmt(r.host_steal * 100, ".1f"),
        ])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for n, line in enumerate(lines):
        print("  ".join(cell.rjust(w) if i > 1 else cell.ljust(w)
                        for i, (cell, w) in enumerate(zip(line, widths))))
        if n == 0:
            print("  ".join("-" * w for w in widths))
