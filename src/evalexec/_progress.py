"""The progress bar and its status line; nothing at all when no bar format is given."""

from __future__ import annotations

import enum
import sys
from collections import Counter
from collections.abc import Callable
from typing import Any

# The module attribute `tqdm` is the progress bar's test seam: `Progress` looks it up
# here at each use, so tests put a recording bar in its place with
# `monkeypatch.setattr(evalexec._progress, "tqdm", ...)` (tests/conftest.py `bars`,
# tests/fakes.py `watched_run`). Keep it a module attribute, looked up at call time.
from tqdm.auto import tqdm

from evalexec._details import ExecutionStatus

__all__ = ["Progress"]

_STATUS_EVERY_SECONDS = 0.25
_SUMMARY_ORDER = tuple(
    status.value
    for status in (
        ExecutionStatus.COMPLETED,
        ExecutionStatus.COMPLETED_WITH_RETRIES,
        ExecutionStatus.FAILED,
    )
)


class Progress:
    """A `tqdm.auto` bar whose postfix shows the run's live status.

    ``status`` builds the postfix text; it is called at most every 0.25 s of
    ``clock`` time, so a fast run does not spend its time formatting strings. It
    counts the final statuses it is told of, for the summary line written at the end.
    """

    __slots__ = ("_bar", "_clock", "_counts", "_last_status", "_status", "note")

    def __init__(
        self,
        total: int | None,
        bar_format: str | None,
        status: Callable[[], str],
        clock: Callable[[], float],
    ) -> None:
        self._status = status
        self._clock = clock
        self._last_status = -_STATUS_EVERY_SECONDS
        self._counts: Counter[str] = Counter()
        self.note = ""  # ends the summary line when set (a budget learned, say)
        self._bar: Any = None
        if bar_format is not None:
            self._bar = tqdm(total=total, bar_format=bar_format)

    @property
    def shown(self) -> bool:
        return self._bar is not None

    @property
    def postfix(self) -> str:
        """The status text currently shown (empty when there is no bar)."""
        return "" if self._bar is None else str(self._bar.postfix or "")

    def advance(self, status: enum.Enum) -> None:
        """One more input reached its final `status`."""
        bar = self._bar
        if bar is None:
            return
        self._counts[status.value] += 1
        bar.update()
        self.refresh()

    def refresh(self, force: bool = False) -> None:
        bar = self._bar
        if bar is None:
            return
        now = self._clock()
        if force or now - self._last_status >= _STATUS_EVERY_SECONDS:
            self._last_status = now
            bar.set_postfix_str(self._status(), refresh=force)

    def write(self, message: str) -> None:
        """Print a line for the user (on stderr) without breaking the bar."""
        if self._bar is None:
            print(message, file=sys.stderr)
        else:
            tqdm.write(message, file=sys.stderr)

    def close(self, inputs: int, retries: int, seconds: float) -> None:
        """Close the bar and write the summary line: counts of each status of `inputs`,
        then the `note` when there is one."""
        bar = self._bar
        if bar is None:
            return
        self.refresh(force=True)
        bar.close()
        counts = [(status, self._counts[status]) for status in _SUMMARY_ORDER]
        counts.append(
            (ExecutionStatus.DID_NOT_RUN.value, max(0, inputs - sum(self._counts.values())))
        )
        parts = ", ".join(f"{count} {status.lower()}" for status, count in counts)
        tail = f"; {self.note}" if self.note else ""
        self.write(f"evalexec: {parts}; {retries} retries; {seconds:.1f} s{tail}")
