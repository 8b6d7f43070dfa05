"""What evalexec tells the user, in one voice for both executors.

Lines meant for the person at the terminal (a run stopped early) go to stderr through
the progress bar's `write`, so they never break a bar; the rest go to the
``evalexec`` logger: per-retry lines at INFO, failures and early stops at WARNING.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Literal

from evalexec.exceptions import describe_error

__all__ = [
    "StopReason",
    "budget_learned",
    "cancelled",
    "describe",
    "failed",
    "inputs_fewer_than_len",
    "inputs_more_than_len",
    "interrupted",
    "learned_budget",
    "retrying",
    "stopped_early",
    "timed_out",
]

logger = logging.getLogger("evalexec")

StopReason = Literal[
    "completed",  # every input reached a final status
    "failed",  # an input FAILED with exit_on_error=True
    "quota",  # the provider said the quota is exhausted (or asked for a longer wait)
    "interrupted",  # the termination signal, or a cancel from code
    "deadline",  # the run's deadline passed
    "error",  # the inputs, the checkpoint or the function raised something fatal
    "cancelled",  # the task awaiting the run was cancelled from outside
]

describe = describe_error  # one safe, bounded description of an exception


def interrupted(write: Callable[[str], None]) -> None:
    write(
        "evalexec: interrupted; returning the outputs finished so far "
        "(the rest are DID NOT RUN). Press Ctrl-C again to abort at once."
    )


def cancelled(write: Callable[[str], None]) -> None:
    write("evalexec: cancelled; returning the outputs finished so far (the rest are DID NOT RUN).")


def stopped_early(write: Callable[[str], None], reason: str, cause: str) -> None:
    """Retrying cannot help any input (the quota is exhausted, a wait too long, a misuse):
    `reason` is the retry policy's sentence, `cause` the error that said so."""
    write(
        f"evalexec: stopping the run: {reason} ({cause}). "
        "Calls already in flight finish; finished outputs are kept."
    )


def budget_learned(budget: str) -> None:
    """The provider's rate-limit headers stated its limits; the run paces to them."""
    logger.info(
        "evalexec: the provider's rate-limit headers give its budget (%s per minute); "
        "pacing the rest of the run to it",
        budget,
    )


def learned_budget(budget: str) -> str:
    """The summary line's note on a budget learned from the provider."""
    return f"budget learned from the provider: {budget}"


def deadline_passed(seconds: float | None) -> None:
    logger.warning("evalexec: the deadline of %s s passed; the run was stopped", seconds)


def retrying(index: int, attempt: int, error: str, delay: float) -> None:
    logger.info("input %d raised %s (attempt %d); retrying in %.2f s", index, error, attempt, delay)


def timed_out(index: int, attempt: int) -> None:
    logger.info("input %d timed out (attempt %d); retrying", index, attempt)


def failed(index: int, attempts: int, cause: str) -> None:
    logger.warning("input %d FAILED after %d attempts: %s", index, attempts, cause)


def inputs_more_than_len(total: int) -> None:
    logger.warning(
        "inputs yielded more items than len() reported (%d); the extra items were not run",
        total,
    )


def inputs_fewer_than_len(drawn: int, total: int) -> None:
    logger.warning(
        "inputs yielded %d items but len() reported %d; the missing ones are DID NOT RUN",
        drawn,
        total,
    )
