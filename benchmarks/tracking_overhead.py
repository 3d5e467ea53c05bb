"""Tracking overhead: tokens/s of `slimtrack train` with full MLflow tracking vs --no-tracking.

    python benchmarks/tracking_overhead.py [--preset small] [--max-chunks 64] [--repeats 3] [--quick]

Same config, alternated (on, off, on, off, ...) in one invocation, each run a fresh
process with its own sqlite store. "loop" is a run's tokens after the warm-up steps over
their wall time (from its local metrics_history.json, written in both modes), so the
deliveries and the dashboard upload count however few steps they land on; "step" is the
median of the trainer's own forward-to-update rates, which only sees the background
thread competing for the cores. Each is the median of the runs. The tracker's own count
of the CPU it took (`tracking/cpu_share`) is printed per run.
Target (issue 8): tracking / no-tracking >= 0.99 (loop).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from common import (WARMUP_STEPS, TrainRun, alternate, fmt_num, fmt_runs, machine_line, markdown_table, median,
                    median_step_rate, slimtrack_train, target_note, window_rate)
from end_to_end import tracking_cpu_line

TARGET = 0.99
ON, OFF = "full tracking", "--no-tracking"


def run_once(workdir: Path, tracking: bool, args: argparse.Namespace) -> TrainRun:
    train_args = ["--preset", args.preset, "--max-chunks", str(args.max_chunks), "--kernels", args.kernels,
                  "--eval-interval", str(args.max_chunks)]  # evaluate at the end only
    return slimtrack_train(workdir, train_args, tracking=tracking)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--max-chunks", type=int, default=64, help="steps per run (past 50: a dashboard in the window)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--kernels", default="native")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 repetition of 8 steps")
    args = parser.parse_args()
    if args.quick:
        args.max_chunks, args.repeats = 8, 1
    warmup = min(WARMUP_STEPS, args.max_chunks // 3)
    with tempfile.TemporaryDirectory(prefix="bench-tracking-") as tmp:
        runs = alternate({ON: lambda: run_once(Path(tmp), True, args),
                          OFF: lambda: run_once(Path(tmp), False, args)}, args.repeats)
    print(f"Tracking overhead, preset {args.preset}, {args.max_chunks} steps per run, kernels {args.kernels}, "
          f"tokens/s after {warmup} warm-up steps (loop: tokens over wall time; step: median step rate), "
          f"median of {args.repeats} runs")
    print(machine_line() + "\n")
    rows, medians = [], {}
    for measure, rate in (("loop", window_rate), ("step", median_step_rate)):
        for mode in (ON, OFF):
            per_run = [rate(run.history, warmup) for run in runs[mode]]
            medians[measure, mode] = median(per_run)
            rows.append([measure, mode, fmt_runs(per_run), fmt_num(medians[measure, mode])])
    print(markdown_table(["measure", "mode", "runs (tok/s each)", "median tok/s"], rows))
    for measure in ("loop", "step"):
        ratio = medians[measure, ON] / medians[measure, OFF]
        note = f" ({target_note(ratio, TARGET)}, target >= {TARGET})" if measure == "loop" else ""
        print(f"\nratio tracking / no-tracking ({measure}): {ratio:.3f}{note}", end="")
    print(tracking_cpu_line([run.tracking_cpu_share for run in runs[ON] if run.tracking_cpu_share is not None]))


if __name__ == "__main__":
    main()
