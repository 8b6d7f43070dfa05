"""Benchmark runner for evalexec against Phoenix's executors and a bare-asyncio floor.

Run from the repository root:

    .venv/bin/python -m bench.run                       # every scenario, every impl
    .venv/bin/python -m bench.run --quick               # smaller N: a smoke run
    .venv/bin/python -m bench.run --scenario latency --scenario hang --impl evalexec
    .venv/bin/python -m bench.run --timeout 60          # per-row time limit (s)

Each (scenario, implementation) pair runs in its own subprocess with a time limit; a
pair that exceeds it is reported as a TIMEOUT row. The runner prints one markdown table
and writes the same rows as JSON to bench/results/latest.json (or `--json PATH`), a
local file that git ignores.
See bench/README.md for what each scenario measures and how ideal and efficiency are
defined.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import resource
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python bench/run.py` also works
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.impls import IMPLS, ImplUnavailable, RowSkipped, load_module
from bench.scenarios import SCENARIOS, SEED

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS = REPO_ROOT / "bench" / "results" / "latest.json"
MEM_LABEL = "peak RSS Δ (MiB)"


@dataclass
class Row:
    scenario: str
    impl: str
    status: str  # "ok", "error", "skipped", "TIMEOUT"
    wall: float | None = None
    ideal: float | None = None
    efficiency: float | None = None
    calls: int | None = None
    wasted: int | None = None
    peak_rss_mib: float | None = None
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------- worker side


def _rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def worker(scenario: str, impl: str, quick: bool, out: Path) -> int:
    """Run one pair in this process and write its Row as JSON to `out`."""
    spec = SCENARIOS[scenario]
    random.seed(SEED)  # executors' own jitter (global `random`) repeats from run to run
    if impl != "floor" and impl not in spec.skip:
        # Import first, so the memory column does not count the import itself.
        with contextlib.suppress(ImplUnavailable):
            load_module(impl)
    rss_before = _rss_kib()
    try:
        m = spec.run(impl, quick)
    except ImplUnavailable as exc:
        status = "skipped" if impl == "phoenix" else "error"
        row = Row(scenario, impl, status, notes=[f"{impl} not importable: {exc}"])
    except RowSkipped as exc:  # the implementation lacks the feature measured
        row = Row(scenario, impl, "skipped", notes=[str(exc)])
    except Exception as exc:
        tb = traceback.format_exc(limit=-3).strip().splitlines()
        row = Row(scenario, impl, "error", notes=[f"{type(exc).__name__}: {exc}", *tb[-4:]])
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        row = Row(
            scenario,
            impl,
            "ok",
            wall=m.wall,
            ideal=m.ideal,
            efficiency=m.efficiency,
            calls=m.calls,
            wasted=m.wasted,
            peak_rss_mib=max(0, peak - rss_before) / 1024,
            notes=m.notes,
            extra={**m.extra, "incomplete": m.incomplete},
        )
    out.write_text(json.dumps(asdict(row)))
    return 0


# ---------------------------------------------------------------- parent side


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(REPO_ROOT), str(REPO_ROOT / "src")]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONHASHSEED"] = "0"
    return env


def _tail(path: Path, lines: int = 3) -> list[str]:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return []
    return [line[:200] for line in text[-lines:]]


def run_pair(scenario: str, impl: str, quick: bool, limit: float) -> Row:
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        out = Path(tmp) / "row.json"
        log = Path(tmp) / "log.txt"
        cmd = [sys.executable, "-m", "bench.run", "--worker", scenario, impl, "--out", str(out)]
        if quick:
            cmd.append("--quick")
        start = time.perf_counter()
        with log.open("wb") as sink:
            proc = subprocess.Popen(
                cmd,
                cwd=REPO_ROOT,
                env=_child_env(),
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            try:
                code = proc.wait(timeout=limit)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return Row(
                    scenario,
                    impl,
                    "TIMEOUT",
                    wall=time.perf_counter() - start,
                    notes=[f"killed after {limit:g} s"],
                )
        if out.exists():
            data = json.loads(out.read_text())
            return Row(**data)
        return Row(scenario, impl, "error", notes=[f"worker exited {code}", *_tail(log)])


def compare_with_floor(rows: list[Row]) -> None:
    """Add "+x% vs floor" to rows whose scenario has a floor row that did all its work."""
    floors = {
        r.scenario: r.wall
        for r in rows
        if r.impl == "floor" and r.status == "ok" and not r.extra.get("incomplete")
    }
    for r in rows:
        floor_wall = floors.get(r.scenario)
        if r.impl == "floor" or r.status != "ok" or not floor_wall or r.wall is None:
            continue
        if r.extra.get("paired_with_floor"):
            continue  # efficiency already compares with the floor, in the same process
        r.notes.append(f"wall {100.0 * (r.wall / floor_wall - 1):+.1f}% vs floor")
        r.extra["vs_floor"] = r.wall / floor_wall


def _fmt(value: float | int | None, digits: int = 3) -> str:
    if value is None:
        return "—"
    if isinstance(value, int):
        return f"{value:,}"
    if value != 0 and abs(value) < 0.01:
        return f"{value:.5f}"
    return f"{value:.{digits}f}"


def _label(scenario: str) -> str:
    spec = SCENARIOS[scenario]
    if spec.virtual:
        return f"{scenario} (virtual)"
    if spec.compression != 1:
        return f"{scenario} (real, /{spec.compression:g})"
    return scenario


def _wasted_share(row: Row) -> float | None:
    if row.calls is None or row.wasted is None or not row.calls:
        return None
    return 100.0 * row.wasted / row.calls


def _eff_cell(row: Row) -> str:
    if row.status != "ok":
        return row.status
    return _fmt(row.efficiency, 2) + ("*" if row.extra.get("incomplete") else "")


def compression_table(rows: Sequence[Row], tolerance: float = 0.10) -> str | None:
    """Compressed real-time rows next to their virtual-time twins, or None if no pair.

    For each scenario run in both forms and each implementation: both efficiencies, their
    ratio (real / virtual) and the wasted share of calls in both; ✗ when the efficiencies
    differ by more than `tolerance` relative to the virtual one (or a row did not run).
    """
    by_key = {(r.scenario, r.impl): r for r in rows}
    header = [
        "scenario",
        "impl",
        "N",
        "virtual eff.",
        "real-time eff.",
        "real / virtual",
        "wasted % virtual",
        "wasted % real",
        f"within {100 * tolerance:g} %",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in rows:
        twin = SCENARIOS[r.scenario].twin
        virtual = by_key.get((twin, r.impl)) if twin is not None else None
        if virtual is None or r.status == "skipped" or virtual.status == "skipped":
            continue
        ratio: float | None = None
        if r.status == "ok" and virtual.status == "ok":
            v_eff, r_eff = virtual.efficiency or 0.0, r.efficiency or 0.0
            ratio = r_eff / v_eff if v_eff else (1.0 if r_eff == 0 else None)
        good = ratio is not None and abs(ratio - 1.0) <= tolerance
        v_waste, r_waste = _wasted_share(virtual), _wasted_share(r)
        v_n, r_n = virtual.extra.get("n"), r.extra.get("n")
        cells = [
            f"{twin} / {r.scenario}",
            r.impl,
            _fmt(v_n) if v_n == r_n else f"{_fmt(v_n)} / {_fmt(r_n)}",
            _eff_cell(virtual),
            _eff_cell(r),
            "—" if ratio is None else f"{ratio:.2f}",
            "—" if v_waste is None else f"{v_waste:.1f}",
            "—" if r_waste is None else f"{r_waste:.1f}",
            "✓" if good else "✗",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) if len(lines) > 2 else None


def markdown_table(rows: Sequence[Row]) -> str:
    header = [
        "scenario",
        "impl",
        "wall (s)",
        "ideal (s)",
        "efficiency",
        "calls",
        "wasted",
        MEM_LABEL,
        "notes",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in rows:
        notes = "; ".join(r.notes) if r.status == "ok" else f"{r.status}: " + "; ".join(r.notes)
        cells = [
            _label(r.scenario),
            r.impl,
            _fmt(r.wall) if r.status == "ok" else r.status,
            _fmt(r.ideal),
            _fmt(r.efficiency, 2) + ("*" if r.extra.get("incomplete") else ""),
            _fmt(r.calls),
            _fmt(r.wasted),
            _fmt(r.peak_rss_mib, 1),
            notes.replace("|", "/"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--scenario", action="append", choices=sorted(SCENARIOS), default=None)
    parser.add_argument("--impl", action="append", choices=IMPLS, default=None)
    parser.add_argument("--quick", action="store_true", help="smaller N, a smoke run")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per row")
    parser.add_argument("--json", type=Path, default=RESULTS, help="where to write rows")
    parser.add_argument("--worker", nargs=2, metavar=("SCENARIO", "IMPL"), help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        scenario, impl = args.worker
        return worker(scenario, impl, args.quick, args.out)

    scenarios = args.scenario or list(SCENARIOS)
    impls = args.impl or list(IMPLS)
    rows: list[Row] = []
    load = os.getloadavg()
    started = time.perf_counter()
    for name in scenarios:
        for impl in impls:
            skip = SCENARIOS[name].skip.get(impl)
            if skip is not None:
                row = Row(name, impl, "skipped", notes=[skip])
            else:
                row = run_pair(name, impl, args.quick, args.timeout)
            rows.append(row)
            shown = _fmt(row.wall) if row.status == "ok" else row.status
            print(f"  {name:<16} {impl:<9} {shown}", file=sys.stderr, flush=True)
    elapsed = time.perf_counter() - started
    compare_with_floor(rows)

    table = markdown_table(rows)
    print(table)
    print(
        f"\n{MEM_LABEL}: max RSS of the worker process minus its RSS before the scenario;"
        f" the memory row's notes use tracemalloc. * = not every input completed: efficiency"
        f" is then goodput (completed/N x ideal/wall). Total {elapsed:.0f} s"
        f"{' (quick)' if args.quick else ''}; load average at start"
        f" {load[0]:.2f} on {os.cpu_count()} CPUs (real-time rows are sensitive to other load)."
    )
    pairs = compression_table(rows)
    if pairs is not None:
        ks = sorted({f"{SCENARIOS[r.scenario].compression:g}" for r in rows} - {"1"})
        print(f"\n### compressed real time vs virtual time\n\n{pairs}")
        print(
            "\n-rt rows run the virtual scenario in real time with every time constant of"
            f" the provider and of the executors divided by K = {', '.join(ks)} (rates"
            " multiplied by K); ✗ = efficiencies differ by more than 10 % (relative to"
            " virtual). See bench/README.md, 'Compressed real time'."
        )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "quick": args.quick,
        "python": sys.version.split()[0],
        "elapsed_seconds": elapsed,
        "load_average_at_start": load,
        "cpus": os.cpu_count(),
        "rows": [asdict(r) for r in rows],
    }
    args.json.write_text(json.dumps(payload, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
