from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "phoenix_suite: runs Phoenix's own executor and controller tests against evalexec "
        "(needs EVALEXEC_PHOENIX_TESTS; see tests/compat/test_phoenix_suite.py)",
    )
