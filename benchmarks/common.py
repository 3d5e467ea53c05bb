"""Shared helpers of the benchmark scripts: the machine, medians and ratios, markdown
tables, `slimtrack train` in a subprocess, and the cached 50k BPE tokenizer.

Every script measures a baseline and slimtrack alternately in ONE invocation (so a
neighbour's load hits both alike) and prints medians and ratios; none asserts on time.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Callable, Iterable, Iterator, TypeVar

from turns import Turns, run_in_turns

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
CACHE_DIR = BENCH_DIR / ".cache"  # built once, reused: not for git
PYTHON = sys.executable
WARMUP_STEPS = 5  # first steps of a run: allocator, caches, numba dispatch, lazy imports
BPE_VOCAB = 50_257  # GPT-2's size: 50,256 byte-level tokens and merges + <|endoftext|>
BPE_CORPUS_BYTES = 12_000_000  # ~40% of the corpus; 4 MB of it only supports ~39.5k merges

T = TypeVar("T")


# ---------------------------------------------------------------- the machine


def machine_line() -> str:
    """Date, CPU, cores, load and library versions: the context every table needs."""
    import mlflow
    import numba
    import torch

    from slimtrack.native.threads import available_cores, cpu_description, threading_layer_note

    layer = threading_layer_note()
    return (f"{datetime.datetime.now():%Y-%m-%d %H:%M}; CPU {cpu_description()}; {available_cores()} cores; "
            f"load average {os.getloadavg()[0]:.2f}; Python {platform.python_version()}; "
            f"torch {torch.__version__}; numba {numba.__version__} ({layer}); mlflow {mlflow.__version__}")


def kernel_bench_cli(main: Callable[[bool, int], str], doc: str) -> None:
    """The command line of a CPU kernel benchmark (``--quick``, ``--threads``): prints main's table."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    print(main(args.quick, args.threads))


# ---------------------------------------------------------------- numbers and tables


def median(values: Iterable[float]) -> float:
    values = list(values)
    return statistics.median(values) if values else float("nan")


def fmt_num(value: float, digits: int = 0) -> str:
    return f"{value:,.{digits}f}"


def fmt_runs(values: Iterable[float], digits: int = 0) -> str:
    """Each repetition's value, so the spread is visible next to the median."""
    return ", ".join(fmt_num(v, digits) for v in values)


def fmt_ratio(numerator: float, denominator: float) -> str:
    return f"{numerator / denominator:.2f}x" if denominator else "n/a"


def target_note(value: float, target: float, higher_is_better: bool = True) -> str:
    met = value >= target if higher_is_better else value < target
    return "meets target" if met else "**below target**" if higher_is_better else "**above target**"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def alternate(variants: dict[str, Callable[[], T]], repeats: int) -> dict[str, list[T]]:
    """Run every variant once per repetition, in turn (a, b, c, a, b, c, ...)."""
    results: dict[str, list[T]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, run in variants.items():
            results[name].append(run())
    return results


# ---------------------------------------------------------------- training runs


@dataclass
class TrainRun:
    history: list[dict]  # the rows of training_viz/metrics_history.json (or the reference's JSON)
    launched: float  # unix time just before the process started
    ended: float  # unix time when it exited
    tracking_cpu_share: float | None = None  # the run's tracking/cpu_share metric (None: no tracking)
    turns: Turns | None = None  # when it ran in turns with others (turns.py): when it was running


def read_history(path: Path) -> list[dict]:
    return json.loads(Path(path).read_text())


def bench_env(workdir: Path, **extra: str) -> dict[str, str]:
    """A child environment whose MLflow store is a fresh sqlite file in ``workdir``, with no
    run of the caller's to attach to and no progress bar."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(MLFLOW_TRACKING_URI=f"sqlite:///{workdir / 'mlflow.db'}", TQDM_DISABLE="1", **extra)
    return env


def run_command(cmd: list[str], workdir: Path, env: dict[str, str]) -> None:
    """Run to completion; on failure raise with the tail of its stderr (a benchmark must say why)."""
    done = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(_failure(cmd, done.returncode, done.stderr))


def _failure(cmd: list[str], returncode: int | None, stderr: str) -> str:
    tail = "\n".join(stderr.strip().splitlines()[-15:])
    return f"{' '.join(cmd[:6])} ... exited with {returncode}:\n{tail}"


@dataclass
class Launch:
    """A training process a benchmark starts: its command, and how to read what it did."""

    cmd: list[str]
    cwd: Path
    env: dict[str, str]
    history: Path  # the per-step JSON it leaves
    store: Path | None = None  # the folder of the sqlite store it tracks into (None: untracked)
    experiment: str | None = None
    cleanup: Path | None = None  # deleted once collected (a 50k-vocabulary run leaves large checkpoints)
    slimtrack: bool = False  # a `slimtrack train` process, which takes slimtrack's flags
    launched: float = field(default=0.0, init=False)  # unix time, set by start()
    stderr: IO[str] | None = field(default=None, init=False)

    def start(self) -> subprocess.Popen:
        """Start it in its own session, so turns.py can stop it with all its children."""
        self.stderr = (self.cwd / f"stderr-{time.monotonic_ns()}.txt").open("w")
        self.launched = time.time()
        return subprocess.Popen(self.cmd, cwd=self.cwd, env=self.env, stdout=subprocess.DEVNULL,
                                stderr=self.stderr, start_new_session=True)

    def collect(self, returncode: int | None, turns: Turns | None = None) -> TrainRun:
        """What it did, once it has exited; raises with the tail of its stderr if it failed."""
        ended = time.time()
        self.stderr.close()
        try:
            if returncode != 0:
                raise RuntimeError(_failure(self.cmd, returncode, Path(self.stderr.name).read_text()))
            share = (logged_tracking_share(self.store, self.experiment)
                     if self.store is not None and self.experiment else None)
            return TrainRun(read_history(self.history), self.launched, ended, share, turns)
        finally:
            Path(self.stderr.name).unlink(missing_ok=True)
            if self.cleanup is not None:
                shutil.rmtree(self.cleanup, ignore_errors=True)

    def run(self) -> TrainRun:
        """Start it and wait for it, alone."""
        return self.collect(self.start().wait())


def slimtrack_launch(workdir: Path, args: list[str], tracking: bool = True, **env: str) -> Launch:
    """One `slimtrack train`, with its own folder (artifacts land there too: the child runs
    there) and the sqlite store of ``workdir``, shared by the runs of one benchmark as a
    user's runs share theirs (a fresh store would add its table creation to every run). The
    final model export is skipped (--no-log-model): it follows the loop, which is what the
    benchmarks time. The folder is deleted once its history is read."""
    out = workdir / f"train-{time.monotonic_ns()}"
    out.mkdir(parents=True)
    # An experiment per run: its artifacts then go under this run's folder (the sqlite
    # store's default artifact root is ./mlruns of the process that creates the experiment).
    cmd = [PYTHON, "-m", "slimtrack", "train", "--output-dir", str(out), "--no-log-model",
           "--experiment", out.name, *args]
    if not tracking:
        cmd.append("--no-tracking")
    return Launch(cmd, out, bench_env(workdir, **env), out / "training_viz" / "metrics_history.json",
                  store=workdir if tracking else None, experiment=out.name, cleanup=out, slimtrack=True)


def slimtrack_train(workdir: Path, args: list[str], tracking: bool = True, **env: str) -> TrainRun:
    """One `slimtrack train` in a fresh process, alone (see slimtrack_launch)."""
    return slimtrack_launch(workdir, args, tracking, **env).run()


def log_linger_seconds() -> float:
    """The tracker's linger of a run of ours: the config's default (``--log-linger``)."""
    from slimtrack.config import TrackingConfig

    return TrackingConfig().log_linger


# Each process's turn (turns.py) per vocabulary: several steps of a 50k-vocabulary run,
# and short against the VM's drift.
SLICE_SECONDS = {"byte": 3.0, "bpe": 10.0}


def alternate_in_turns(launches: Callable[[], dict[str, Launch]], repeats: int,
                       slice_seconds: float = 3.0) -> dict[str, list[TrainRun]]:
    """``repeats`` rounds; in each, one process per variant, all run in turns (turns.py)."""
    results: dict[str, list[TrainRun]] = {}
    for _ in range(repeats):
        round_ = launches()
        linger = log_linger_seconds() * len(round_)
        for launch in round_.values():
            # The tracker lingers a wall-clock time before a delivery; a process in turns
            # runs 1/n of the wall time, so the linger is scaled by n to keep a real run's
            # deliveries per step (unscaled, it would deliver n times as often).
            if launch.slimtrack:
                launch.cmd += ["--log-linger", str(linger)]
        turns = run_in_turns({name: launch.start for name, launch in round_.items()}, slice_seconds)
        for name, launch in round_.items():
            results.setdefault(name, []).append(launch.collect(turns[name].returncode, turns[name]))
    return results


def tracking_cpu_line(runs: list[TrainRun]) -> str:
    """The tracker's own count (`tracking/cpu_share`): its thread's CPU and the training
    thread's time in its calls, as a share of the loop's time. Free of run-to-run noise, it
    says how much CPU tracking took from the step's threads; a tracked / untracked ratio says what that
    cost in throughput, within the noise. The run logs it against wall time; in turns the
    loop was stopped part of that time, so it is scaled back to the time the run ran."""
    shares = [_share_of_running_time(run) for run in runs if run.tracking_cpu_share is not None]
    if not shares:
        return ""
    return ("\n\nCPU the tracker took, as a share of the loop's running time (`tracking/cpu_share`, per run): "
            + ", ".join(f"{100 * share:.2f} %" for share in shares))


def _share_of_running_time(run: TrainRun) -> float:
    if run.turns is None:
        return run.tracking_cpu_share
    first, last = run.history[0], run.history[-1]
    start, end = first["timestamp"] - first["step_time_ms"] / 1e3, last["timestamp"]  # the loop, about
    running = run.turns.active_seconds(start, end)
    return run.tracking_cpu_share * (end - start) / running if running > 0 else float("nan")


def logged_tracking_share(workdir: Path, experiment: str) -> float | None:
    """The ``tracking/cpu_share`` the run of ``experiment`` logged into ``workdir``'s store:
    the tracker's own count of the CPU it took, as a share of the loop's wall time."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    found = client.get_experiment_by_name(experiment)
    runs = client.search_runs([found.experiment_id]) if found else []
    return runs[0].data.metrics.get("tracking/cpu_share") if runs else None


def window_rate(history: list[dict], warmup: int = WARMUP_STEPS, turns: Turns | None = None) -> float:
    """tokens/s of the whole loop after the warm-up: the tokens trained from the end of step
    ``warmup`` to the end of the last step, over that time (only the time the process was
    allowed to run, when it ran in ``turns``). Unlike a median of per-step rates, it keeps
    what lands on a few steps only (a dashboard render, a delivery to MLflow), so it is the
    measure for throughput claims."""
    start, end = history[max(warmup, 1) - 1], history[-1]
    t0, t1 = start["timestamp"], end["timestamp"]
    seconds = turns.active_seconds(t0, t1) if turns is not None else t1 - t0
    return (end["tokens_seen"] - start["tokens_seen"]) / seconds if seconds > 0 else float("nan")


def median_step_rate(history: list[dict], warmup: int = WARMUP_STEPS, turns: Turns | None = None) -> float:
    """The median tokens/s of the steps themselves (forward to optimizer update) after the
    warm-up; with ``turns``, of the steps the process was never stopped in."""
    rows = history[warmup:]
    if turns is not None:
        rows = [r for r in rows if turns.ran_throughout(r["timestamp"] - r["step_time_ms"] / 1e3, r["timestamp"])]
    return median(row["tokens_per_sec"] for row in rows)


def run_rate(run: TrainRun, measure: Callable[..., float], warmup: int) -> float:
    """``measure`` (window_rate or median_step_rate) of one run, on the time it ran."""
    return measure(run.history, warmup, run.turns)


def steps_per_sec(history: list[dict], warmup: int = WARMUP_STEPS) -> list[float]:
    """Loop iterations per second, step end to step end (one record per step)."""
    rows = history[warmup:]
    return [1.0 / (b["timestamp"] - a["timestamp"]) for a, b in zip(rows, rows[1:]) if b["timestamp"] > a["timestamp"]]


# ---------------------------------------------------------------- the ~50k-token BPE tokenizer


def embedded_texts(max_bytes: int) -> Iterator[str]:
    """Documents of the embedded corpus's train split, about ``max_bytes`` of them."""
    from slimtrack.data.documents import SkipStats, iter_documents

    seen = 0
    for document in iter_documents("embedded", "train", SkipStats()):
        if seen >= max_bytes:
            return
        seen += len(document.text.encode("utf-8", errors="replace"))
        yield document.text


def bpe_tokenizer(cache_dir: Path = CACHE_DIR) -> Path:
    """Path of a GPT-2-sized byte-level BPE tokenizer.json, trained offline on a few MB of the
    embedded corpus once and then reused."""
    path = cache_dir / f"bpe-{BPE_VOCAB}" / "tokenizer.json"
    if path.is_file():
        return path
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=BPE_VOCAB, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(embedded_texts(BPE_CORPUS_BYTES), trainer)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.tmp")  # two scripts at once never see half a file
    tokenizer.save(str(partial))
    partial.replace(path)
    return path
