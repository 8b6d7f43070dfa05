"""Restoring a large checkpoint never holds the event loop, so a Ctrl-C during it lands.

Every input of these runs finished in an earlier run, so the producer restores them
one after another without a single wait of its own; it must still give the loop a turn
every `DRAW_BATCH` inputs, or a timer, a callback and the termination signal's handler
would wait for the whole restore.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from evalexec._engine import DRAW_BATCH
from evalexec.executors import AsyncExecutor, ExecutionStatus, _unset
from tests.fakes import FakeGenerate, output_for

S = ExecutionStatus
TOTAL = 20_000


class Drawn:
    """`range(TOTAL)` as a sized iterable that counts the inputs drawn from it, and calls
    `on_first` (on the run's loop) as the first is drawn: the start of the restore."""

    def __init__(self, on_first: Callable[[asyncio.AbstractEventLoop], None]) -> None:
        self.on_first = on_first
        self.count = 0

    def __len__(self) -> int:
        return TOTAL

    def __iter__(self) -> Iterator[int]:
        for item in range(TOTAL):
            if item == 0:
                self.on_first(asyncio.get_running_loop())
            self.count += 1
            yield item


@pytest.fixture(scope="module")
def finished_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint holding all TOTAL inputs, COMPLETED by an earlier run (the runs here
    only read it)."""
    path = tmp_path_factory.mktemp("restore") / "run.checkpoint"
    _, details = AsyncExecutor(FakeGenerate(), concurrency=50, checkpoint=path).run(range(TOTAL))
    assert {d.status for d in details} == {S.COMPLETED}
    return path


def test_a_callback_scheduled_as_the_restore_starts_runs_within_one_batch(
    finished_file: Path,
) -> None:
    seen: list[int] = []
    inputs = Drawn(lambda loop: loop.call_soon(lambda: seen.append(inputs.count)))
    fake = FakeGenerate()
    outputs, details = AsyncExecutor(fake, checkpoint=finished_file).run(inputs)
    assert len(seen) == 1
    assert seen[0] <= DRAW_BATCH  # not TOTAL: the loop was never held for the restore
    assert outputs == [output_for(i) for i in range(TOTAL)]
    assert {d.status for d in details} == {S.COMPLETED}
    assert fake.calls == []  # all restored


def test_a_termination_signal_sent_as_the_restore_starts_stops_it_with_nothing_lost(
    finished_file: Path,
) -> None:
    drawn_at_signal: list[int] = []

    def send_signal() -> None:
        drawn_at_signal.append(inputs.count)
        os.kill(os.getpid(), signal.SIGUSR1)

    inputs = Drawn(lambda loop: loop.call_soon(send_signal))
    before = signal.getsignal(signal.SIGUSR1)
    fake = FakeGenerate()
    executor = AsyncExecutor(fake, checkpoint=finished_file, termination_signal=signal.SIGUSR1)
    outputs, details = executor.run(inputs)

    [sent_at] = drawn_at_signal
    restored = sum(d.status is S.COMPLETED for d in details)
    assert sent_at <= DRAW_BATCH
    assert restored == inputs.count  # every input drawn was restored ...
    assert sent_at <= restored <= sent_at + DRAW_BATCH  # ... and the stop came within a batch
    assert restored < TOTAL  # the signal was not lost
    assert outputs == [output_for(i) for i in range(restored)] + [_unset] * (TOTAL - restored)
    assert [d.status for d in details] == [S.COMPLETED] * restored + [S.DID_NOT_RUN] * (
        TOTAL - restored
    )
    assert fake.calls == []
    assert signal.getsignal(signal.SIGUSR1) is before
