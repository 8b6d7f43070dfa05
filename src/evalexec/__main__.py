"""Command line: ``python -m evalexec demo`` runs the executor against a simulated LLM."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m evalexec", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo", help="run AsyncExecutor over a simulated, rate-limited LLM provider"
    )
    demo.add_argument("--inputs", type=int, default=300, help="number of rows (default 300)")
    demo.add_argument("--concurrency", type=int, default=20, help="workers (default 20)")
    demo.add_argument(
        "--rpm", type=float, default=1500.0, help="the provider's requests per minute (1500)"
    )
    demo.add_argument("--latency", type=float, default=0.25, help="median seconds per call (0.25)")
    args = parser.parse_args(argv)
    from evalexec._demo import run_demo

    return run_demo(args.inputs, args.concurrency, args.rpm, args.latency)


if __name__ == "__main__":
    sys.exit(main())
