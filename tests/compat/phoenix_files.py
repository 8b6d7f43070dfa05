"""Which of Phoenix's test files the Phoenix suite runs, and from where."""

from __future__ import annotations

PHOENIX_REPO = "Arize-ai/phoenix"
PHOENIX_TESTS_DIR = "packages/phoenix-evals/tests/phoenix/evals"
# file name -> the commit it is read at: the versions that match Phoenix 3.9.4's
# executors (both pass against arize-phoenix-evals 3.9.4 itself).
PHOENIX_FILES = {
    "test_executor.py": "d11825098b1f2a4fec79b4df5f5f746917b45931",
    "test_concurrency_controller.py": "a47237099e395468f0436475f7103f817fc5e1d8",
}
