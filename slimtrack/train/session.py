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
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from slimtrack import __version__
from slimtrack.runtime.allocator import keep_freed_memory
from slimtrack.train.checkpoint import (latest_checkpoint, load_checkpoint, restore_rng_state, rng_state,
                                  save_checkpoint)
from slimtrack.config import Config
from slimtrack.data.chunks import ChunkStream, make_chunks
from slimtrack.data.documents import SkipStats, validate_dataset
from slimtrack.train.distributed import World, barrier, init_world, shutdown
from slimtrack.errors import UserError
from slimtrack.metrics import TrainingMetrics
from slimtrack.train.model import GPT
from slimtrack.native.threads import configure_threads, cpu_description
from slimtrack.data.tokenizer import load_tokenizer
from slimtrack.train.loop import (LoopHooks, NonFiniteLossError, SlimPajamaTrainer, default_output_dir,
                               resolve_device)
from slimtrack.runtime.child import ChildProcess
from slimtrack.tracking import NullTracker, Tracker
from slimtrack.dashboard.manager import VisualizationManager

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
    import mlflow  # only called when tracking is on
    import numba

    return {
        "slimtrack.preset": config.preset, "slimtrack.dataset": config.data.dataset,
        "slimtrack.data.tokenizer": config.data.tokenizer, "slimtrack.kernels": config.train.kernels,
        "slimtrack.device": str(device), "slimtrack.threads": str(threads),
        "slimtrack.version": __version__, "torch.version": torch.__version__,
        "numba.version": numba.__version__, "numba.threading_layer": str(numba.config.THREADING_LAYER),
        "mlflow.version": mlflow.__version__, "slimtrack.cpu": cpu_description(),
        **({"slimtrack.gpu": torch.cuda.get_device_name(device)} if device.type == "cuda" else {}),
    }


def make_tracker(config: Config, run_name: str, tags: dict[str, str], resume_run_id: str | None,
                 spool_dir: Path, mlflow_process: ChildProcess | None) -> Tracker:
    if not config.tracking.enabled:
        return NullTracker()
    from slimtrack.tracking.process import start_mlflow_process
    from slimtrack.tracking.tracker import MlflowTracker, TrackerSettings

    tracking = config.tracking
    if tracking.mlflow_process and mlflow_process is None:
        mlflow_process = start_mlflow_process(config.runtime.background_nice)
    settings = TrackerSettings(tracking.log_linger, tracking.replay_interval, tracking.final_replay_timeout,
                               config.runtime.background_nice)
    return MlflowTracker.start(tracking.experiment, run_name, tags, settings=settings, resume_run_id=resume_run_id,
                               spool_dir=spool_dir, mlflow_process=mlflow_process if tracking.mlflow_process else None)


class StopFlag:
    """Set by SIGTERM / the first Ctrl-C; the loop stops at the next step boundary, so the
    final checkpoint never holds a half-applied optimizer step. A second Ctrl-C interrupts
    at once."""

    def __init__(self) -> None:
        self.requested = False

    def request(self, signum: int, frame: Any) -> None:  # noqa: ARG002
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True


@contextmanager
def stop_on_signals(flag: StopFlag) -> Iterator[None]:
    try:
        previous = {sig: signal.signal(sig, flag.request) for sig in (signal.SIGTERM, signal.SIGINT)}
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class WorkerHooks(LoopHooks):
    """Ranks other than 0: no tracking, no files, no console; they join checkpoints and stops."""

    def __init__(self, save: Any, stop: StopFlag) -> None:
        self.save, self.stop = save, stop

    def on_checkpoint(self, step: int) -> None:
        self.save(step)

    def stop_requested(self) -> bool:
        return self.stop.requested


class ConsoleAndTrackingHooks(LoopHooks):
    """After each step: MLflow (non-blocking), dashboard bookkeeping, progress bar, log line."""

    def __init__(self, config: Config, tracker: Tracker, viz: VisualizationManager, skips: SkipStats,
                 save: Any, stop: StopFlag) -> None:
        self.config, self.tracker, self.viz, self.skips, self.save = config, tracker, viz, skips, save
        self.stop = stop
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

    def stop_requested(self) -> bool:
        return self.stop.requested


@dataclass
class ResumePoint:
    """Where ``--resume`` continues: a run's output folder and its newest checkpoint."""

    output_dir: Path
    checkpoint: Path
    state: dict[str, Any]


def find_resume_point(target: str) -> ResumePoint:
    """``target`` is an output folder, or a run id whose ``slimtrack.output_dir`` tag names one."""
    folder = Path(target)
    if not folder.is_dir():
        from slimtrack.analysis import get_run  # a run id: ask the tracking store where its files are

        tags = get_run(target).data.tags
        if "slimtrack.output_dir" not in tags:
            raise UserError(f"run {target} has no slimtrack.output_dir tag; pass its output folder instead")
        folder = Path(tags["slimtrack.output_dir"])
    checkpoint = latest_checkpoint(folder / "checkpoints")
    if checkpoint is None:
        raise UserError(f"--resume {target}: no checkpoint in {folder / 'checkpoints'}")
    return ResumePoint(folder, checkpoint, load_checkpoint(checkpoint))


@dataclass
class Job:
    """Everything a run needs, built by ``setup``; ``run_training`` orders the rest."""

    world: World
    config: Config
    model: torch.nn.Module
    stream: ChunkStream
    val_chunks: list[Any]
    skips: SkipStats
    tracker: Tracker
    viz: VisualizationManager
    trainer: SlimPajamaTrainer
    output_dir: Path


def setup(config: Config, resume: ResumePoint | None, mlflow_process: ChildProcess | None = None) -> Job:
    threads = configure_threads(config.train.num_threads or None)
    keep_freed_memory(config.runtime.malloc_tuning)  # the step's buffers are reused, not page-faulted in
    seed_everything(config.train.seed)
    world, device = init_world(resolve_device(config.train.device))
    tokenizer = load_tokenizer(config.data.tokenizer)
    config.model.vocab_size = tokenizer.vocab_size
    validate_dataset(config.data.dataset)

    # The run, its folder and the dashboard process come first: the process warms matplotlib
    # up (renderer.py) while the data and the model are set up below.
    run_name = config.tracking.run_name or default_run_name(config)
    output_dir = resume.output_dir if resume else (
        Path(config.train.output_dir) if config.train.output_dir else default_output_dir(run_name))
    output_dir = output_dir.resolve()
    if world.is_main:
        tags = ({**run_tags(config, device, threads), "slimtrack.output_dir": str(output_dir)}
                if config.tracking.enabled else {})
        tracker = make_tracker(config, run_name, tags, resume.state.get("run_id") if resume else None,
                               output_dir, mlflow_process)
        output_dir.mkdir(parents=True, exist_ok=True)  # after the store opened: a bad store leaves no folder
        viz = VisualizationManager(output_dir, tracker, config.train.viz_interval, config.runtime.background_nice)
    else:  # only rank 0 talks to MLflow and writes files
        tracker: Tracker = NullTracker()
        viz = None

    try:
        stream, skips = make_chunks(config.data.dataset, "train", tokenizer, config.data.batch_size,
                                    config.data.seq_len, rank=world.rank, world_size=world.world_size)
        val_chunks = validation_chunks(config, tokenizer) if world.is_main else []
        if device.type == "cuda" and config.train.kernels == "native":  # the numba CUDA kernels' launch path
            from slimtrack.native.cuda_launch import set_fast_launch
            set_fast_launch(config.runtime.cuda_fast_launch)
        module = GPT(config.model, config.train.kernels,  # same seed on every rank: same weights
                     onednn_linear=config.runtime.onednn_linear).to(device)
    except BaseException:  # the run exists already: leave it FAILED, not RUNNING
        if viz is not None:
            viz.close()
        tracker.finish("FAILED")
        raise
    model = DistributedDataParallel(module) if world.enabled else module
    tracker.log_params({**config.as_params(), "model.num_parameters": str(module.num_parameters()),
                        "world_size": str(world.world_size)})
    trainer = SlimPajamaTrainer(config, model, tokenizer, device, lambda: stream.source_names, world)
    job = Job(world, config, module, stream, val_chunks, skips, tracker, viz, trainer, output_dir)
    if resume is not None:
        restore(job, resume)
    if world.is_main:
        print(f"slimtrack: {module.num_parameters():,} parameters on {device}, {threads} threads"
              + (f" x {world.world_size} ranks" if world.enabled else "") + f", output in {output_dir}"
              + (f", run {tracker.run_id}" if tracker.run_id else "")
              + (f", resuming after step {trainer.step}" if resume else ""), file=sys.stderr)
    return job


def validation_chunks(config: Config, tokenizer: Any) -> list[Any]:
    """The first eval_chunks chunks of the held-out split (the same for every run)."""
    stream, _ = make_chunks(config.data.dataset, "validation", tokenizer, config.data.batch_size,
                            config.data.seq_len, max_chunks=config.train.eval_chunks)
    return list(stream)


def restore(job: Job, resume: ResumePoint) -> None:
    """Model, optimizer, step, data position, RNG states and the dashboard history of a checkpoint."""
    state = resume.state
    job.model.load_state_dict(state["model"])
    job.trainer.optimizer.load_state_dict(state["optimizer"])
    job.trainer.step = int(state["step"])
    job.trainer.tokens_seen = int(state["tokens_seen"])
    job.stream.skip(job.trainer.step)  # one chunk per step: the exact next chunk comes next
    if job.viz is not None:
        job.viz.restore(until_step=job.trainer.step)
    restore_rng_state(state["rng"])


def checkpoint_state(job: Job, step: int) -> dict[str, Any]:
    return {
        "model": job.model.state_dict(), "optimizer": job.trainer.optimizer.state_dict(), "step": step,
        "tokens_seen": job.trainer.tokens_seen, "source_names": list(job.stream.source_names),
        "rng": rng_state(), "run_id": job.tracker.run_id, "config": job.config.as_dict(),
    }


def run_training(config: Config, resume: ResumePoint | None = None,
                 mlflow_process: ChildProcess | None = None) -> RunOutcome:
    """Train as configured (or continue ``resume``) and leave a complete run.

    ``mlflow_process``: an MLflow process started earlier (``start_mlflow_process``), which
    the tracker takes over; without it, the tracker starts one when the config asks for it."""
    job = setup(config, resume, mlflow_process)

    def save(step: int) -> None:
        if job.world.is_main:
            job.tracker.flush()  # everything up to this step is in MLflow before the checkpoint says so
            job.viz.export_now()  # and on disk: a resumed run continues the local history from here
            path = save_checkpoint(job.output_dir / "checkpoints", step, checkpoint_state(job, step),
                                   config.train.keep_checkpoints)
            job.tracker.log_artifact(path, "checkpoints")
        barrier(job.world)

    stop = StopFlag()
    hooks = (ConsoleAndTrackingHooks(config, job.tracker, job.viz, job.skips, save, stop) if job.world.is_main
             else WorkerHooks(save, stop))
    status, message = "FINISHED", ""
    loop = LoopClock()
    try:
        with stop_on_signals(stop), loop:
            job.trainer.fit(job.stream, job.val_chunks, hooks)
    except KeyboardInterrupt:
        status, message = "KILLED", f"interrupted at step {job.trainer.step}"
    except NonFiniteLossError as exc:
        status, message = "FAILED", str(exc)
    except BaseException:
        _finish(job, hooks, "FAILED", save, save_final=False)
        raise
    if job.world.is_main:
        report_tracking_cost(job, loop.seconds)
    if status == "FINISHED" and job.trainer.step < config.train.max_chunks:
        message = (f"the training data ran out after {job.trainer.step} of {config.train.max_chunks} "
                   "chunks")
        status = "FAILED" if job.trainer.step == 0 else status
    _finish(job, hooks, status, save, save_final=status != "FAILED" and job.trainer.step > 0)
    if job.skips.total:
        print(f"slimtrack: rank {job.world.rank} skipped {job.skips.summary()}", file=sys.stderr)
    shutdown(job.world)
    return RunOutcome(status, job.tracker.run_id, job.output_dir, job.trainer.step, message)


class LoopClock:
    """The training loop's wall time (``with clock: fit(...)``), however the loop ends."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def __enter__(self) -> "LoopClock":
        self._started = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.seconds = time.perf_counter() - self._started


def report_tracking_cost(job: Job, loop_seconds: float) -> None:
    """What tracking took during the loop: logged as ``tracking/cpu_seconds`` and
    ``tracking/cpu_share`` (of the loop's wall time) at the last step, and printed."""
    if not job.config.tracking.enabled or job.trainer.step == 0:
        return
    cost = job.tracker.cost()
    share = cost.share_of(loop_seconds)
    job.tracker.log_metrics({"tracking/cpu_seconds": cost.seconds, "tracking/cpu_share": share},
                            job.trainer.step)
    print(f"slimtrack: tracking took {cost.seconds:.2f} s of CPU during the {loop_seconds:.1f} s loop "
          f"({share * 100:.2f} %)", file=sys.stderr)


def _finish(job: Job, hooks: LoopHooks, status: str, save: Any, save_final: bool) -> None:
    """Final checkpoint, the last dashboard, the model, every record delivered, the run status."""
    trainer, tracker = job.trainer, job.tracker
    if save_final and trainer.step % job.config.train.checkpoint_interval != 0:
        save(trainer.step)
    if not job.world.is_main:
        return
    hooks.bar.close()
    job.viz.close()
    if status == "FINISHED" and job.config.tracking.enabled and job.config.tracking.log_model:
        # [2, T] token ids: with a batch of 1, torch.export specialises the batch dimension
        # to 1 (and warns); with 2 it stays dynamic, so the logged model takes any batch.
        example = np.zeros((2, job.config.data.seq_len), dtype=np.int64)
        tracker.log_model(copy.deepcopy(job.model).cpu().eval(), example)
    tracker.finish(status)
    print(f"slimtrack: run {status.lower()} after {trainer.step} steps; files in {job.output_dir}",
          file=sys.stderr)
    if tracker.run_id:
        print(f"slimtrack: run id {tracker.run_id}\nslimtrack: view it with {tracker.ui_hint()}", file=sys.stderr)
