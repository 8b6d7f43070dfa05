"""What the benchmarks compute from a run: efficiency, waste, fairness, peaks, checks.

Pure functions over numbers, statuses and the provider's call records; no clocks and
no executors. The scenarios (`bench/scenarios.py`) and the provider's report
(`bench/provider.py`) use them.
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from bench.impls import COMPLETED, COMPLETED_WITH_RETRIES, DID_NOT_RUN, FAILED

if TYPE_CHECKING:
    from bench.provider import CallRecord, ProviderReport

_DONE = (COMPLETED, COMPLETED_WITH_RETRIES)


# ---------------------------------------------------------------- efficiency and ideals


def efficiency(ideal: float | None, wall: float, done: int | None = None, n: int = 0) -> float:
    """ideal / wall, scaled by the fraction of inputs completed when `done` is given
    (goodput: the share of what the provider allowed that was turned into results)."""
    if not ideal or wall <= 0:
        return 0.0
    value = ideal / wall
    if done is not None and n:
        value *= done / n
    return value


def fifo_makespan(attempts: Sequence[Sequence[float]], slots: int) -> float:
    """Makespan of a zero-overhead executor with `slots` workers that takes inputs in
    order and runs a retry (ready when its failed attempt ends) before any fresh input.

    `attempts[i]` lists the durations of input i's attempts (a timed-out attempt lasts
    the timeout). Nothing that does not know in advance which calls will fail can do
    better with in-order dispatch.
    """
    free = [0.0] * slots  # heap of times at which a slot becomes free
    retries: list[tuple[float, int, int]] = []  # heap of (ready time, input, attempt)
    fresh = 0
    end = 0.0
    while True:
        t = heapq.heappop(free)
        if retries and retries[0][0] <= t:
            _, i, k = heapq.heappop(retries)
            start = t
        elif fresh < len(attempts):
            i, k, start = fresh, 0, t
            fresh += 1
        elif retries:
            ready, i, k = heapq.heappop(retries)
            start = max(t, ready)
        else:
            break
        finish = start + attempts[i][k]
        end = max(end, finish)
        if k + 1 < len(attempts[i]):
            heapq.heappush(retries, (finish, i, k + 1))
        heapq.heappush(free, finish)
    return end


def jain_fairness(throughputs: Sequence[float]) -> float:
    """Jain's fairness index (Σx)² / (n·Σx²): 1 when all are equal, 1/n when one has all."""
    squares = sum(x * x for x in throughputs)
    return sum(throughputs) ** 2 / (len(throughputs) * squares) if squares else 0.0


def quantile(values: Sequence[float], q: float) -> float:
    """The `q` quantile (0..1) of `values` by the nearest-rank method; 0 when empty."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


# ---------------------------------------------------------------- outputs and statuses


def status_counts(statuses: Sequence[str]) -> str:
    counts = Counter(statuses)
    short = {
        COMPLETED: "ok",
        COMPLETED_WITH_RETRIES: "retried",
        FAILED: "failed",
        DID_NOT_RUN: "not-run",
    }
    return " ".join(f"{short.get(k, k)}={v}" for k, v in sorted(counts.items()))


def completed(statuses: Sequence[str]) -> int:
    return sum(1 for s in statuses if s in _DONE)


def misaligned(inputs: Sequence[Any], outputs: Sequence[Any], statuses: Sequence[str]) -> int:
    """Completed inputs whose output is not their own (every fn here returns its input)."""
    if len(outputs) != len(inputs) or len(statuses) != len(inputs):
        return len(inputs)
    return sum(
        1 for x, out, s in zip(inputs, outputs, statuses, strict=True) if s in _DONE and out != x
    )


def result_notes(
    inputs: Sequence[Any], outputs: Sequence[Any], statuses: Sequence[str]
) -> list[str]:
    """Statuses, plus INCOMPLETE / LENGTH MISMATCH / MISALIGNED when they apply."""
    notes = [status_counts(statuses)]
    done = completed(statuses)
    if done < len(inputs):
        notes.insert(0, f"INCOMPLETE: {done}/{len(inputs)} completed")
    if len(outputs) != len(inputs) or len(statuses) != len(inputs):
        notes.append(f"LENGTH MISMATCH outputs={len(outputs)} details={len(statuses)}")
    bad = misaligned(inputs, outputs, statuses)
    if bad:
        notes.append(f"MISALIGNED outputs={bad}")
    return notes


# ---------------------------------------------------------------- the provider's records


def peak_overlap(intervals: Iterable[tuple[float, float]]) -> int:
    """Largest number of half-open intervals [start, end) that overlap: peak in-flight."""
    events: list[tuple[float, int]] = []
    for start, end in intervals:
        events.append((start, 1))
        events.append((end, -1))
    events.sort()  # at equal times, ends (-1) sort before starts (+1)
    peak = current = 0
    for _, delta in events:
        current += delta
        peak = max(peak, current)
    return peak


def max_in_window(times: list[float], window: float) -> int:
    """Most events in any half-open window of length `window`."""
    times = sorted(times)
    best = 0
    lo = 0
    for hi, t in enumerate(times):
        while t - times[lo] >= window:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def dispatched_during_hints(records: Sequence[CallRecord]) -> int:
    """Calls that started strictly inside a retry-after window opened by the same tag.

    A 429 carrying hint h, raised (its record's end) at t0, opens (t0, t0 + h).
    """
    by_tag: dict[str, list[CallRecord]] = {}
    for record in records:
        by_tag.setdefault(record.tag, []).append(record)
    count = 0
    for tag_records in by_tag.values():
        windows = sorted(
            (r.end, r.end + r.retry_after)
            for r in tag_records
            if r.retry_after is not None and r.end is not None
        )
        if not windows:
            continue
        # Merge overlapping windows into disjoint open intervals.
        merged: list[list[float]] = []
        for lo, hi in windows:
            if merged and lo < merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], hi)
            else:
                merged.append([lo, hi])
        starts = [m[0] for m in merged]
        for record in tag_records:
            i = bisect.bisect_left(starts, record.start) - 1
            if i >= 0 and merged[i][0] < record.start < merged[i][1]:
                count += 1
    return count


def wasted_share(report: ProviderReport) -> float:
    """Percentage of the provider's calls that produced no result."""
    return 100.0 * report.wasted / report.calls if report.calls else 0.0


def waste_note(report: ProviderReport) -> str:
    return f"wasted {wasted_share(report):.1f}% of calls ({report.summary()})"


def provider_notes(report: ProviderReport, concurrency: int | None) -> list[str]:
    """VIOLATION when an executor had more calls in flight than its `concurrency` or the
    provider's own limits did not hold; LEAKED when calls outlived the run."""
    notes: list[str] = []
    if concurrency is not None:
        for tag, peak in sorted(report.peak_in_flight_by_tag.items()):
            if peak > concurrency:
                who = f" [{tag}]" if tag else ""
                notes.append(f"VIOLATION in-flight{who} {peak} > concurrency {concurrency}")
    notes.extend(f"VIOLATION {v}" for v in report.limit_violations)
    if report.still_running:
        notes.append(f"LEAKED {report.still_running} calls still running after return")
    return notes
