"""Fetch Phoenix's executor and controller tests into a directory, for
``EVALEXEC_PHOENIX_TESTS`` (see tests/compat/test_phoenix_suite.py).

``python -m tests.compat.fetch_phoenix_tests DIR``. The files are Phoenix's (Apache
2.0), read from GitHub at pinned commits; they are not kept in this repository.
"""

from __future__ import annotations

import sys
import urllib.request
from pathlib import Path

from tests.compat.phoenix_files import PHOENIX_FILES, PHOENIX_REPO, PHOENIX_TESTS_DIR

_RAW = "https://raw.githubusercontent.com"


def fetch(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, commit in PHOENIX_FILES.items():
        url = f"{_RAW}/{PHOENIX_REPO}/{commit}/{PHOENIX_TESTS_DIR}/{name}"
        with urllib.request.urlopen(url, timeout=30) as response:
            (directory / name).write_bytes(response.read())
        written.append(directory / name)
    return written


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m tests.compat.fetch_phoenix_tests DIR", file=sys.stderr)
        return 2
    for path in fetch(Path(argv[0])):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
