"""Logging capacity: TrainingMetrics records per second MlflowTracker delivers, against the
record rate of the fastest training preset.

    python benchmarks/logging_capacity.py [--records 2000] [--repeats 3] [--train-steps 40] [--quick]

The tracker logs --records synthetic records (12 metric keys each: the 10 per-step keys and
two loss_by_source sets) with log_record, then flush(); the time from the first log_record
to the end of flush() is what delivery takes (the background thread batches them into
log_batch calls). Two stores take turns: the default sqlite file (temp dir) and a local
`mlflow server` on 127.0.0.1 (sqlite behind it; tests/mlflow_server.py starts it). Each
repetition is a fresh run in the same store; one untimed round per store first.

Baseline: steps/s of `slimtrack train --test --no-tracking` (the loop end to end, median
after warm-up), the most records per second slimtrack ever asks a tracker to take.
Capacity / training rate below 1 would mean a queue that grows for the whole run.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import mlflow

from common import (REPO_ROOT, WARMUP_STEPS, alternate, fmt_num, fmt_runs, machine_line, markdown_table, median,
                    slimtrack_train, steps_per_sec)
from slimtrack.metrics import TrainingMetrics
from slimtrack.tracking.process import start_mlflow_process
from slimtrack.tracking.tracker import MlflowTracker

sys.path.insert(0, str(REPO_ROOT / "tests"))
from mlflow_server import mlflow_server  # noqa: E402 — the test suite's server fixture, reused

SQLITE, SERVER = "sqlite file", "mlflow server (127.0.0.1)"


def synthetic_records(count: int) -> list[TrainingMetrics]:
    """Realistic values (the store does not care) for steps 1..count."""
    now = time.time()
    return [TrainingMetrics(step=step, loss=3.0 / step ** 0.1, accuracy=0.5, tokens_per_sec=12_000.0,
                            learning_rate=1e-3, timestamp=now + 0.01 * step, rss_mb=600.0, grad_norm=0.9,
                            step_time_ms=40.0, tokens_seen=512 * step, data_wait_ms=0.1,
                            loss_by_source={"PythonStdlibSource": 2.9, "PythonDocs": 3.1})
            for step in range(1, count + 1)]


def records_per_sec(uri: str, records: list[TrainingMetrics], spool_dir: Path) -> float:
    """One fresh run: log every record, flush; records / seconds from first log to flush end."""
    mlflow.set_tracking_uri(uri)
    tracker = MlflowTracker.start("bench-logging-capacity", f"capacity-{time.monotonic_ns()}", {},
                                  spool_dir=spool_dir, mlflow_process=start_mlflow_process(10))
    tracker.wait_ready()  # the MLflow process's start-up (~3 s of CPU) is a run's, not delivery's
    started = time.perf_counter()
    for record in records:
        tracker.log_record(record)
    delivered = tracker.flush()
    seconds = time.perf_counter() - started
    tracker.finish("FINISHED")
    if not delivered or tracker.offline:
        raise RuntimeError(f"records were not delivered to {uri} (offline: {tracker.offline})")
    return len(records) / seconds


def training_steps_per_sec(workdir: Path, steps: int) -> float:
    history = slimtrack_train(workdir, ["--test", "--max-chunks", str(steps), "--eval-interval", str(steps)],
                              tracking=False).history
    return median(steps_per_sec(history, min(WARMUP_STEPS, steps // 3)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=2000, help="records per measurement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--train-steps", type=int, default=40, help="steps of the --test training run")
    parser.add_argument("--quick", action="store_true", help="smoke run: 300 records, 2 repetitions")
    args = parser.parse_args()
    if args.quick:
        args.records, args.repeats, args.train_steps = 300, 2, 15
    os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"  # stdout is for the table
    records = synthetic_records(args.records)
    keys = len(records[0].as_metrics())
    with tempfile.TemporaryDirectory(prefix="bench-logging-") as tmp:
        workdir = Path(tmp)
        training = training_steps_per_sec(workdir, args.train_steps)
        sqlite_uri = f"sqlite:///{workdir / 'mlflow.db'}"
        with mlflow_server(workdir / "server") as url:
            uris = {SQLITE: sqlite_uri, SERVER: url}
            for uri in uris.values():  # untimed: store creation, migrations, first connection
                records_per_sec(uri, records[:50], workdir / "spool")
            results = alternate({name: (lambda uri=uri: records_per_sec(uri, records, workdir / "spool"))
                                 for name, uri in uris.items()}, args.repeats)
        mlflow.set_tracking_uri(None)

    print(f"Logging capacity: {args.records:,} records of {keys} metric keys each, log_record + flush, "
          f"median of {args.repeats} alternated; training record rate = steps/s of a {args.train_steps}-step "
          f"`slimtrack train --test --no-tracking`: {fmt_num(training, 1)} records/s")
    print(machine_line() + "\n")
    rows = []
    for name, runs in results.items():
        rate = median(runs)
        rows.append([name, fmt_runs(runs), fmt_num(rate), fmt_num(rate * keys), f"**{rate / training:.1f}x**"])
    print(markdown_table(["store", "runs (records/s)", "records/s", "metric points/s",
                          "capacity / training rate (test preset)"], rows))


if __name__ == "__main__":
    main()
