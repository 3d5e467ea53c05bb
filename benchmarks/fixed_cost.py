"""Fixed cost of tracking: the whole-process wall time of `slimtrack train --test` tracked
(a sqlite store, the final model logged) vs the same run with `--no-tracking`.

    python benchmarks/fixed_cost.py [--repeats 3] [--quick]

Three kinds take turns: tracked as a repeated run (the program cache holds the model's
program), tracked with the model exported (``--program-cache off``, as a new architecture's
first run does) and untracked, after one untimed tracked run that creates the store's
tables, warms the caches and fills the program cache. Each run has its own folder and
experiment, in one sqlite store of a temporary folder. The breakdown comes from the run
itself: "start-up" is launch to the first step's record (metrics_history.json), "loop"
the first to the last record, "end" the last record to the console's "run finished" line
(final checkpoint, last dashboard, model export and log_model, the final flush, the run's
status), "exit" that line to the process's exit. "model logged" is when the logged
model's files were complete in the store, counted from the last record.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from common import PYTHON, bench_env, machine_line, markdown_table, median, read_history

TRACKED = "tracked"  # an architecture run before: the program cache holds its program (program_cache.py)
EXPORTED = "tracked, model exported"  # --program-cache off: as a new architecture's first run
UNTRACKED = "--no-tracking"
FINISHED_LINE = "slimtrack: run finished"


@dataclass
class Timed:
    total: float
    startup: float
    loop: float
    end: float
    exit: float
    model_logged: float | None  # seconds after the last record; None: no model in the store


def launch(workdir: Path, tracking: bool, args: list[str]) -> Timed:
    """One `slimtrack train --test` in a fresh process; its phases from its records and console."""
    out = workdir / f"run-{time.monotonic_ns()}"
    out.mkdir()
    cmd = [PYTHON, "-m", "slimtrack", "train", "--test", "--output-dir", str(out / "output"),
           "--experiment", out.name, *args]
    if not tracking:
        cmd.append("--no-tracking")
    lines: list[tuple[float, str]] = []
    launched = time.time()
    process = subprocess.Popen(cmd, cwd=out, env=bench_env(workdir), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    reader = threading.Thread(target=lambda: lines.extend((time.time(), line) for line in process.stderr))
    reader.start()
    returncode = process.wait()
    ended = time.time()
    reader.join()
    if returncode != 0:
        tail = "".join(line for _, line in lines[-15:])
        raise RuntimeError(f"{' '.join(cmd)} exited with {returncode}:\n{tail}")
    history = read_history(out / "output" / "training_viz" / "metrics_history.json")
    first, last = history[0]["timestamp"], history[-1]["timestamp"]
    finished = next(stamp for stamp, line in lines if line.startswith(FINISHED_LINE))
    model_files = [path for path in (out / "mlruns").glob("*/models/*/artifacts/**/*") if path.is_file()]
    model_logged = max(path.stat().st_mtime for path in model_files) - last if model_files else None
    if tracking and model_logged is None:
        raise RuntimeError(f"{out}: the tracked run logged no model")
    return Timed(ended - launched, first - launched, last - first, finished - last, ended - finished, model_logged)


def fmt(values: list[float | None]) -> str:
    known = [v for v in values if v is not None]
    return f"{median(known):.1f}" if known else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 pair")
    args = parser.parse_args()
    if args.quick:
        args.repeats = 1
    kinds = {TRACKED: (True, []), EXPORTED: (True, ["--program-cache", "off"]), UNTRACKED: (False, [])}
    runs: dict[str, list[Timed]] = {name: [] for name in kinds}
    with tempfile.TemporaryDirectory(prefix="bench-fixed-") as tmp:
        workdir = Path(tmp)
        cache = ["--program-cache", str(workdir / "programs")]
        launch(workdir, True, cache)  # untimed: the store's tables, the caches, the program's template
        for _ in range(args.repeats):
            for name, (tracking, extra) in kinds.items():
                runs[name].append(launch(workdir, tracking, extra or cache))

    print(f"Fixed cost of tracking: `slimtrack train --test` tracked (sqlite, model logged) vs --no-tracking, "
          f"seconds, median of {args.repeats} alternated runs of each")
    print(machine_line() + "\n")
    columns = ("total", "startup", "loop", "end", "exit", "model_logged")
    header = ["run", "whole process (runs)", "start-up", "loop", "end (to 'run finished')",
              "'run finished' to exit", "model logged (after the loop)"]
    rows = []
    for name, timed in runs.items():
        totals = ", ".join(f"{t.total:.1f}" for t in timed)
        rows.append([name, f"{fmt([t.total for t in timed])} ({totals})",
                     *(fmt([getattr(t, c) for t in timed]) for c in columns[1:])])
    for name in (TRACKED, EXPORTED):
        rows.append([f"difference, {name}", *(f"{median([getattr(t, c) for t in runs[name]]) - median([getattr(u, c) for u in runs[UNTRACKED]]):+.1f}"
                                             for c in columns[:-1]), ""])
    print(markdown_table(header, rows))
    for name in (TRACKED, EXPORTED):
        pairs = [t.total - u.total for t, u in zip(runs[name], runs[UNTRACKED])]
        print(f"\nPer pair, {name} minus untracked: {', '.join(f'{d:+.1f}' for d in pairs)} s "
              f"(median {median(pairs):+.1f} s; target: at most +2.0 s)")

if __name__ == "__main__":
    main()
