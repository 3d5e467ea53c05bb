"""Setting a run up: everything ``run_training`` needs, in the order it is needed.

``setup`` configures threads, seeds and the allocator, opens the tokenizer, the run (the
tracker), its folder (locked, with its ``run.json``) and the dashboard process, then the
data and the model, and restores a checkpoint when the run continues. Only rank 0 talks
to MLflow and writes files.
"""

from __future__ import annotations

import importlib.metadata
import random
import secrets
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from slimtrack import __version__
from slimtrack.config import Config
from slimtrack.config_files import config_to_yaml
from slimtrack.dashboard.manager import VisualizationManager
from slimtrack.data.chunks import ChunkStream, make_chunks
from slimtrack.data.documents import SkipStats, validate_dataset
from slimtrack.data.tokenizer import load_tokenizer
from slimtrack.native.threads import configure_threads, cpu_description
from slimtrack.runtime.allocator import keep_freed_memory
from slimtrack.runtime.child import ChildProcess
from slimtrack.tracking import NullTracker, Tracker
from slimtrack.train.checkpoint import restore_rng_state, rng_state
from slimtrack.train.distributed import World, init_world
from slimtrack.train.flops import Peak, resolve_peak
from slimtrack.train.loop import SlimPajamaTrainer, default_output_dir, resolve_device
from slimtrack.train.model import GPT
from slimtrack.train.resume import FolderLock, ResumePoint, refuse_foreign_checkpoints, write_run_file
from slimtrack.train.samples import make_sampler


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
    """The run's tags: what it ran with and where (empty without tracking). Versions come
    from the installed packages' metadata: the training process does not import MLflow
    (the MLflow process adds the source tags, tracking/source.py)."""
    if not config.tracking.enabled:
        return {}
    import numba

    return {
        "slimtrack.preset": config.preset, "slimtrack.dataset": config.data.dataset,
        "slimtrack.tokenizer": config.data.tokenizer, "slimtrack.kernels": config.train.kernels,
        "slimtrack.device": str(device), "slimtrack.threads": str(threads),
        "slimtrack.version": __version__, "torch.version": str(torch.__version__),
        "numba.version": numba.__version__, "numba.threading_layer": str(numba.config.THREADING_LAYER),
        "mlflow.version": importlib.metadata.version("mlflow"), "slimtrack.cpu": cpu_description(),
        **({"slimtrack.gpu": torch.cuda.get_device_name(device)} if device.type == "cuda" else {}),
    }


def make_tracker(config: Config, run_name: str, tags: dict[str, str], resume_run_id: str | None,
                 spool_dir: Path, mlflow_process: ChildProcess | None) -> Tracker:
    if not config.tracking.enabled:
        return NullTracker()
    from slimtrack.tracking.export import model_to_export
    from slimtrack.tracking.process import start_mlflow_process
    from slimtrack.tracking.tracker import MlflowTracker, TrackerSettings

    tracking = config.tracking
    if tracking.mlflow_process and mlflow_process is None:
        mlflow_process = start_mlflow_process(config.runtime.background_nice, *model_to_export(config))
    settings = TrackerSettings(tracking.log_linger, tracking.replay_interval, tracking.final_replay_timeout,
                               config.runtime.background_nice, tracking.system_metrics,
                               tracking.system_metrics_interval, tracking.register_model)
    return MlflowTracker.start(tracking.experiment, run_name, tags, settings=settings, resume_run_id=resume_run_id,
                               spool_dir=spool_dir, mlflow_process=mlflow_process if tracking.mlflow_process else None)


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
    viz: VisualizationManager | None  # rank 0 only
    trainer: SlimPajamaTrainer
    output_dir: Path
    lock: FolderLock | None  # rank 0's hold on the output folder
    resumed_at: int | None = None  # the step a continued run started from
    peak: Peak | None = None  # one device's peak FLOP/s, the denominator of mfu


def setup(config: Config, resume: ResumePoint | None, mlflow_process: ChildProcess | None = None) -> Job:
    threads = configure_threads(config.train.num_threads or None)
    keep_freed_memory(config.runtime.malloc_tuning)  # the step's buffers are reused, not page-faulted in
    seed_everything(config.train.seed)
    world, device = init_world(resolve_device(config.train.device))
    # Before the run's child processes start: a CPU probe then has the threads to itself.
    peak = resolve_peak(config.train.peak_tflops, device)
    tokenizer = load_tokenizer(config.data.tokenizer)
    config.model.vocab_size = tokenizer.vocab_size
    validate_dataset(config.data.dataset)
    run_name = config.tracking.run_name or default_run_name(config)
    output_dir = (resume.output_dir if resume else
                  Path(config.train.output_dir) if config.train.output_dir else default_output_dir(run_name)).resolve()
    if resume is None:
        refuse_foreign_checkpoints(output_dir)

    # The run, its folder and the dashboard process come first: the process warms matplotlib
    # up (renderer.py) while the data and the model are set up below.
    lock, tracker, viz = (open_run(config, resume, run_name, output_dir, run_tags(config, device, threads),
                                   mlflow_process) if world.is_main else (None, NullTracker(), None))
    try:
        stream, skips = make_chunks(config.data.dataset, "train", tokenizer, config.data.batch_size,
                                    config.data.seq_len, rank=world.rank, world_size=world.world_size)
        val_chunks = validation_chunks(config, tokenizer) if world.is_main else []
        if device.type == "cuda" and config.train.kernels == "native":  # the numba CUDA kernels' launch path
            from slimtrack.native.cuda_launch import set_fast_launch
            set_fast_launch(config.runtime.cuda_fast_launch)
        module = GPT(config.model, config.train.kernels,  # same seed on every rank: same weights
                     onednn_linear=config.runtime.onednn_linear).to(device)
        if viz is not None:  # rank 0: the fixed validation prompts, continued at each viz interval
            sampler = make_sampler(config, module, tokenizer, device, val_chunks)
            viz.sampler = sampler.sample if sampler is not None else None
    except BaseException:  # the run exists already: leave it FAILED, not RUNNING
        if viz is not None:
            viz.close()
        tracker.finish("FAILED")
        if lock is not None:
            lock.release()
        raise
    model = DistributedDataParallel(module) if world.enabled else module
    trainer = SlimPajamaTrainer(config, model, tokenizer, device, lambda: stream.source_names, world, peak.flops)
    tracker.log_params({**config.as_params(), "model.num_parameters": str(module.num_parameters()),
                        "world_size": str(world.world_size), "flops_per_token": str(trainer.flops_per_token),
                        **peak.as_params()})
    job = Job(world, config, module, stream, val_chunks, skips, tracker, viz, trainer, output_dir, lock, peak=peak)
    if resume is not None and resume.state is not None:
        restore(job, resume)
    if resume is not None:
        job.resumed_at = trainer.step
    if world.is_main:
        announce(job, device, threads)
    return job


def open_run(config: Config, resume: ResumePoint | None, run_name: str, output_dir: Path, tags: dict[str, str],
             mlflow_process: ChildProcess | None) -> tuple[FolderLock, Tracker, VisualizationManager]:
    """Rank 0: hold the output folder, open the run (its tracker), name it in ``run.json``,
    write and log its ``config.yaml`` (a valid ``--config`` file), and start the dashboard.
    A store that cannot be opened leaves no new folder behind."""
    created = not output_dir.exists()
    lock = FolderLock(output_dir)
    lock.acquire()
    try:
        tracker = make_tracker(config, run_name, {**tags, "slimtrack.output_dir": str(output_dir)},
                               resume.run_id if resume else None, output_dir, mlflow_process)
    except BaseException:
        lock.release()
        if created:
            shutil.rmtree(output_dir, ignore_errors=True)  # it holds nothing but the lock file
        raise
    write_run_file(output_dir, tracker.run_id, config.as_dict(), model_logged=bool(resume and resume.model_logged))
    config_file = output_dir / "config.yaml"
    config_file.write_text(config_to_yaml(config), encoding="utf-8")
    tracker.log_artifact(config_file)
    log_tokenizer(config.data.tokenizer, output_dir, tracker)
    if config.tracking.enabled:
        tracker.log_inputs(dataset_inputs(config))
    viz = VisualizationManager(output_dir, tracker, config.train.viz_interval, config.runtime.background_nice)
    return lock, tracker, viz


def log_tokenizer(spec: str, output_dir: Path, tracker: Tracker) -> None:
    """Log the run's tokenizer under ``tokenizer/``: its ``tokenizer.json``, or for the byte
    tokenizer a short ``byte_tokenizer.json`` describing it, written into the output folder."""
    import json

    from slimtrack.data.tokenizer import byte_tokenizer_definition, tokenizer_file

    if spec == "byte":
        path = output_dir / "tokenizer" / "byte_tokenizer.json"
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(byte_tokenizer_definition(), indent=2) + "\n", encoding="utf-8")
    else:
        path = tokenizer_file(spec)
    if path is not None:
        tracker.log_artifact(path, "tokenizer")


def dataset_inputs(config: Config) -> list[dict[str, str]]:
    """The run's training and validation splits as dataset inputs (lineage.py: metadata only)."""
    from slimtrack.data.lineage import describe_split

    return [{**describe_split(config.data.dataset, split).as_dict(), "context": context}
            for split, context in (("train", "training"), ("validation", "validation"))]


def announce(job: Job, device: torch.device, threads: int) -> None:
    """The run's one line at the start (and a word when its validation split is empty)."""
    world, trainer = job.world, job.trainer
    print(f"slimtrack: {job.model.num_parameters():,} parameters on {device}, {threads} threads"
          + (f" x {world.world_size} ranks" if world.enabled else "")
          + (f", mfu against {job.peak.tflops:.3g} TFLOP/s ({job.peak.source})" if job.peak else "")
          + f", output in {job.output_dir}"
          + (f", run {job.tracker.run_id}" if job.tracker.run_id else "")
          + (f", resuming after step {trainer.step}" if job.resumed_at is not None else ""), file=sys.stderr)
    if not job.val_chunks:
        print(f"slimtrack: the validation split of {job.config.data.dataset} is empty: no val_loss is logged",
              file=sys.stderr)


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
    # A step trains grad_accum chunks (the run's own config, unchanged by a resume):
    # skipping them all makes the exact next chunk come next.
    job.stream.skip(job.trainer.step * job.config.train.grad_accum)
    if job.viz is not None:
        job.viz.restore(until_step=job.trainer.step)
    restore_rng_state(state["rng"])


def checkpoint_state(job: Job, step: int) -> dict[str, Any]:
    return {
        "model": job.model.state_dict(), "optimizer": job.trainer.optimizer.state_dict(), "step": step,
        "tokens_seen": job.trainer.tokens_seen, "source_names": list(job.stream.source_names),
        "rng": rng_state(), "run_id": job.tracker.run_id, "config": job.config.as_dict(),
    }


