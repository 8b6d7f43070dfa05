from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _quiet_evalexec_logger() -> Iterator[None]:
    """Keep per-retry log lines out of the test output (tests that read logs use caplog)."""
    logger = logging.getLogger("evalexec")
    before = logger.level
    logger.setLevel(logging.ERROR)
    yield
    logger.setLevel(before)
