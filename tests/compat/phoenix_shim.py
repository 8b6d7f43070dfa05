"""Copied as ``conftest.py`` beside Phoenix's own test files (never collected here):
before they are collected, ``phoenix.evals.executors`` becomes evalexec's module.

``phoenix`` and ``phoenix.evals`` are stand-in modules, so none of Phoenix's code is
imported (Phoenix need not be installed) and every name the tests import comes from
evalexec.
"""

from __future__ import annotations

import sys
import types

import pytest

import evalexec.executors

_phoenix = types.ModuleType("phoenix")
_phoenix.__path__ = []
_evals = types.ModuleType("phoenix.evals")
_evals.__path__ = []
_evals.executors = evalexec.executors  # type: ignore[attr-defined]
_phoenix.evals = _evals  # type: ignore[attr-defined]
sys.modules.update(
    {"phoenix": _phoenix, "phoenix.evals": _evals, "phoenix.evals.executors": evalexec.executors}
)


def pytest_report_header(config: pytest.Config) -> str:
    return f"phoenix.evals.executors is evalexec.executors from {evalexec.executors.__file__}"
