"""Benchmark scenarios. Each one runs a single implementation and returns a `Measurement`.

Real-time scenarios call the executor's `.run()` and time it with `time.perf_counter()`.
Virtual-time scenarios (`virtual=True`) build the executors inside a `VirtualEventLoop`
and `await executor.execute(...)`; their wall is virtual seconds on the loop's clock.
Each has a `-rt` twin: the same function on a real loop with every time constant of the
provider and of the executors divided by `COMPRESSION` (see `Timebase`).

The ideal of a scenario is the physical limit set by its own parameters (see README.md).
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import inspect
import itertools
import random
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from bench import shared_redis
from bench.impls import (
    DID_NOT_RUN,
    AsyncRunner,
    FloorAsync,
    FloorSync,
    Result,
    RowSkipped,
    compressed_options,
    load_module,
    make_async,
    make_sync,
    sync_concurrency_supported,
)
from bench.metrics import (
    completed,
    efficiency,
    fifo_makespan,
    jain_fairness,
    misaligned,
    provider_notes,
    quantile,
    result_notes,
    waste_note,
)
from bench.provider import (
    OK,
    PLAN_HANG,
    RATE_LIMITED,
    AsyncProvider,
    Latency,
    ProviderConfig,
    ProviderReport,
    SyncProvider,
    build_report,
)
from bench.vclock import run_virtual

T = TypeVar("T")

SEED = 20240611
# Latency of the virtual-time scenarios: lognormal, median 1.7 s, clipped to [1, 3] s.
LLM_LATENCY = Latency(median=1.7, sigma=0.3, low=1.0, high=3.0)


@dataclass
class Measurement:
    """What one (scenario, implementation) run measured."""

    wall: float
    ideal: float | None = None
    efficiency: float | None = None
    calls: int | None = None
    wasted: int | None = None
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    # True when some inputs did not complete (efficiency is then goodput, see README).
    incomplete: bool = False


@dataclass(frozen=True)
class Scenario:
    name: str
    run: Callable[[str, bool], Measurement]
    summary: str
    virtual: bool = False
    # Implementations that are not run, with the note to print instead.
    skip: dict[str, str] = field(default_factory=dict)
    # Real time compressed by this factor (1: not compressed).
    compression: float = 1.0
    # The virtual-time scenario this one runs compressed in real time, if any.
    twin: str | None = None


# ---------------------------------------------------------------- helpers


def interleaved_best(
    runs: dict[str, Callable[[], float]], *, reps: int = 5, budget: float = 6.0
) -> tuple[dict[str, float], int]:
    """Run each callable (returning its own wall) in turn, up to `reps` rounds within
    `budget` seconds, so drift and other load hit all alike; return the best of each."""
    best = dict.fromkeys(runs, float("inf"))
    spent = 0.0
    rounds = 0
    while rounds < reps and (rounds == 0 or spent + spent / rounds < budget):
        for name, run in runs.items():
            gc.collect()
            wall = run()
            best[name] = min(best[name], wall)
            spent += wall
        rounds += 1
    return best, rounds


def timed(call: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    result = call()
    return result, time.perf_counter() - start


# ---------------------------------------------------------------- real-time scenarios


def latency(impl: str, quick: bool) -> Measurement:
    n, lat, conc = (400 if quick else 2000), 0.05, 50
    provider = AsyncProvider(ProviderConfig(latency=Latency.fixed(lat), seed=SEED))
    inputs = list(range(n))
    runner = make_async(impl, provider.client(""), concurrency=conc, exit_on_error=False)
    (outputs, statuses), wall = timed(lambda: runner.run(inputs))
    report = provider.report()
    ideal = n * lat / conc
    notes = [f"{n} x {lat * 1000:g} ms, c={conc}", *result_notes(inputs, outputs, statuses)]
    notes += provider_notes(report, conc)
    return Measurement(
        wall=wall,
        ideal=ideal,
        efficiency=efficiency(ideal, wall, completed(statuses), n),
        incomplete=completed(statuses) < n,
        calls=report.calls,
        wasted=report.wasted,
        notes=notes,
    )


def _instant_async() -> tuple[Callable[[Any], Any], list[int]]:
    counter = [0]

    async def f(x: Any) -> Any:
        counter[0] += 1
        return x

    return f, counter


def overhead(impl: str, quick: bool) -> Measurement:
    n, conc = (1000 if quick else 5000), 50
    inputs = list(range(n))
    last: dict[str, Any] = {}

    def one(which: str, timeout: float | None = None) -> float:
        f, counter = _instant_async()
        runner = make_async(which, f, concurrency=conc, timeout=timeout, exit_on_error=False)
        (outputs, statuses), wall = timed(lambda: runner.run(inputs))
        last[which] = (outputs, statuses, counter[0])
        return wall

    # A second reference: the floor with a per-attempt `asyncio.wait_for(..., 60)`, the
    # default per-attempt timeout that both executors apply.
    best, runs = interleaved_best(
        {
            "impl": lambda: one(impl),
            "floor": lambda: one("floor"),
            "floor60": lambda: one("floor", 60.0),
        }
    )
    wall, floor_wall, floor60 = best["impl"], best["floor"], best["floor60"]
    outputs, statuses, calls = last[impl]
    notes = [
        f"{n / wall:,.0f} tasks/s (floor {n / floor_wall:,.0f}/s;"
        f" floor with wait_for(60 s) per attempt {n / floor60:,.0f}/s)",
        f"best of {runs} runs, alternating with the floor",
        *result_notes(inputs, outputs, statuses),
    ]
    return Measurement(
        wall=wall,
        ideal=floor_wall,
        efficiency=efficiency(floor_wall, wall),
        calls=calls,
        wasted=0,
        notes=notes,
        extra={
            "throughput": n / wall,
            "floor_wall": floor_wall,
            "floor_wait_for_60_wall": floor60,
            "paired_with_floor": True,
        },
    )


def _tiny(n: int) -> Callable[[str, bool], Measurement]:
    def scenario(impl: str, quick: bool) -> Measurement:
        reps, budget = (5 if quick else 20), 12.0
        inputs = list(range(n))
        walls: list[float] = []
        calls = 0
        notes: list[str] = []
        while len(walls) < reps and (len(walls) < 2 or sum(walls) < budget):
            f, counter = _instant_async()
            runner = make_async(impl, f, concurrency=3)
            (outputs, statuses), wall = timed(lambda: runner.run(inputs))  # noqa: B023
            walls.append(wall)
            calls += counter[0]
            notes = result_notes(inputs, outputs, statuses) if n else []
        mean = sum(walls) / len(walls)
        median = statistics.median(walls)
        summary = (
            f"{mean * 1000:.2f} ms/run (median {median * 1000:.2f}, min {min(walls) * 1000:.2f},"
            f" max {max(walls) * 1000:.2f}) over {len(walls)} runs"
        )
        return Measurement(
            wall=mean,
            ideal=0.0,
            efficiency=None,
            calls=calls,
            wasted=0,
            notes=[summary, *notes],
            extra={"ms_per_run": mean * 1000, "runs": len(walls)},
        )

    return scenario


def transient(impl: str, quick: bool) -> Measurement:
    n, lat, conc, retries = (300 if quick else 1000), 0.02, 20, 10
    config = ProviderConfig(latency=Latency.fixed(lat), error_rate=0.15, seed=SEED)
    provider = AsyncProvider(config)
    inputs = list(range(n))
    attempts = provider.ideal_attempts(inputs, retries + 1)
    ideal = attempts * lat / conc
    runner = make_async(
        impl, provider.client(""), concurrency=conc, max_retries=retries, exit_on_error=False
    )
    (outputs, statuses), wall = timed(lambda: runner.run(inputs))
    report = provider.report()
    notes = [
        f"plan: {attempts} attempts for {n} inputs",
        *result_notes(inputs, outputs, statuses),
        *provider_notes(report, conc),
    ]
    return Measurement(
        wall=wall,
        ideal=ideal,
        efficiency=efficiency(ideal, wall, completed(statuses), n),
        incomplete=completed(statuses) < n,
        calls=report.calls,
        wasted=report.wasted,
        notes=notes,
    )


def hang(impl: str, quick: bool) -> Measurement:
    n, lat, conc, limit = (200 if quick else 400), 0.05, 20, 1.0
    config = ProviderConfig(latency=Latency.fixed(lat), hang_rate=0.03, seed=SEED)
    provider = AsyncProvider(config)
    inputs = list(range(n))
    hangs = sum(1 for x in inputs if provider.plan.outcome(x, 1) == PLAN_HANG)
    work = n * lat + hangs * (limit + lat)
    # Work bound: every slot-second spent, divided by the slots. It ignores that a call
    # which hangs late in the run still needs timeout + latency after it starts, so the
    # ideal is the schedule of a zero-overhead in-order executor, which is at least that.
    work_bound = work / conc
    plan = [[limit, lat] if provider.plan.outcome(x, 1) == PLAN_HANG else [lat] for x in inputs]
    ideal = max(work_bound, fifo_makespan(plan, conc))
    runner = make_async(
        impl, provider.client(""), concurrency=conc, timeout=limit, exit_on_error=False
    )
    (outputs, statuses), wall = timed(lambda: runner.run(inputs))
    report = provider.report()
    notes = [
        f"{hangs} hangs, timeout {limit:g} s; ideal = zero-overhead in-order schedule "
        f"(work/c bound {work_bound:.3f} s)",
        *result_notes(inputs, outputs, statuses),
        *provider_notes(report, conc),
    ]
    return Measurement(
        wall=wall,
        ideal=ideal,
        efficiency=efficiency(ideal, wall, completed(statuses), n),
        incomplete=completed(statuses) < n,
        calls=report.calls,
        wasted=report.wasted,
        notes=notes,
    )


def memory(impl: str, quick: bool) -> Measurement:
    n, conc = (100_000 if quick else 1_000_000), 100
    f, counter = _instant_async()
    inputs = list(range(n))  # built before tracing starts: not part of the measurement
    run: Callable[[Sequence[Any]], tuple[Any, Any]]
    if impl == "floor":
        run = FloorAsync(f, concurrency=conc, max_retries=10, timeout=None, exit_on_error=False).run
    else:
        module = load_module(impl)
        run = module.AsyncExecutor(f, concurrency=conc, tqdm_bar_format=None).run
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        (outputs, details), wall = timed(lambda: run(inputs))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    outputs_size = sys.getsizeof(outputs)
    bookkeeping = peak - base - outputs_size
    per_input = bookkeeping / n
    statuses = list(details) if impl == "floor" else [str(d.status.value) for d in details]
    verdict = "OK" if per_input <= 150 else "OVER TARGET"
    notes = [
        f"bookkeeping {per_input:,.0f} B/input (target <= 150: {verdict})",
        f"tracemalloc peak {peak / 2**20:,.1f} MiB - outputs list {outputs_size / 2**20:,.1f} MiB",
        "wall measured under tracemalloc",
        *result_notes(inputs, outputs, statuses),
    ]
    return Measurement(
        wall=wall,
        calls=counter[0],
        wasted=0,
        notes=notes,
        extra={"bytes_per_input": per_input, "tracemalloc_peak": peak},
    )


def sync(impl: str, quick: bool) -> Measurement:
    n = 20_000 if quick else 100_000
    inputs = list(range(n))
    last: dict[str, Any] = {}

    def one(which: str) -> float:
        counter = [0]

        def f(x: Any) -> Any:
            counter[0] += 1
            return x

        runner = FloorSync(f, max_retries=10, exit_on_error=True) if which == "floor" else None
        run = runner.run if runner is not None else make_sync(which, f).run
        (outputs, statuses), wall = timed(lambda: run(inputs))
        last[which] = (outputs, statuses, counter[0])
        return wall

    best, runs = interleaved_best({"impl": lambda: one(impl), "floor": lambda: one("floor")})
    wall, floor_wall = best["impl"], best["floor"]
    outputs, statuses, calls = last[impl]
    notes = [
        f"{n / wall:,.0f} calls/s (bare loop {n / floor_wall:,.0f}/s)",
        f"best of {runs} runs, alternating with the floor",
        *result_notes(inputs, outputs, statuses),
    ]
    return Measurement(
        wall=wall,
        ideal=floor_wall,
        efficiency=efficiency(floor_wall, wall),
        calls=calls,
        wasted=0,
        notes=notes,
        extra={"throughput": n / wall, "floor_wall": floor_wall, "paired_with_floor": True},
    )


def sync429(impl: str, quick: bool) -> Measurement:
    n, lat, rpm, capacity = (100 if quick else 200), 0.01, 3000.0, 5.0
    config = ProviderConfig(
        latency=Latency.fixed(lat),
        requests_per_minute=rpm,
        bucket_capacity=capacity,
        reject_latency=0.005,
        exact_retry_after=True,
        seed=SEED,
    )
    provider = SyncProvider(config)
    inputs = list(range(n))
    ideal = max(n * lat, (n - capacity) / (rpm / 60.0) + lat)
    runner = make_sync(impl, provider.client(""), max_retries=10, exit_on_error=False)
    (outputs, statuses), wall = timed(lambda: runner.run(inputs))
    report = provider.report()
    notes = [
        waste_note(report),
        *result_notes(inputs, outputs, statuses),
        f"dispatched during hinted cooldown: {report.dispatched_during_hint}",
        *provider_notes(report, 1),
    ]
    return Measurement(
        wall=wall,
        ideal=ideal,
        efficiency=efficiency(ideal, wall, completed(statuses), n),
        incomplete=completed(statuses) < n,
        calls=report.calls,
        wasted=report.wasted,
        notes=notes,
        extra={"dispatched_during_hint": report.dispatched_during_hint},
    )


# ---------------------------------------------------------------- features: checkpoint, stream


def _fixed(lat: float) -> ProviderConfig:
    return ProviderConfig(latency=Latency.fixed(lat), seed=SEED)


@contextmanager
def _timed_checkpoint_records(durations: list[float]) -> Iterator[bool]:
    """Time every `Checkpoint.record` call of evalexec (appending seconds to `durations`)
    while the block runs; yields False when evalexec has no such method to time."""
    try:
        cls = importlib.import_module("evalexec._checkpoint").Checkpoint
        original = cls.record
    except (ImportError, AttributeError):
        yield False
        return

    def record(self: Any, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            durations.append(time.perf_counter() - start)

    cls.record = record
    try:
        yield True
    finally:
        cls.record = original


def checkpoint(impl: str, quick: bool) -> Measurement:
    """What a checkpoint file costs a latency-bound run.

    evalexec commits one SQLite row per finished input (`Checkpoint.record`: fingerprint,
    pickle, INSERT, COMMIT in WAL mode) on the event loop's thread, so every commit holds
    the loop. This times each `record` call (the loop time an input costs) and compares
    the wall with the same run without a checkpoint, alternating the two in one worker
    (best of each, every checkpoint run on a fresh file: a reused one would restore every
    input). A latency-bound loop is mostly idle, so the commits cost wall only as their
    share of the loop (inputs/s x commit time) approaches 1. The floor has no checkpoint.
    """
    n, lat, conc = (300 if quick else 1000), 0.05, 50
    inputs = list(range(n))
    ideal = n * lat / conc
    head = f"{n} x {lat * 1000:g} ms, c={conc}"
    if impl == "floor":
        provider = AsyncProvider(_fixed(lat))
        runner = make_async(impl, provider.client(""), concurrency=conc, exit_on_error=False)
        (outputs, statuses), wall = timed(lambda: runner.run(inputs))
        report = provider.report()
        return Measurement(
            wall=wall,
            ideal=ideal,
            efficiency=efficiency(ideal, wall, completed(statuses), n),
            incomplete=completed(statuses) < n,
            calls=report.calls,
            wasted=report.wasted,
            notes=[
                f"{head}, no checkpoint",
                *result_notes(inputs, outputs, statuses),
                *provider_notes(report, conc),
            ],
        )

    commits: list[float] = []
    last: dict[bool, tuple[list[Any], list[str], ProviderReport]] = {}
    counter = itertools.count()
    with (
        tempfile.TemporaryDirectory(prefix="bench-checkpoint-") as tmp,
        _timed_checkpoint_records(commits) as timing,
    ):

        def one(with_checkpoint: bool) -> float:
            provider = AsyncProvider(_fixed(lat))
            options: dict[str, Any] = {}
            if with_checkpoint:
                options["checkpoint"] = Path(tmp) / f"run{next(counter)}.sqlite"
            runner = make_async(
                impl, provider.client(""), concurrency=conc, exit_on_error=False, options=options
            )
            (outputs, statuses), wall = timed(lambda: runner.run(inputs))
            last[with_checkpoint] = (outputs, statuses, provider.report())
            return wall

        best, rounds = interleaved_best(
            {"checkpoint": lambda: one(True), "plain": lambda: one(False)}, reps=3, budget=8.0
        )
    wall, plain = best["checkpoint"], best["plain"]
    outputs, statuses, report = last[True]
    notes = [f"{head}, checkpoint in a temp dir; best of {rounds}, alternating"]
    extra: dict[str, Any] = {"plain_wall": plain, "paired_with_floor": False}
    notes.append(
        f"without checkpoint {plain:.3f} s: checkpoint {100 * (wall / plain - 1):+.1f}% wall,"
        f" {(wall - plain) / n * 1e6:+.0f} µs wall per input"
    )
    if timing and commits:
        per_run = len(commits) / rounds
        mean = sum(commits) / len(commits)
        busy = sum(commits) / rounds / wall
        notes.append(
            f"record() holds the loop {mean * 1e6:.0f} µs per input (median"
            f" {quantile(commits, 0.5) * 1e6:.0f}, p99 {quantile(commits, 0.99) * 1e6:.0f};"
            f" {per_run:.0f} per run), {100 * busy:.1f}% of the wall"
        )
        extra.update(commit_us_mean=mean * 1e6, commit_us_p99=quantile(commits, 0.99) * 1e6)
    elif not timing:
        notes.append("evalexec._checkpoint.Checkpoint.record not found: commits not timed")
    notes += result_notes(inputs, outputs, statuses)
    notes += provider_notes(report, conc)
    return Measurement(
        wall=wall,
        ideal=ideal,
        efficiency=efficiency(ideal, wall, completed(statuses), n),
        incomplete=completed(statuses) < n,
        calls=report.calls,
        wasted=report.wasted,
        notes=notes,
        extra=extra,
    )


async def _consume(
    runner: AsyncRunner, inputs: Sequence[Any], read: float = 0.0
) -> tuple[list[Any], list[str], int, float]:
    """Read `runner.stream(inputs)` to its end, sleeping `read` seconds per result (a slow
    reader): (outputs, statuses, results yielded, seconds until the first result)."""
    outputs: list[Any] = [None] * len(inputs)
    statuses: list[str] = [DID_NOT_RUN] * len(inputs)
    yielded = 0
    first = 0.0
    start = time.perf_counter()
    async for index, output, status in runner.stream(inputs):
        if not yielded:
            first = time.perf_counter() - start
        yielded += 1
        outputs[index], statuses[index] = output, status
        if read:
            await asyncio.sleep(read)
    return outputs, statuses, yielded, first


def _stream_notes(n: int, yielded: int, first: float) -> list[str]:
    notes = [f"first result after {first * 1000:.0f} ms"]
    if yielded != n:
        notes.append(f"YIELDED {yielded} results for {n} inputs")
    return notes


def stream(impl: str, quick: bool) -> Measurement:
    """The `latency` work read with `async for ... in executor.stream(inputs)` instead of
    `await executor.execute(inputs)`, alternating the two in one worker (best of each).
    evalexec's stream keeps a bounded window of inputs in play and hands each result over
    through a queue; the floor's is one task per input read with `asyncio.as_completed`."""
    n, lat, conc = (300 if quick else 1000), 0.05, 50
    inputs = list(range(n))
    ideal = n * lat / conc
    last: dict[str, Any] = {}

    def one(how: str) -> float:
        provider = AsyncProvider(_fixed(lat))
        runner = make_async(impl, provider.client(""), concurrency=conc, exit_on_error=False)
        if how == "stream":
            result, wall = timed(lambda: asyncio.run(_consume(runner, inputs)))
        else:
            result, wall = timed(lambda: asyncio.run(runner.execute(inputs)))
        last[how] = (result, provider.report())
        return wall

    best, rounds = interleaved_best(
        {"stream": lambda: one("stream"), "execute": lambda: one("execute")}, reps=3, budget=8.0
    )
    wall, execute_wall = best["stream"], best["execute"]
    (outputs, statuses, yielded, first), report = last["stream"]
    notes = [
        f"{n} x {lat * 1000:g} ms, c={conc}; best of {rounds}, alternating with execute()",
        f"execute() {execute_wall:.3f} s: stream {100 * (wall / execute_wall - 1):+.1f}% wall",
        *_stream_notes(n, yielded, first),
        *result_notes(inputs, outputs, statuses),
        *provider_notes(report, conc),
    ]
    return Measurement(
        wall=wall,
        ideal=ideal,
        efficiency=efficiency(ideal, wall, completed(statuses), n),
        incomplete=completed(statuses) < n,
        calls=report.calls,
        wasted=report.wasted,
        notes=notes,
        extra={"execute_wall": execute_wall, "first_result": first},
    )


def stream_slow(impl: str, quick: bool) -> Measurement:
    """`stream()` read by a slow reader (`await asyncio.sleep(2 ms)` per result): the
    reader, not the provider, sets the pace. Ideal: the reader's own time over n results
    (measured alone in this worker) after the first result's latency, or the provider's
    N x latency / concurrency if that is longer. evalexec stops drawing inputs while its
    window (4 x concurrency) is full of unread results; the floor runs ahead unbounded."""
    n, lat, conc, read = (200 if quick else 500), 0.05, 50, 0.002

    async def reader_alone() -> None:
        for _ in range(n):
            await asyncio.sleep(read)

    alone = min(timed(lambda: asyncio.run(reader_alone()))[1] for _ in range(2))
    ideal = max(n * lat / conc, lat + alone)
    inputs = list(range(n))
    provider = AsyncProvider(_fixed(lat))
    runner = make_async(impl, provider.client(""), concurrency=conc, exit_on_error=False)
    (outputs, statuses, yielded, first), wall = timed(
        lambda: asyncio.run(_consume(runner, inputs, read))
    )
    report = provider.report()
    notes = [
        f"{n} x {lat * 1000:g} ms, c={conc}, reader sleeps {read * 1000:g} ms per result",
        f"reader alone {alone:.3f} s; ideal = latency + reader",
        *_stream_notes(n, yielded, first),
        f"peak in-flight {report.peak_in_flight}",
        *result_notes(inputs, outputs, statuses),
        *provider_notes(report, conc),
    ]
    return Measurement(
        wall=wall,
        ideal=ideal,
        efficiency=efficiency(ideal, wall, completed(statuses), n),
        incomplete=completed(statuses) < n,
        calls=report.calls,
        wasted=report.wasted,
        notes=notes,
        extra={"reader_alone": alone, "first_result": first},
    )


# ---------------------------------------------------------------- threads and notebooks
#
# Real time and real threads: the generation functions block in `time.sleep`.

SYNC_THREADS = 20


def _sync_latency_run(
    impl: str, n: int, lat: float, conc: int, concurrency: int | None
) -> Measurement:
    """`n` blocking calls of `lat` seconds through `impl`'s sync runner; ideal n x lat / conc."""
    provider = SyncProvider(_fixed(lat))
    inputs = list(range(n))
    runner = make_sync(impl, provider.client(""), exit_on_error=False, concurrency=concurrency)
    (outputs, statuses), wall = timed(lambda: runner.run(inputs))
    report = provider.report()
    ideal = n * lat / conc
    per_input = wall / n
    at_threads = lat / SYNC_THREADS * 1000
    threads = "" if conc == SYNC_THREADS else f"; {at_threads:.2f} at c={SYNC_THREADS}"
    if impl == "floor":
        how = "for loop" if conc == 1 else f"ThreadPoolExecutor({conc}).map"
    else:
        how = "SyncExecutor" + ("" if concurrency is None else f"(concurrency={concurrency})")
    notes = [
        f"{n} x {lat * 1000:g} ms time.sleep, {how}",
        f"{per_input * 1000:.2f} ms per input (ideal {lat / conc * 1000:.2f}{threads})",
        *result_notes(inputs, outputs, statuses),
        f"peak in-flight {report.peak_in_flight}",
        *provider_notes(report, conc),
    ]
    return Measurement(
        wall=wall,
        ideal=ideal,
        efficiency=efficiency(ideal, wall, completed(statuses), n),
        incomplete=completed(statuses) < n,
        calls=report.calls,
        wasted=report.wasted,
        notes=notes,
        extra={"ms_per_input": per_input * 1000, "n": n},
    )


def sync_threads(impl: str, quick: bool) -> Measurement:
    """`SyncExecutor(concurrency=20)`: 20 blocking calls at once on worker threads, against
    a bare `ThreadPoolExecutor(20).map`. Skipped while SyncExecutor has no `concurrency`."""
    if impl != "floor" and not sync_concurrency_supported(impl):
        raise RowSkipped(
            f"{impl}'s SyncExecutor has no concurrency parameter yet (inspect.signature);"
            " sequential figures: sync-threads-c1"
        )
    n = 100 if quick else 200
    return _sync_latency_run(impl, n, 0.05, SYNC_THREADS, SYNC_THREADS)


def sync_threads_c1(impl: str, quick: bool) -> Measurement:
    """The `sync-threads` calls one at a time, on fewer inputs (20) to keep the row at 1 s:
    per-input time is the comparable figure. evalexec passes `concurrency=1` when it has
    the parameter; the floor is a bare for loop."""
    n = 10 if quick else 20
    concurrency = 1 if impl == "evalexec" and sync_concurrency_supported(impl) else None
    return _sync_latency_run(impl, n, 0.05, 1, concurrency)


def notebook_factory(impl: str, quick: bool) -> Measurement:
    """What a notebook user gets from `get_executor_on_sync_context`.

    Inside a running event loop not patched by nest_asyncio (a notebook cell; here the
    measurement runs inside `asyncio.run`), the factory picks an executor and `.run()`
    blocks the loop; measured against `await AsyncExecutor(async_fn, concurrency=20)
    .execute(rows)` in the same loop. 100 rows of 50 ms: `sync_fn` sleeps with
    `time.sleep`, `async_fn` with `asyncio.sleep`. The floor awaits its gather.
    """
    n, lat, conc = (40 if quick else 100), 0.05, 20
    inputs = list(range(n))
    ideal = n * lat / conc
    head = f"{n} x {lat * 1000:g} ms, c={conc}, inside asyncio.run (no nest_asyncio)"

    if impl == "floor":
        provider = AsyncProvider(_fixed(lat))
        floor = FloorAsync(
            provider.client(""), concurrency=conc, max_retries=10, timeout=None, exit_on_error=True
        )

        async def floor_main() -> tuple[Result, float]:
            start = time.perf_counter()
            result = await floor.execute(inputs)
            return result, time.perf_counter() - start

        (outputs, statuses), wall = asyncio.run(floor_main())
        report = provider.report()
        return Measurement(
            wall=wall,
            ideal=ideal,
            efficiency=efficiency(ideal, wall, completed(statuses), n),
            incomplete=completed(statuses) < n,
            calls=report.calls,
            wasted=report.wasted,
            notes=[f"{head}; awaited gather", *result_notes(inputs, outputs, statuses)],
        )

    module = load_module(impl)
    sync_provider = SyncProvider(_fixed(lat))
    async_provider = AsyncProvider(_fixed(lat))

    async def main() -> dict[str, Any]:
        if getattr(asyncio, "_nest_patched", False):
            raise RuntimeError("nest_asyncio is applied: this is not the notebook case")
        executor = module.get_executor_on_sync_context(
            sync_provider.client(""), async_provider.client("factory"), concurrency=conc
        )
        start = time.perf_counter()
        factory_result = executor.run(inputs)
        factory_wall = time.perf_counter() - start
        start = time.perf_counter()
        direct = await module.AsyncExecutor(
            async_provider.client("direct"), concurrency=conc
        ).execute(inputs)
        direct_wall = time.perf_counter() - start
        return {
            "chosen": type(executor).__name__,
            "factory": factory_result,
            "factory_wall": factory_wall,
            "direct": direct,
            "direct_wall": direct_wall,
        }

    got = asyncio.run(main())
    outputs, details = got["factory"]
    statuses = [str(d.status.value) for d in details]
    direct_statuses = [str(d.status.value) for d in got["direct"][1]]
    wall, direct_wall = got["factory_wall"], got["direct_wall"]
    ratio = wall / direct_wall
    # The factory's calls: on the sync provider, or on the async one under its tag.
    sync_report = sync_provider.report()
    factory_async = [r for r in async_provider.records if r.tag == "factory"]
    notes = [
        head,
        f"factory chose {got['chosen']}: run() {wall:.3f} s; await AsyncExecutor(c={conc})"
        f".execute() {direct_wall:.3f} s; factory / execute = {ratio:.1f}x",
        *result_notes(inputs, list(outputs), statuses),
    ]
    if completed(direct_statuses) < n:
        notes.append(f"execute() INCOMPLETE: {completed(direct_statuses)}/{n}")
    return Measurement(
        wall=wall,
        ideal=ideal,
        efficiency=efficiency(ideal, wall, completed(statuses), n),
        incomplete=completed(statuses) < n,
        calls=sync_report.calls + len(factory_async),
        wasted=sync_report.wasted + sum(1 for r in factory_async if r.outcome != OK),
        notes=notes,
        extra={"chosen": got["chosen"], "execute_wall": direct_wall, "factory_over_execute": ratio},
    )


# ---------------------------------------------------------------- rate-limit scenarios
#
# Each runs on a `Timebase`: virtual time at the original scale (k = 1), or compressed
# real time (k = COMPRESSION): the same scenario with every duration divided by k.


@dataclass(frozen=True)
class Timebase:
    """The clock a rate-limit scenario runs on and how compressed its time is.

    `k` divides every duration of the provider (`ProviderConfig.compressed`) and the
    executors' own time constants (`compressed_options`), and multiplies the provider's
    request rate; `virtual` runs the scenario on a `VirtualEventLoop`, else on a real
    one with `time.perf_counter()` as the wall. `Timebase()` is the original scenario.
    """

    k: float = 1.0
    virtual: bool = True

    @property
    def minute(self) -> float:
        """The provider's minute: 60 s of the original scenario, in this time base."""
        return 60.0 / self.k

    @property
    def unit(self) -> str:
        return "virtual s" if self.virtual else "s"

    def header(self, real: float) -> str:
        if self.virtual:
            return f"virtual time (real {real:.1f} s)"
        return f"real time compressed {self.k:g}x (every time constant / {self.k:g})"


VIRTUAL = Timebase()
# 1.7 s median latency -> 50 ms.
COMPRESSION = 34.0
COMPRESSED = Timebase(k=COMPRESSION, virtual=False)


def _compression_notes(impl: str, tb: Timebase) -> list[str]:
    if tb.k == 1 or impl != "phoenix":
        return []
    return [
        f"unscaled Phoenix waits: producer sleep(1) when 3c inputs are queued, 1 s queue poll"
        f" before a worker exits, 1 s idle-worker check, 30 s collapse window"
        f" (1 s here = {tb.k:g} s of the virtual scenario)"
    ]


def _run_clocked(main: Callable[[], Awaitable[T]], tb: Timebase) -> tuple[T, float, float]:
    """Run `main()` on a fresh loop of the time base: (result, wall, real seconds).

    Virtual: the wall is the virtual seconds `main` took. Real: the wall is
    `time.perf_counter()` around `main` inside the loop (loop set-up and teardown
    excluded, as they are in virtual time).
    """
    if tb.virtual:
        (result, wall), real = timed(lambda: run_virtual(main))
        return result, wall, real

    async def clocked() -> tuple[T, float]:
        start = time.perf_counter()
        value = await main()
        return value, time.perf_counter() - start

    (result, wall), real = timed(lambda: asyncio.run(clocked()))
    return result, wall, real


async def _bounded(coro: Any, cap: float) -> tuple[Any, bool]:
    """Await `coro` for at most `cap` seconds of the loop's clock; (result, hung)."""
    try:
        return await asyncio.wait_for(coro, cap), False
    except TimeoutError:
        return None, True


def _default_cap(ideal: float, tb: Timebase) -> float:
    """How long a run may take before it is cancelled as HUNG."""
    return max(1800.0 / tb.k, 10 * ideal)


def _rate_single(
    impl: str,
    config: ProviderConfig,
    n: int,
    conc: int,
    ideal: float,
    tb: Timebase,
    *,
    exit_on_error: bool = False,
    scale_by_completion: bool = True,
    cap: float | None = None,
    more_options: Callable[[], dict[str, Any]] | None = None,
) -> tuple[Measurement, ProviderReport, list[str]]:
    """One executor over `n` inputs against `config` (already compressed to `tb`);
    `more_options()`, called inside the run's loop, adds constructor arguments."""
    provider = AsyncProvider(config)
    inputs = list(range(n))
    cap = cap if cap is not None else _default_cap(ideal, tb)
    options = compressed_options(impl, tb.k)

    async def main() -> tuple[Any, bool]:
        extra = {} if more_options is None else more_options()
        runner = make_async(
            impl,
            provider.client(""),
            concurrency=conc,
            exit_on_error=exit_on_error,
            options={**options, **extra},
        )
        return await _bounded(runner.execute(inputs), cap)

    (result, hung), wall, real = _run_clocked(main, tb)
    report = provider.report(tb.minute)
    notes = [tb.header(real)]
    statuses: list[str] = []
    if hung:
        notes.append(f"HUNG: no return after {cap:g} {tb.unit} (cancelled)")
        done = 0
    else:
        outputs, statuses = result
        notes += result_notes(inputs, outputs, statuses)
        done = completed(statuses)
    notes.append(f"peak in-flight {report.peak_in_flight} (c={conc})")
    notes += provider_notes(report, conc)
    notes += _compression_notes(impl, tb)
    eff = efficiency(ideal, wall, done if scale_by_completion else None, n)
    if hung:
        eff = 0.0
    measurement = Measurement(
        wall=wall,
        ideal=ideal,
        efficiency=eff,
        incomplete=scale_by_completion and done < n,
        calls=report.calls,
        wasted=report.wasted,
        notes=notes,
        extra={
            "real_seconds": real,
            "hung": hung,
            "outcomes": report.outcomes,
            "k": tb.k,
            "n": n,
        },
    )
    return measurement, report, statuses


def _per_minute_note(report: ProviderReport, tb: Timebase) -> str:
    if tb.k == 1:
        return f"peak accepted/min {report.max_accepted_per_minute}"
    peak = report.max_accepted_per_minute
    return f"peak accepted per {tb.minute:.3g} s (a compressed minute) {peak}"


# rpm500-rt's N: Phoenix's producer sleeps a fixed 1 s whenever 3 x c inputs are queued,
# which holds it to ~60 fresh inputs per real second; at N = 2000 its row takes ~34 s.
RPM500_REAL_N = 800


def rpm500(impl: str, quick: bool, tb: Timebase) -> Measurement:
    n, conc = (400 if quick else 2000), 20
    reduced = not tb.virtual and n > RPM500_REAL_N
    if reduced:
        n = RPM500_REAL_N
    config = ProviderConfig(
        latency=LLM_LATENCY, requests_per_minute=500.0, bucket_capacity=10, seed=SEED
    ).compressed(tb.k)
    assert config.requests_per_minute is not None
    ideal = n / (config.requests_per_minute / 60.0)
    m, report, _ = _rate_single(impl, config, n, conc, ideal, tb)
    m.notes.insert(1, waste_note(report))
    m.notes.append(_per_minute_note(report, tb))
    if reduced:
        m.notes.insert(1, f"N = {n} (virtual: 2000; Phoenix would take ~34 s at 2000)")
    return m


def _inflight(
    impl: str, quick: bool, tb: Timebase, hints: bool, initial: int | None = None
) -> Measurement:
    """With `initial`, the executor is told ``dynamic_initial_target=initial``."""
    n, conc, limit = (200 if quick else 1000), 40, 8
    config = ProviderConfig(
        latency=LLM_LATENCY,
        max_in_flight=limit,
        retry_after=1.0 if hints else None,
        seed=SEED,
    ).compressed(tb.k)
    plan_provider = AsyncProvider(config)
    latencies = [plan_provider.plan.latency(x) for x in range(n)]
    ideal = max(sum(latencies) / limit, max(latencies))
    told = None if initial is None else (lambda: {"dynamic_initial_target": initial})
    m, report, _ = _rate_single(impl, config, n, conc, ideal, tb, more_options=told)
    m.notes.insert(1, waste_note(report))
    if initial is not None:
        m.notes.insert(2, f"dynamic_initial_target={initial}")
    mean = sum(latencies) / n
    m.notes.append(f"mean latency {mean:.3f} s" if tb.k == 1 else f"mean latency {mean:.5f} s")
    if hints:
        m.notes.append(f"dispatched during hinted cooldown: {report.dispatched_during_hint}")
        m.extra["dispatched_during_hint"] = report.dispatched_during_hint
    return m


def quota(impl: str, quick: bool, tb: Timebase) -> Measurement:
    n, conc = (100 if quick else 500), 10
    config = ProviderConfig(quota_exhausted=True, quota_latency=0.5, seed=SEED).compressed(tb.k)
    # One call is enough to learn that the quota is gone.
    m, _, _ = _rate_single(
        impl,
        config,
        n,
        conc,
        config.quota_latency,
        tb,
        exit_on_error=True,
        scale_by_completion=False,
    )
    how = "the floor ignores exit_on_error" if impl == "floor" else "exit_on_error=True"
    wall = f"{m.wall:.1f}" if tb.k == 1 else f"{m.wall:.3f}"
    m.notes.insert(1, f"returned after {wall} {tb.unit} ({how})")
    return m


def shared4(impl: str, quick: bool, tb: Timebase) -> Measurement:
    return _shared4(impl, quick, tb, limited=False)


def _shared4(impl: str, quick: bool, tb: Timebase, *, limited: bool) -> Measurement:
    """4 executors share one provider; with `limited`, also one `LocalLimiter(rpm=500)`."""
    k, n, conc = 4, (100 if quick else 500), 20
    config = ProviderConfig(
        latency=LLM_LATENCY, requests_per_minute=500.0, bucket_capacity=10, seed=SEED
    ).compressed(tb.k)
    assert config.requests_per_minute is not None
    provider = AsyncProvider(config)
    ideal = k * n / (config.requests_per_minute / 60.0)
    cap = _default_cap(ideal, tb)
    options = compressed_options(impl, tb.k)
    batches = [list(range(i * n, (i + 1) * n)) for i in range(k)]
    finish: list[float] = [0.0] * k
    started = [0.0]  # the loop's time when the run began (0 on a virtual loop)

    async def main() -> tuple[Any, bool]:
        started[0] = asyncio.get_running_loop().time()
        # The limiter is made on the run's loop: one for the four executors.
        run_options = {**options, "limiter": _local_limiter(tb, rpm=500)} if limited else options

        async def one(i: int) -> Any:
            runner = make_async(
                impl,
                provider.client(f"e{i}"),
                concurrency=conc,
                exit_on_error=False,
                options=run_options,
            )
            result = await runner.execute(batches[i])
            finish[i] = asyncio.get_running_loop().time() - started[0]
            return result

        return await _bounded(asyncio.gather(*(one(i) for i in range(k))), cap)

    (result, hung), wall, real = _run_clocked(main, tb)
    report = provider.report(tb.minute)
    notes = [tb.header(real), waste_note(report)]
    if limited:
        notes.append("one LocalLimiter(rpm=500) for all four")
    done_total, jain, per_exec = _per_executor(result, hung, batches, finish, tb, notes)
    if hung:
        notes.append(f"HUNG: no return after {cap:g} {tb.unit} (cancelled)")
    refused = report.outcomes.get(RATE_LIMITED, 0)
    if limited:
        by_tag = Counter(r.tag for r in provider.records if r.outcome == RATE_LIMITED)
        notes.append(
            f"refused {refused} ({', '.join(f'{t}: {by_tag[t]}' for t in sorted(by_tag))})"
            if refused
            else "refused 0"
        )
    if not hung:
        notes.append(f"Jain fairness {jain:.3f}")
        notes.append("; ".join(per_exec))
    notes += provider_notes(report, conc)
    notes += _compression_notes(impl, tb)
    eff = 0.0 if hung else efficiency(ideal, wall, done_total, k * n)
    return Measurement(
        wall=wall,
        ideal=ideal,
        efficiency=eff,
        incomplete=done_total < k * n,
        calls=report.calls,
        wasted=report.wasted,
        notes=notes,
        extra={
            "jain": jain,
            "refused": refused,
            "real_seconds": real,
            "hung": hung,
            "finish": finish,
            "k": tb.k,
            "n": k * n,
        },
    )


# ---------------------------------------------------------------- budgets: limiter=
#
# The same providers, with evalexec told the budget (`limiter=`) instead of finding it by
# its 429s. Phoenix and the floor have no limiter: their rows are n/a.

NO_LIMITER = {
    "phoenix": "n/a: Phoenix's AsyncExecutor has no limiter=",
    "floor": "n/a: the floor has no limiter",
}


def _local_limiter(tb: Timebase, **budgets: Any) -> Any:
    """A `LocalLimiter` with `budgets` per provider minute, its burst of one second of the
    original scenario: both time constants divided by the time base's `k`. Raises
    `RowSkipped` for an evalexec whose executors take no `limiter=`."""
    executors = load_module("evalexec")
    if "limiter" not in inspect.signature(executors.AsyncExecutor).parameters:
        raise RowSkipped("evalexec's AsyncExecutor has no limiter= (yet)")
    limits = importlib.import_module("evalexec.limits")
    return limits.LocalLimiter(**budgets, burst=1.0 / tb.k, period_seconds=tb.minute)


def _refusal_notes(report: ProviderReport, target: float, eff: float) -> list[str]:
    refused = report.outcomes.get(RATE_LIMITED, 0)
    verdict = "met" if eff >= target and refused == 0 else "NOT MET"
    return [f"refused {refused}", f"target >= {target:g} of ideal with no refusal: {verdict}"]


def rpm500_budget(impl: str, quick: bool, tb: Timebase) -> Measurement:
    """`rpm500` with ``limiter=LocalLimiter(rpm=500)``: the executor paces itself."""
    n, conc = (400 if quick else 2000), 20
    reduced = not tb.virtual and n > RPM500_REAL_N
    if reduced:
        n = RPM500_REAL_N
    config = ProviderConfig(
        latency=LLM_LATENCY, requests_per_minute=500.0, bucket_capacity=10, seed=SEED
    ).compressed(tb.k)
    assert config.requests_per_minute is not None
    ideal = n / (config.requests_per_minute / 60.0)
    _local_limiter(tb, rpm=500)  # n/a rows are known before the run

    def limiter() -> dict[str, Any]:
        return {"limiter": _local_limiter(tb, rpm=500)}

    m, report, _ = _rate_single(impl, config, n, conc, ideal, tb, more_options=limiter)
    m.notes.insert(1, waste_note(report))
    m.notes.insert(2, "limiter=LocalLimiter(rpm=500)")
    m.notes.append(_per_minute_note(report, tb))
    m.notes += _refusal_notes(report, 0.98, m.efficiency or 0.0)
    m.extra["refused"] = report.outcomes.get(RATE_LIMITED, 0)
    if reduced:
        m.notes.insert(1, f"N = {n} (virtual: 2000, as rpm500-rt)")
    return m


def shared4_limiter(impl: str, quick: bool, tb: Timebase) -> Measurement:
    """`shared4` with one `LocalLimiter(rpm=500)` shared by the four executors: what a
    `RedisLimiter` on one key does for four processes, in one loop."""
    return _shared4(impl, quick, tb, limited=True)


def _shared4_processes(impl: str, quick: bool, shared: bool) -> Measurement:
    """`shared4` in four real processes (see `bench/shared_redis.py`), compressed as the
    -rt rows: with one RedisLimiter shared (`shared`) or adaptive control alone."""
    binary = shared_redis.redis_available()
    if shared:
        _local_limiter(COMPRESSED, rpm=500)  # RowSkipped for an evalexec without limiter=
    tb = COMPRESSED
    k, n, conc = 4, (100 if quick else 500), 20
    config = ProviderConfig(
        latency=LLM_LATENCY, requests_per_minute=500.0, bucket_capacity=10, seed=SEED
    ).compressed(tb.k)
    assert config.requests_per_minute is not None
    ideal = k * n / (config.requests_per_minute / 60.0)
    server = shared_redis.RedisProcess(binary)
    try:
        key = f"bench-{time.time_ns()}"
        specs = [
            shared_redis.ProcessSpec(
                f"e{i}",
                list(range(i * n, (i + 1) * n)),
                server.url,
                key,
                shared,
                config,
                tb.k,
                conc,
            )
            for i in range(k)
        ]
        (results, started), real = timed(lambda: shared_redis.run_four(specs))
    finally:
        server.stop()
    records = shared_redis.to_records([row for r in results for row in r["records"]])
    report = build_report(records, config, tb.minute)
    finish = [r["finished"] - started for r in results]
    wall = max(finish)
    how = (
        "one RedisLimiter(rpm=500) on one key for all four processes"
        if shared
        else "no limiter: each process's adaptive control alone"
    )
    notes = [
        f"4 processes, real time compressed {tb.k:g}x (spawn and set-up excluded; "
        f"{real:.1f} s in all)",
        waste_note(report),
        how,
    ]
    batches = [spec.inputs for spec in specs]
    result = [(r["outputs"], r["statuses"]) for r in results]
    done_total, jain, per_exec = _per_executor(result, False, batches, finish, tb, notes)
    refused = report.outcomes.get(RATE_LIMITED, 0)
    by_tag = Counter(r.tag for r in records if r.outcome == RATE_LIMITED)
    notes.append(
        f"refused {refused} ({', '.join(f'{t}: {by_tag[t]}' for t in sorted(by_tag))})"
        if refused
        else "refused 0"
    )
    notes.append(f"Jain fairness {jain:.3f}")
    notes.append("; ".join(per_exec))
    notes.append(_per_minute_note(report, tb))
    notes += provider_notes(report, conc)
    return Measurement(
        wall=wall,
        ideal=ideal,
        efficiency=efficiency(ideal, wall, done_total, k * n),
        incomplete=done_total < k * n,
        calls=report.calls,
        wasted=report.wasted,
        notes=notes,
        extra={
            "jain": jain,
            "refused": refused,
            "real_seconds": real,
            "finish": finish,
            "k": tb.k,
            "n": k * n,
        },
    )


def _per_executor(
    result: Any,
    hung: bool,
    batches: list[list[int]],
    finish: list[float],
    tb: Timebase,
    notes: list[str],
) -> tuple[int, float, list[str]]:
    """(inputs completed, Jain's index of the executors' throughputs, one line each);
    misaligned outputs are added to `notes`."""
    if hung:
        return 0, 0.0, []
    done_total = 0
    throughputs: list[float] = []
    lines: list[str] = []
    for i, (outputs, statuses) in enumerate(result):
        done = completed(statuses)
        done_total += done
        throughputs.append(done / finish[i] if finish[i] > 0 else 0.0)
        when = f"{finish[i]:.0f}" if tb.k == 1 else f"{finish[i]:.2f}"
        lines.append(f"e{i}: {done} done by {when} s")
        bad = misaligned(batches[i], outputs, statuses)
        if bad:
            notes.append(f"MISALIGNED [e{i}] {bad}")
    return done_total, jain_fairness(throughputs), lines


# The executors' backoff jitter draws from the global `random` (seeded with SEED per
# row): one virtual row is one draw. Virtual rows run again with this many other seeds,
# and their notes give the spread (the targets of the README are judged on it).
SPREAD_SEEDS = 10
QUICK_SPREAD_SEEDS = 3


def _with_seed_spread(
    run: Callable[[str, bool, Timebase], Measurement],
) -> Callable[[str, bool], Measurement]:
    """`run` in virtual time, its notes followed by the spread over other jitter seeds."""

    def spread(impl: str, quick: bool) -> Measurement:
        m = run(impl, quick, VIRTUAL)
        state = random.getstate()
        samples = [m]
        for i in range(1, QUICK_SPREAD_SEEDS if quick else SPREAD_SEEDS):
            random.seed(SEED + i)
            samples.append(run(impl, quick, VIRTUAL))
        random.setstate(state)
        effs = [s.efficiency or 0.0 for s in samples]
        wasted = [100.0 * s.wasted / s.calls if s.calls else 0.0 for s in samples]
        extra = {
            "efficiency_mean": statistics.mean(effs),
            "efficiency_min": min(effs),
            "wasted_pct_mean": statistics.mean(wasted),
            "wasted_pct_max": max(wasted),
        }
        parts = [
            f"efficiency mean {extra['efficiency_mean']:.3f} (min {extra['efficiency_min']:.3f})",
            f"wasted mean {extra['wasted_pct_mean']:.1f}% (max {extra['wasted_pct_max']:.1f}%)",
        ]
        if "jain" in m.extra:
            jains = [float(s.extra["jain"]) for s in samples]
            extra |= {"jain_mean": statistics.mean(jains), "jain_min": min(jains)}
            parts.append(f"Jain mean {extra['jain_mean']:.3f} (min {extra['jain_min']:.3f})")
        m.notes.append(f"over {len(samples)} jitter seeds: " + "; ".join(parts))
        m.extra["seeds"] = extra
        return m

    return spread


def _timed_pair(
    name: str, run: Callable[[str, bool, Timebase], Measurement], summary: str
) -> list[Scenario]:
    """`name` in virtual time and `name-rt` in compressed real time, from one function."""
    return [
        Scenario(name, _with_seed_spread(run), summary, virtual=True),
        Scenario(
            f"{name}-rt",
            lambda impl, quick: run(impl, quick, COMPRESSED),
            f"{summary}; real time, every time constant / {COMPRESSION:g}",
            compression=COMPRESSION,
            twin=name,
        ),
    ]


def _budget_pair(
    name: str, run: Callable[[str, bool, Timebase], Measurement], summary: str
) -> list[Scenario]:
    """`_timed_pair` for a scenario that only evalexec can run."""
    pair = _timed_pair(name, run, summary)
    return [replace(s, skip=dict(NO_LIMITER)) for s in pair]


def _inflight_plain(impl: str, quick: bool, tb: Timebase) -> Measurement:
    return _inflight(impl, quick, tb, hints=False)


def _inflight_hints(impl: str, quick: bool, tb: Timebase) -> Measurement:
    return _inflight(impl, quick, tb, hints=True)


def _inflight_told(impl: str, quick: bool, tb: Timebase) -> Measurement:
    return _inflight(impl, quick, tb, hints=False, initial=8)


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in [
        Scenario("latency", latency, "2000 x 50 ms calls, concurrency 50"),
        Scenario("overhead", overhead, "5000 instant calls, concurrency 50; vs floor"),
        Scenario("tiny0", _tiny(0), "0 inputs: fixed cost of one run()"),
        Scenario("tiny1", _tiny(1), "1 instant input: fixed cost of one run()"),
        Scenario("transient", transient, "1000 x 20 ms, 15% transient errors, c=20"),
        Scenario("hang", hang, "400 x 50 ms, 3% hang on attempt 1, timeout 1 s, c=20"),
        Scenario(
            "memory",
            memory,
            "1,000,000 instant inputs, c=100; tracemalloc bookkeeping per input",
            skip={"phoenix": "Phoenix would take far too long at 1M inputs"},
        ),
        Scenario("sync", sync, "SyncExecutor, 100,000 instant calls; vs bare for loop"),
        Scenario(
            "sync429",
            sync429,
            "SyncExecutor, 200 x 10 ms, 3000 req/min provider, 429s with exact retry-after",
        ),
        Scenario(
            "checkpoint",
            checkpoint,
            "1000 x 50 ms, c=50, checkpoint file vs none; record() time per input",
            skip={"phoenix": "n/a: Phoenix's executors have no checkpoint="},
        ),
        Scenario(
            "stream",
            stream,
            "1000 x 50 ms, c=50, read with async for ... in stream() vs execute()",
            skip={"phoenix": "n/a: Phoenix's AsyncExecutor has no stream()"},
        ),
        Scenario(
            "stream-slow",
            stream_slow,
            "500 x 50 ms, c=50, stream() read by a reader that sleeps 2 ms per result",
            skip={"phoenix": "n/a: Phoenix's AsyncExecutor has no stream()"},
        ),
        Scenario(
            "sync-threads",
            sync_threads,
            "SyncExecutor(concurrency=20), 200 x 50 ms time.sleep; floor: ThreadPoolExecutor",
            skip={"phoenix": "n/a: Phoenix's SyncExecutor has no threads (see sync-threads-c1)"},
        ),
        Scenario(
            "sync-threads-c1",
            sync_threads_c1,
            "SyncExecutor one call at a time, 20 x 50 ms time.sleep; floor: for loop",
        ),
        Scenario(
            "notebook-factory",
            notebook_factory,
            "get_executor_on_sync_context(...).run() in a running loop vs await execute()",
        ),
        *_timed_pair("rpm500", rpm500, "500 req/min provider, 2000 x ~1.7 s, c=20"),
        *_timed_pair(
            "inflight8", _inflight_plain, "provider allows 8 in flight, 1000 x ~1.7 s, c=40"
        ),
        *_timed_pair("inflight8-hints", _inflight_hints, "as inflight8, 429s carry retry-after: 1"),
        Scenario(
            "inflight8-initial",
            _with_seed_spread(_inflight_told),
            "inflight8 with dynamic_initial_target=8 (the user knows the limit)",
            virtual=True,
            skip={"floor": "n/a: the floor has no dynamic_initial_target"},
        ),
        *_timed_pair("quota", quota, "every call: insufficient_quota 429 after 0.5 s"),
        *_timed_pair("shared4", shared4, "4 executors x 500 inputs share one 500 req/min provider"),
        *_budget_pair("rpm500-budget", rpm500_budget, "rpm500 with limiter=LocalLimiter(rpm=500)"),
        *_budget_pair(
            "shared4-limiter",
            shared4_limiter,
            "shared4 with one LocalLimiter(rpm=500) shared by the 4 executors",
        ),
        Scenario(
            "shared4-redis",
            lambda impl, quick: _shared4_processes(impl, quick, shared=True),
            "shared4 in 4 real processes sharing one RedisLimiter(rpm=500); real time / 34",
            skip=dict(NO_LIMITER),
            compression=COMPRESSION,
            twin="shared4-limiter",
        ),
        Scenario(
            "shared4-procs",
            lambda impl, quick: _shared4_processes(impl, quick, shared=False),
            "shared4 in 4 real processes, adaptive control alone; real time / 34",
            skip={
                "phoenix": "n/a: the 4 processes run evalexec's executor",
                "floor": "n/a: the 4 processes run evalexec's executor",
            },
            compression=COMPRESSION,
            twin="shared4",
        ),
    ]
}
