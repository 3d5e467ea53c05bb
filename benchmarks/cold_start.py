"""Cold start: how long `slimtrack train --test --max-chunks 1 --no-tracking` takes from launch
to its first finished step and to its exit, with a cold and a warm numba cache.

    python benchmarks/cold_start.py [--repeats 3] [--quick]

Cold: NUMBA_CACHE_DIR is a fresh empty folder for every run, so the native kernels compile
during the first step. Warm: one folder filled once by `slimtrack warmup` (not timed; its
time is printed) and reused by every warm run. The two take turns. "First step" is the
first record's timestamp in metrics_history.json minus the launch time; "exit" includes
the final evaluation, checkpoint and dashboard. Python's own bytecode caches are warm in
both cases: this isolates what the numba cache is worth.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from common import (PYTHON, alternate, bench_env, fmt_ratio, fmt_runs, machine_line, markdown_table, median,
                    run_command, slimtrack_train)

COLD, WARM = "cold numba cache", "warm numba cache (after slimtrack warmup)"


def launch(workdir: Path, cache_dir: Path) -> tuple[float, float]:
    """(seconds to the first finished step, seconds to exit) of one run."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    run = slimtrack_train(workdir, ["--test", "--max-chunks", "1"], tracking=False, NUMBA_CACHE_DIR=str(cache_dir))
    return run.history[0]["timestamp"] - run.launched, run.ended - run.launched


def fill_cache(workdir: Path, cache_dir: Path) -> float:
    """`slimtrack warmup` into cache_dir; returns its wall time."""
    started = time.perf_counter()
    run_command([PYTHON, "-m", "slimtrack", "warmup"], workdir, bench_env(workdir, NUMBA_CACHE_DIR=str(cache_dir)))
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 repetition")
    args = parser.parse_args()
    if args.quick:
        args.repeats = 1
    with tempfile.TemporaryDirectory(prefix="bench-cold-") as tmp:
        workdir = Path(tmp)
        warm_cache = workdir / "numba-warm"
        warmup_seconds = fill_cache(workdir, warm_cache)
        runs = alternate({COLD: lambda: launch(workdir, workdir / f"numba-cold-{time.monotonic_ns()}"),
                          WARM: lambda: launch(workdir, warm_cache)}, args.repeats)

    print(f"Cold start of `slimtrack train --test --max-chunks 1 --no-tracking`, seconds, median of "
          f"{args.repeats} alternated (`slimtrack warmup` took {warmup_seconds:.1f} s)")
    print(machine_line() + "\n")
    rows = [[name, fmt_runs((f for f, _ in values), 1), f"{median(f for f, _ in values):.1f}",
             fmt_runs((e for _, e in values), 1), f"{median(e for _, e in values):.1f}"]
            for name, values in runs.items()]
    print(markdown_table(["numba cache", "runs to first step", "first step", "runs to exit", "exit"], rows))
    first = {name: median(f for f, _ in values) for name, values in runs.items()}
    ended = {name: median(e for _, e in values) for name, values in runs.items()}
    print(f"\ncold / warm: first step {fmt_ratio(first[COLD], first[WARM])}, exit {fmt_ratio(ended[COLD], ended[WARM])}; "
          f"the warm cache saves {first[COLD] - first[WARM]:.1f} s before the first step")


if __name__ == "__main__":
    main()
