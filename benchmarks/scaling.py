"""Data-parallel scaling: tokens/s of 1 process vs N processes under torchrun, side by side.

On a CPU machine the processes share the cores: 1 process uses all of them, N processes
each use their share (slimtrack sizes the thread pools from LOCAL_WORLD_SIZE). Throughput
is the whole loop's (all ranks' tokens after the warm-up over their wall time).

    python benchmarks/scaling.py [--preset small] [--max-chunks 40] [--repeats 3] [--procs 2]
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
import time
from pathlib import Path

from common import (PYTHON, TrainRun, alternate, bench_env, fmt_num, fmt_ratio, fmt_runs, machine_line,
                    markdown_table, median, read_history, run_command, slimtrack_train, window_rate)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun_train(workdir: Path, procs: int, args: list[str]) -> TrainRun:
    out = workdir / f"ddp-{time.monotonic_ns()}"
    out.mkdir(parents=True)
    cmd = [PYTHON, "-m", "torch.distributed.run", "--nproc-per-node", str(procs), "--master-port",
           str(free_port()), "-m", "slimtrack", "train", "--output-dir", str(out), *args]
    launched = time.time()
    run_command(cmd, out, bench_env(out))
    return TrainRun(read_history(out / "training_viz" / "metrics_history.json"), launched, time.time())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--max-chunks", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    train_args = ["--preset", args.preset, "--max-chunks", str(args.max_chunks), "--device", args.device,
                  "--eval-interval", str(args.max_chunks), "--no-tracking"]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        runs = alternate({
            "1 process": lambda: slimtrack_train(work, train_args, tracking=True),
            f"{args.procs} processes": lambda: torchrun_train(work, args.procs, train_args),
        }, args.repeats)
    rates = {name: [window_rate(r.history) for r in results] for name, results in runs.items()}
    base = median(rates["1 process"])
    rows = [[name, fmt_runs(values), fmt_num(median(values)), fmt_ratio(median(values), base)]
            for name, values in rates.items()]
    print(f"# data-parallel scaling ({machine_line()}; preset {args.preset}, {args.max_chunks} chunks, "
          f"{args.device})")
    print(markdown_table(["processes", "runs (tok/s each)", "median tok/s", "vs 1 process"], rows))


if __name__ == "__main__":
    sys.exit(main())
