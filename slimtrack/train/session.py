"""One training job from a Config: set up, run the loop, end the run cleanly.

setup (job.py) -> ``trainer.fit`` (loop.py) -> finish (the final checkpoint, the last
dashboard, the model, every record delivered, the run's status). Whatever ends the run,
it is left with a status that says so and something to continue from:

- the last chunk: FINISHED;
- SIGTERM, SIGINT or SIGHUP, or a console that went away (signals.py), at any point from
  set-up to the end: KILLED, with a checkpoint at the step the loop stopped at;
- a NaN loss, a checkpoint that cannot be written (a full disk): FAILED, one line;
- any other exception (a bug): FAILED, a checkpoint at the last completed step when the
  weights are in a consistent state, and the exception raised again.

The console then says how to continue (``slimtrack train --resume FOLDER``).
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


from slimtrack.config import Config
from slimtrack.runtime.child import ChildProcess
from slimtrack.tracking.model_export import PROGRAM_FILE
from slimtrack.tracking.program_cache import ProgramCache, write_with_weights
from slimtrack.train.checkpoint import checkpoint_name, list_checkpoints, save_checkpoint
from slimtrack.train.distributed import barrier, shutdown
from slimtrack.train.hooks import ConsoleAndTrackingHooks, WorkerHooks
from slimtrack.train.job import Job, checkpoint_state, setup
from slimtrack.train.loop import LoopHooks, NonFiniteLossError
from slimtrack.train.resume import ResumePoint, read_run_file, write_run_file
from slimtrack.train.signals import StopFlag, guard_console, stop_on_signals


@dataclass
class RunOutcome:
    status: str  # FINISHED | KILLED | FAILED
    run_id: str | None
    output_dir: Path
    steps: int
    message: str = ""


LATEST_CHECKPOINT = "latest.pt"


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (a full disk, a read-only folder): the run fails."""


def run_training(config: Config, resume: ResumePoint | None = None,
                 mlflow_process: ChildProcess | None = None) -> RunOutcome:
    """Train as configured (or continue ``resume``) and leave a complete run.

    ``mlflow_process``: an MLflow process started earlier (``start_mlflow_process``), which
    the tracker takes over; without it, the tracker starts one when the config asks for it."""
    stop = StopFlag()
    with stop_on_signals(stop), guard_console(stop):
        job = setup(config, resume, mlflow_process)
        try:
            return _train(job, stop)
        finally:
            if job.lock is not None:
                job.lock.release()


def _train(job: Job, stop: StopFlag) -> RunOutcome:
    hooks = (ConsoleAndTrackingHooks(job.config, job.tracker, job.viz, job.skips, lambda step: save(job, step), stop)
             if job.world.is_main else WorkerHooks(lambda step: save(job, step), stop))
    status, message = "FINISHED", ""
    checkpoints_work = True
    loop = LoopClock()
    try:
        if stop.requested:  # a stop during set-up: the run ends before its first step
            raise KeyboardInterrupt
        with loop:
            job.trainer.fit(job.stream, job.val_chunks, hooks)
    except KeyboardInterrupt:
        status, message = "KILLED", f"interrupted at step {job.trainer.step} ({stop.reason or 'SIGINT'})"
    except NonFiniteLossError as exc:
        status, message = "FAILED", f"{exc}; {last_checkpoint_note(job)}"
    except CheckpointWriteError as exc:
        status, message, checkpoints_work = "FAILED", str(exc), False
    except BaseException:
        save_after_crash(job)
        finish(job, hooks, "FAILED", stop, save_final=False)
        raise
    if job.world.is_main:
        report_tracking_cost(job, loop.seconds)
    if status == "FINISHED" and job.trainer.step < job.config.train.max_chunks:
        message = f"the training data ran out after {job.trainer.step} of {job.config.train.max_chunks} chunks"
        status = "FAILED" if job.trainer.step == 0 else status
    # A second Ctrl-C can land inside an optimizer update: those weights are no step's state.
    save_final = checkpoints_work and status != "FAILED" and job.trainer.step > 0 and not job.trainer.in_update
    status, message = finish(job, hooks, status, stop, save_final=save_final, message=message)
    if job.skips.total:
        print(f"slimtrack: rank {job.world.rank} skipped {job.skips.summary()}", file=sys.stderr)
    shutdown(job.world)
    return RunOutcome(status, job.tracker.run_id, job.output_dir, job.trainer.step, message)


def save(job: Job, step: int) -> None:
    """A checkpoint at ``step``: everything up to it is delivered (or spooled) and on disk first."""
    if job.world.is_main:
        job.tracker.flush()  # everything up to this step is in MLflow before the checkpoint says so
        job.viz.export_now()  # and on disk: a resumed run continues the local history from here
        write_checkpoint(job, step)
    barrier(job.world)


def write_checkpoint(job: Job, step: int) -> None:
    directory = job.output_dir / "checkpoints"
    try:
        path = save_checkpoint(directory, step, checkpoint_state(job, step), job.config.train.keep_checkpoints)
        upload_checkpoint(job, path, step)
    except OSError as exc:
        raise CheckpointWriteError(f"could not write the checkpoint of step {step} in {directory}: "
                                   f"{exc.strerror or exc}") from None


def upload_checkpoint(job: Job, path: Path, step: int) -> None:
    """The checkpoint into the run's artifacts, as ``--log-checkpoints`` says: ``all`` keeps
    every one (``checkpoints/step_NNNNNN.pt``); ``last`` overwrites one path,
    ``checkpoints/latest.pt`` (a hard link to the newest file, so the upload reads the file
    that is newest when it runs) and names it in the tag ``slimtrack.latest_checkpoint``, so the store holds one optimizer state
    however long the run; ``none`` uploads nothing."""
    mode = job.config.tracking.log_checkpoints
    if mode == "all":
        job.tracker.log_artifact(path, "checkpoints", bulky=True)
    elif mode == "last":
        latest = job.output_dir / ".upload" / LATEST_CHECKPOINT  # beside checkpoints/, which holds only steps
        latest.parent.mkdir(exist_ok=True)
        link = latest.with_name(f".{LATEST_CHECKPOINT}.{step}")
        os.link(path, link)
        os.replace(link, latest)
        job.tracker.log_artifact(latest, "checkpoints", bulky=True)
        job.tracker.set_tag("slimtrack.latest_checkpoint", path.name)


def save_after_crash(job: Job) -> None:
    """After an unhandled exception: a checkpoint at the last completed step, when the
    weights are that step's (not halfway through an update) and no checkpoint has it yet."""
    trainer = job.trainer
    newest = list_checkpoints(job.output_dir / "checkpoints")
    done = int(newest[-1].name[5:-3]) if newest else 0
    if not job.world.is_main or trainer.in_update or trainer.step <= done:
        return
    try:
        write_checkpoint(job, trainer.step)
    except CheckpointWriteError as exc:
        print(f"slimtrack: {exc}", file=sys.stderr)


def last_checkpoint_note(job: Job) -> str:
    newest = list_checkpoints(job.output_dir / "checkpoints")
    return f"the newest checkpoint is {newest[-1].name}" if newest else "no checkpoint was written before it"


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
    if not job.config.tracking.enabled or job.trainer.step == 0 or loop_seconds == 0:
        return
    cost = job.tracker.cost()
    share = cost.share_of(loop_seconds)
    job.tracker.log_metrics({"tracking/cpu_seconds": cost.seconds, "tracking/cpu_share": share},
                            job.trainer.step)
    print(f"slimtrack: tracking took {cost.seconds:.2f} s of CPU during the {loop_seconds:.1f} s loop "
          f"({share * 100:.2f} %)", file=sys.stderr)


def finish(job: Job, hooks: LoopHooks, status: str, stop: StopFlag, save_final: bool,
           message: str = "") -> tuple[str, str]:
    """Final checkpoint, the model (exported from it in the MLflow process while the last
    dashboard is drawn here), every record delivered, the run status.

    A stop asked for before the model is handed over skips its export (a resume does it)
    and ends the run as KILLED. Returns the status and message the run ended with."""
    trainer, tracker = job.trainer, job.tracker
    if save_final and trainer.step % job.config.train.checkpoint_interval != 0:
        try:
            save(job, trainer.step)
        except CheckpointWriteError as exc:
            status, message = "FAILED", str(exc)
    if not job.world.is_main:
        return status, message
    nothing_new = job.resumed_at == trainer.step  # a resume with no step left to train
    hooks.close()
    if status == "FINISHED" and stop.requested:
        status, message = "KILLED", f"stopped ({stop.reason}) while the run ended; the final model is not logged"
    model_sent = status == "FINISHED" and log_final_model(job, skip=nothing_new and _model_logged(job))
    job.viz.close(render_last=not nothing_new)
    tracker.finish(status)
    if model_sent and tracker.model_logged:
        write_run_file(job.output_dir, tracker.run_id, job.config.as_dict(), model_logged=True)
        keep_program(job)
    print(f"slimtrack: run {status.lower()} after {trainer.step} steps; files in {job.output_dir}", file=sys.stderr)
    if tracker.run_id:
        print(f"slimtrack: run id {tracker.run_id}\nslimtrack: view it with {tracker.ui_hint()}", file=sys.stderr)
    if status != "FINISHED":
        print(f"slimtrack: continue it with: slimtrack train --resume {shlex.quote(str(job.output_dir))}",
              file=sys.stderr)
    return status, message


def log_final_model(job: Job, skip: bool) -> bool:
    """Hand the model to the tracker: the checkpoint of the final step holds its weights.
    False when no model is logged (switched off, logged already, no such checkpoint)."""
    config = job.config
    if skip or not (config.tracking.enabled and config.tracking.log_model):
        return False
    checkpoint = job.output_dir / "checkpoints" / checkpoint_name(job.trainer.step)
    if not checkpoint.is_file():
        print(f"slimtrack: no checkpoint of step {job.trainer.step}; the final model is not logged", file=sys.stderr)
        return False
    job.tracker.log_model(checkpoint, dataclasses.asdict(config.model), config.data.seq_len,
                          tokenizer_file=_tokenizer_file(job), program=write_program_from_cache(job))
    return True


def write_program_from_cache(job: Job) -> Path:
    """The final model's program file (``model/model.pt2`` in the output folder), written now
    from the program cache's template of this architecture when it holds one
    (program_cache.py); otherwise the MLflow process exports the model into it."""
    program = job.output_dir / "model" / PROGRAM_FILE
    program.unlink(missing_ok=True)  # an earlier end's program holds earlier weights
    cache, model_config, seq_len = ProgramCache.of_run(job.config)
    template = cache.template(model_config, seq_len)
    if template is not None and not write_with_weights(template, job.model.state_dict(), program):
        cache.forget(model_config, seq_len)  # of another layout: the next run exports afresh
    return program


def keep_program(job: Job) -> None:
    """The logged model's program, kept as its architecture's template for later runs (once:
    a program written from the template is not copied back over it)."""
    cache, model_config, seq_len = ProgramCache.of_run(job.config)
    if cache.template(model_config, seq_len) is None:
        cache.keep(job.output_dir / "model" / PROGRAM_FILE, model_config, seq_len)


def _tokenizer_file(job: Job) -> Path | None:
    """The tokenizer file the logged model carries, the one setup logged under ``tokenizer/``
    (job.log_tokenizer): the byte tokenizer's definition in the output folder, or the run's
    tokenizer.json. None when neither is there (the model is then logged without its pyfunc)."""
    from slimtrack.data.tokenizer import tokenizer_file

    spec = job.config.data.tokenizer
    if spec == "byte":
        path = job.output_dir / "tokenizer" / "byte_tokenizer.json"
        return path if path.is_file() else None
    return tokenizer_file(spec)


def _model_logged(job: Job) -> bool:
    return bool((read_run_file(job.output_dir) or {}).get("model_logged"))
