"""One training job from a Config: set up, run the loop, finish the run cleanly.

setup (threads, seeds, tokenizer, data, model, tracker, viz) -> ``trainer.fit``
-> finish (final checkpoint, last dashboard, flush, run status). Whatever ends
the loop (the last chunk, Ctrl-C/SIGTERM, a NaN loss, a bug), the run is left
with a status that says so: FINISHED, KILLED or FAILED.
"""

from __future__ import annotations

import copy
import logging
import random
import secrets
import signal
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from tqdm import tqdm

from slimtrack import __version__
from slimtrack.checkpoint import rng_state, save_checkpoint
from slimtrack.config import Config
from slimtrack.data import ChunkStream, SkipStats, iter_documents, validate_dataset
from slimtrack.metrics import TrainingMetrics
from slimtrack.model import GPT
from slimtrack.native.threads import configure_threads
from slimtrack.tokenizer import load_tokenizer
from slimtrack.trainer import (LoopHooks, NonFiniteLossError, SlimPajamaTrainer, default_output_dir,
                               resolve_device)
from slimtrack.viz import VisualizationManager

log = logging.getLogger(__name__)


@dataclass
class RunOutcome:
    status: str  # FINISHED | KILLED | FAILED
    run_id: str | None
    output_dir: Path
    steps: int
    message: str = ""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def default_run_name(config: Config) -> str:
    """A name that says what differs between runs: preset, dataset, kernels, a short id."""
    dataset = Path(config.data.dataset).name or config.data.dataset
    dataset = dataset.replace("/", "_")[:24]
    return f"{config.preset}-{dataset}-{config.train.kernels}-{secrets.token_hex(2)}"


def run_tags(config: Config, device: torch.device, threads: int) -> dict[str, str]:
    import mlflow
    import numba

    return {
        "slimtrack.preset": config.preset, "slimtrack.dataset": config.data.dataset,
        "slimtrack.tokenizer": config.data.tokenizer, "slimtrack.kernels": config.train.kernels,
        "slimtrack.device": str(device), "slimtrack.threads": str(threads),
        "slimtrack.version": __version__, "torch.version": torch.__version__,
        "numba.version": numba.__version__, "mlflow.version": mlflow.__version__,
    }


def make_tracker(config: Config, run_name: str, tags: dict[str, str]) -> Any:
    if not config.tracking.enabled:
        from slimtrack.tracking import NullTracker
        return NullTracker()
    from slimtrack.tracking import MlflowTracker
    return MlflowTracker.start(config.tracking.experiment, run_name, tags)


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM ends the loop the way Ctrl-C does: checkpoint, flush, run KILLED."""
    def handler(signum, frame):  # noqa: ARG001
        raise KeyboardInterrupt
    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class ConsoleAndTrackingHooks(LoopHooks):
    """After each step: MLflow (non-blocking), dashboard bookkeeping, progress bar, log line."""

    def __init__(self, config: Config, tracker: Any, viz: VisualizationManager, skips: SkipStats,
                 save: Any) -> None:
        self.config, self.tracker, self.viz, self.skips, self.save = config, tracker, viz, skips, save
        self.bar = tqdm(total=config.train.max_chunks, desc="train", unit="step", dynamic_ncols=True,
                        file=sys.stderr, mininterval=1.0,
                        disable=None)  # no bar when stderr is not a terminal (CI, logs)
        self.skips_logged = 0

    def on_step(self, record: TrainingMetrics, sample: dict[str, Any] | None) -> None:
        self.tracker.log_record(record)
        if self.skips.total != self.skips_logged:
            self.skips_logged = self.skips.total
            self.tracker.log_metrics({"data/skipped_records": float(self.skips_logged)}, record.step)
        self.viz.update(record, sample)
        self.bar.set_postfix(loss=f"{record.loss:.3f}", acc=f"{record.accuracy * 100:.1f}%",
                             tok_s=f"{record.tokens_per_sec:,.0f}", refresh=False)
        self.bar.update(1)
        if record.step % self.config.train.log_interval == 0 or record.val_loss is not None:
            self.bar.write(record.console_line(), file=sys.stderr)

    def on_checkpoint(self, step: int) -> None:
        self.save(step)


def run_training(config: Config) -> RunOutcome:
    """Train as configured and leave a complete run; returns how it ended."""
    threads = configure_threads(config.train.num_threads or None)
    seed_everything(config.train.seed)
    device = resolve_device(config.train.device)
    tokenizer = load_tokenizer(config.data.tokenizer)
    config.model.vocab_size = tokenizer.vocab_size
    validate_dataset(config.data.dataset)

    skips = SkipStats()
    stream = ChunkStream(iter_documents(config.data.dataset, "train", skips), tokenizer,
                         config.data.batch_size, config.data.seq_len)
    val_stream = ChunkStream(iter_documents(config.data.dataset, "validation", SkipStats()), tokenizer,
                             config.data.batch_size, config.data.seq_len)
    val_chunks = list(islice(val_stream, config.train.eval_chunks))
    model = GPT(config.model).to(device)

    run_name = config.tracking.run_name or default_run_name(config)
    output_dir = Path(config.train.output_dir) if config.train.output_dir else default_output_dir(run_name)
    output_dir.mkdir(parents=True, exist_ok=True)
    tracker = make_tracker(config, run_name, run_tags(config, device, threads))
    params = config.as_params()
    params["model.num_parameters"] = str(model.num_parameters())
    tracker.log_params(params)
    print(f"slimtrack: {model.num_parameters():,} parameters on {device}, {threads} threads, "
          f"output in {output_dir}" + (f", run {tracker.run_id}" if tracker.run_id else ""), file=sys.stderr)

    viz = VisualizationManager(output_dir, tracker, config.train.viz_interval)
    trainer = SlimPajamaTrainer(config, model, tokenizer, device, lambda: stream.source_names)

    def save(step: int) -> Path:
        tracker.flush()  # everything up to this step is in MLflow before the checkpoint says so
        state = {
            "model": model.state_dict(), "optimizer": trainer.optimizer.state_dict(), "step": step,
            "tokens_seen": trainer.tokens_seen, "source_names": list(stream.source_names),
            "rng": rng_state(), "run_id": tracker.run_id, "config": config.as_params(),
        }
        path = save_checkpoint(output_dir / "checkpoints", step, state, config.train.keep_checkpoints)
        tracker.log_artifact(path, "checkpoints")
        return path

    hooks = ConsoleAndTrackingHooks(config, tracker, viz, skips, save)
    status, message = "FINISHED", ""
    try:
        with sigterm_as_interrupt():
            trainer.fit(stream, val_chunks, hooks)
    except KeyboardInterrupt:
        status, message = "KILLED", f"interrupted at step {trainer.step}"
    except NonFiniteLossError as exc:
        status, message = "FAILED", str(exc)
    except BaseException:
        status = "FAILED"
        _finish(tracker, viz, hooks, status, trainer, save, output_dir, model, save_final=False)
        raise
    _finish(tracker, viz, hooks, status, trainer, save, output_dir, model,
            save_final=status != "FAILED" and trainer.step > 0)
    if skips.total:
        print(f"slimtrack: skipped {skips.summary()}", file=sys.stderr)
    return RunOutcome(status, tracker.run_id, output_dir, trainer.step, message)


def _finish(tracker: Any, viz: VisualizationManager, hooks: ConsoleAndTrackingHooks, status: str,
            trainer: SlimPajamaTrainer, save: Any, output_dir: Path, model: torch.nn.Module,
            save_final: bool) -> None:
    """Final checkpoint, the last dashboard, the model, every record delivered, the run status."""
    hooks.bar.close()
    if save_final and trainer.step % trainer.config.train.checkpoint_interval != 0:
        save(trainer.step)
    viz.close()
    if status == "FINISHED" and hasattr(tracker, "log_model"):
        example = np.zeros((1, trainer.config.data.seq_len), dtype=np.int64)  # [1, T] token ids
        tracker.log_model(copy.deepcopy(model).cpu().eval(), example)
    tracker.finish(status)
    print(f"slimtrack: run {status.lower()} after {trainer.step} steps; files in {output_dir}", file=sys.stderr)
    if tracker.run_id:
        print(f"slimtrack: run id {tracker.run_id}\nslimtrack: view it with {tracker.ui_hint()}", file=sys.stderr)
