"""The progress bar and its status line; nothing at all when no bar format is given."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from tqdm.auto import tqdm

__all__ = ["Progress"]

_STATUS_EVERY_SECONDS = 0.25


class Progress:
    """A `tqdm.auto` bar whose postfix shows the run's live status.

    ``status`` builds the postfix text; it is called at most every 0.25 s of
    ``clock`` time, so a fast run does not spend its time formatting strings.
    """

    __slots__ = ("_bar", "_clock", "_last_status", "_status")

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

    def advance(self) -> None:
        """One more input reached its final status."""
        bar = self._bar
        if bar is None:
            return
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
        """Print a line for the user without breaking the bar."""
        tqdm.write(message, file=sys.stderr)

    def close(self, summary: str | None = None) -> None:
        bar = self._bar
        if bar is None:
            return
        self.refresh(force=True)
        bar.close()
        if summary:
            self.write(summary)
