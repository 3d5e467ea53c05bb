"""Tracking overhead: tokens/s of `slimtrack train` with full MLflow tracking vs --no-tracking.

Same config, alternated (on, off, on, off, ...) in one invocation, each run a fresh
process with its own sqlite store. Throughput is the median per-step tokens/s of a run
(from its local metrics_history.json, written in both modes), skipping warm-up steps.

    python benchmarks/tracking_overhead.py [--preset small] [--max-chunks 60] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WARMUP_STEPS = 5


def run_once(workdir: Path, tracking: bool, args: argparse.Namespace) -> float:
    out = workdir / f"{'on' if tracking else 'off'}-{time.monotonic_ns()}"
    cmd = [sys.executable, "-m", "slimtrack", "train", "--preset", args.preset, "--max-chunks",
           str(args.max_chunks), "--output-dir", str(out), "--kernels", args.kernels, "--eval-interval",
           str(args.max_chunks)]
    if not tracking:
        cmd.append("--no-tracking")
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{workdir / 'mlflow.db'}", "TQDM_DISABLE": "1"}
    subprocess.run(cmd, cwd=workdir, env=env, check=True, capture_output=True, text=True)
    history = json.loads((out / "training_viz" / "metrics_history.json").read_text())
    return statistics.median(row["tokens_per_sec"] for row in history[WARMUP_STEPS:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--max-chunks", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--kernels", default="native")
    args = parser.parse_args()
    on, off = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            on.append(run_once(Path(tmp), True, args))
            off.append(run_once(Path(tmp), False, args))
    med_on, med_off = statistics.median(on), statistics.median(off)
    print(f"# tracking overhead ({time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, preset {args.preset}, {args.max_chunks} chunks, kernels {args.kernels})")
    print("| mode | runs (median tok/s each) | median tok/s |")
    print("|---|---|---|")
    print(f"| full tracking | {', '.join(f'{v:,.0f}' for v in on)} | {med_on:,.0f} |")
    print(f"| --no-tracking | {', '.join(f'{v:,.0f}' for v in off)} | {med_off:,.0f} |")
    print(f"\nratio tracking/no-tracking: {med_on / med_off:.3f} (target >= 0.98)")


if __name__ == "__main__":
    main()
