"""``slimtrack sweep``: train one run per point of a grid of settings, under one parent run.

The trials are the cartesian product of the ``--grid`` values (``--sampler grid``, in
order, the first ``--trials N`` of them when given) or ``--trials N`` distinct points of
it drawn at random (``--sampler random``, seeded by the base config's ``train.seed``).

Each trial is a ``slimtrack train`` subprocess that attaches to a child run the sweep
creates first (``MLFLOW_RUN_ID``; the child carries ``mlflow.parentRunId``, so the UI
groups it under the parent). A subprocess isolates a trial's failure, its memory and its
signal handling from the sweep and from the other trials, and the attach path is the one
``mlflow run`` already uses. A trial reads the base config from a YAML file the sweep
writes (``--config``), then its grid values as flags.

slimtrack ends an attached run itself only when it did not finish, so the sweep ends a
child that is still RUNNING once its process exits: FINISHED on exit status 0, KILLED when
the sweep was stopped or the trial was interrupted, else FAILED. A failed trial does not
stop the sweep. SIGINT, SIGTERM and SIGHUP are forwarded to the running trial (which
stops at its next step and ends KILLED, as ``slimtrack train`` does); no further trial
starts, and the parent ends KILLED.

At the end the parent holds the best trial's values (``best.<key>``), its final
validation loss (metric ``best_val_loss``) and its run id (tag ``best_run_id``).
"""

from __future__ import annotations

import itertools
import math
import os
import random
import secrets
import signal
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from slimtrack.config import MAX_RUN_NAME, Config, FieldInfo, config_fields
from slimtrack.config_files import config_to_yaml
from slimtrack.errors import UserError

SAMPLERS = ("grid", "random")
# Fields a trial cannot vary: the sweep sets them for each trial (or they would take the
# trial out of the sweep's parent run).
NOT_SWEEPABLE = ("tracking.enabled", "tracking.experiment", "tracking.run_name", "train.output_dir")
SIGNALS = tuple(s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None)
EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 130
TRIAL_TAG = "slimtrack.sweep.trial"
SWEEP_TAG = "slimtrack.sweep"


# ---- stopping ------------------------------------------------------------------------------
class StopRequest:
    """A signal asked the sweep to stop: it is passed on to the running trial, if any."""

    def __init__(self) -> None:
        self.reason = ""
        self.trial: subprocess.Popen | None = None

    def on_signal(self, signum: int, frame: Any) -> None:  # noqa: ARG002
        self.reason = self.reason or signal.Signals(signum).name
        self.forward(signum)

    def forward(self, signum: int) -> None:
        trial = self.trial
        if trial is not None and trial.poll() is None:
            trial.send_signal(signum)


@contextmanager
def handle_signals(stop: StopRequest) -> Iterator[StopRequest]:
    """Route SIGINT, SIGTERM and SIGHUP to ``stop`` while the sweep runs."""
    previous = {sig: signal.signal(sig, stop.on_signal) for sig in SIGNALS}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# ---- the grid ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Axis:
    """One ``--grid KEY=V1,V2`` entry: the key as written, its config field and its values."""

    key: str
    info: FieldInfo
    values: tuple[Any, ...]


Point = tuple[Any, ...]  # one value per axis, in the axes' order


@dataclass
class Trial:
    index: int  # 1-based
    point: Point
    run_id: str = ""
    status: str = ""  # FINISHED | FAILED | KILLED once it ran
    val_loss: float | None = None


@dataclass
class Sweep:
    base: Config
    axes: list[Axis]
    trials: list[Trial]
    sampler: str
    log_level: str = "WARNING"
    stop: StopRequest = field(default_factory=StopRequest)


def parse_grid(specs: Sequence[str]) -> list[Axis]:
    """``KEY=V1,V2`` entries as axes. KEY is a config field (``lr``) or ``section.field``;
    each value is read as the field's type. A malformed entry, an unknown or repeated key,
    a field a sweep sets itself, or a value of the wrong type is a UserError."""
    axes: list[Axis] = []
    for spec in specs:
        key, sep, values_text = spec.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserError(f"--grid {spec!r}: expected KEY=V1,V2,... (e.g. lr=1e-3,3e-3)")
        info = find_field(key)
        if not info.cli or info.key in NOT_SWEEPABLE:
            raise UserError(f"--grid {key}: {info.key} cannot be swept")
        if any(axis.info.key == info.key for axis in axes):
            raise UserError(f"--grid {key}: {info.key} is given twice")
        texts = [text.strip() for text in values_text.split(",")]
        if not all(texts):
            raise UserError(f"--grid {spec!r}: expected KEY=V1,V2,... with no empty value")
        axes.append(Axis(key, info, tuple(parse_value(info, text) for text in texts)))
    if not axes:
        raise UserError("--grid needs at least one KEY=V1,V2,...")
    return axes


def find_field(key: str) -> FieldInfo:
    """The config field ``key`` names: ``section.field``, or a field name (its first section)."""
    for info in config_fields():
        if key in (info.key, info.name):
            return info
    raise UserError(f"--grid {key}: unknown config field {key!r}")


def parse_value(info: FieldInfo, text: str) -> Any:
    """``text`` as the field's type (and one of its choices), else a UserError."""
    if info.type is bool:
        lowered = text.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise UserError(f"--grid {info.name}: expected true or false, got {text!r}")
    try:
        value = info.type(text)
    except ValueError:
        raise UserError(f"--grid {info.name}: invalid {info.type.__name__} value {text!r}") from None
    if info.choices and value not in info.choices:
        raise UserError(f"--grid {info.name}: invalid choice {text!r} (choose from {', '.join(info.choices)})")
    return value


def grid_size(axes: Sequence[Axis]) -> int:
    return math.prod(len(axis.values) for axis in axes)


def pick_points(axes: Sequence[Axis], sampler: str, trials: int | None, seed: int) -> list[Point]:
    """The trials' points: the grid in order (the first ``trials`` of it when given), or
    ``trials`` distinct points drawn at random with ``seed`` (the same picks every time)."""
    size = grid_size(axes)
    if trials is not None and trials > size:
        raise UserError(f"--trials {trials} exceeds the grid's {size} combinations")
    if sampler == "grid":
        product = itertools.product(*(axis.values for axis in axes))
        return list(itertools.islice(product, trials if trials is not None else size))
    if trials is None:
        raise UserError("--sampler random needs --trials N")
    return [point_at(axes, index) for index in random.Random(seed).sample(range(size), trials)]


def point_at(axes: Sequence[Axis], index: int) -> Point:
    """The ``index``-th point of the grid in ``itertools.product`` order."""
    values: list[Any] = []
    for axis in reversed(axes):
        index, digit = divmod(index, len(axis.values))
        values.append(axis.values[digit])
    return tuple(reversed(values))


def describe(axes: Sequence[Axis], point: Point) -> str:
    return " ".join(f"{axis.key}={value}" for axis, value in zip(axes, point))


def value_flags(axes: Sequence[Axis], point: Point) -> list[str]:
    """The ``slimtrack train`` flags that set a point's values."""
    flags = []
    for axis, value in zip(axes, point):
        if axis.info.type is bool:
            flags.append(f"--{axis.info.flag}" if value else f"--no-{axis.info.flag}")
        else:
            flags.append(f"--{axis.info.flag}={value}")
    return flags


def plan_sweep(base: Config, grid: Sequence[str], sampler: str, trials: int | None,
               log_level: str = "WARNING") -> Sweep:
    """The sweep's trials; every check that can fail happens here, before any run starts."""
    if not base.tracking.enabled:
        raise UserError("a sweep records its trials in MLflow; --no-tracking does not apply")
    if sampler not in SAMPLERS:
        raise UserError(f"--sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
    axes = parse_grid(grid)
    points = pick_points(axes, sampler, trials, base.train.seed)
    return Sweep(base, axes, [Trial(i, point) for i, point in enumerate(points, start=1)], sampler, log_level)


# ---- running -------------------------------------------------------------------------------
def run_sweep(sweep: Sweep) -> int:
    """Run the trials one after another under a parent run; the exit status: 0 when at least
    one trial finished, 1 when none did, 130 when stopped."""
    from mlflow.entities import Metric, Param, RunTag

    from slimtrack.tracking.client import Client
    from slimtrack.tracking.source import source_tags

    client = Client()
    parent_name = sweep.base.tracking.run_name or f"sweep-{secrets.token_hex(2)}"
    tags = source_tags(sys.argv, os.getcwd())  # the trials carry them too (an attached run sets none)
    experiment_id = experiment_for(client, sweep.base.tracking.experiment)
    parent = client.create_run(experiment_id, run_name=parent_name, tags={**tags, SWEEP_TAG: "parent"}).info.run_id
    say(f"parent run {parent} in experiment {sweep.base.tracking.experiment!r}, "
        f"{len(sweep.trials)} trial(s) of {grid_size(sweep.axes)}")
    status = "FAILED"
    try:
        params = {"sweep.sampler": sweep.sampler, "sweep.trials": str(len(sweep.trials)),
                  "sweep.seed": str(sweep.base.train.seed),
                  **{f"grid.{axis.key}": ",".join(map(str, axis.values)) for axis in sweep.axes}}
        client.log_batch(parent, params=[Param(k, v[:6000]) for k, v in params.items()])
        client.log_text(parent, config_to_yaml(sweep.base), "sweep/base_config.yaml")
        with tempfile.TemporaryDirectory(prefix="slimtrack-sweep-") as folder, handle_signals(sweep.stop):
            base_file = Path(folder) / "base_config.yaml"
            base_file.write_text(config_to_yaml(sweep.base), encoding="utf-8")
            for trial in sweep.trials:
                if sweep.stop.reason:
                    break
                run_trial(client, sweep, trial, experiment_id, parent, parent_name, base_file, tags)
        best = best_trial(sweep.trials)
        if best is not None:
            client.log_batch(parent, params=[Param(f"best.{axis.key}", str(value))
                                             for axis, value in zip(sweep.axes, best.point)],
                             metrics=[Metric("best_val_loss", float(best.val_loss), now_ms(), 0)],
                             tags=[RunTag("best_run_id", best.run_id)])
        print_summary(sweep, best)
        finished = any(trial.status == "FINISHED" for trial in sweep.trials)
        status = "KILLED" if sweep.stop.reason else ("FINISHED" if finished else "FAILED")
    except KeyboardInterrupt:
        status = "KILLED"
    finally:
        client.set_terminated(parent, status)
        say(f"sweep {status}: parent run {parent}")
    return {"FINISHED": EXIT_OK, "KILLED": EXIT_INTERRUPTED}.get(status, EXIT_FAILED)


def run_trial(client: Any, sweep: Sweep, trial: Trial, experiment_id: str, parent: str, parent_name: str,
              base_file: Path, tags: dict[str, str]) -> None:
    """One trial: its child run, then ``slimtrack train`` attached to it, then its end status."""
    from mlflow.entities import Param
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

    name = f"{parent_name[:MAX_RUN_NAME - 8]}-{trial.index}"
    child_tags = {**tags, MLFLOW_PARENT_RUN_ID: parent, TRIAL_TAG: str(trial.index)}
    trial.run_id = client.create_run(experiment_id, run_name=name, tags=child_tags).info.run_id
    # The trial logs its whole config too; these are the same names and values, here at once
    # so a trial that fails before its first step still shows what it tried.
    client.log_batch(trial.run_id, params=[Param(axis.info.key, str(value))
                                           for axis, value in zip(sweep.axes, trial.point)])
    say(f"trial {trial.index}/{len(sweep.trials)} ({describe(sweep.axes, trial.point)}): run {trial.run_id}")
    returncode = run_process(trial_command(sweep, trial, name, base_file), trial_env(trial.run_id), sweep.stop)
    trial.status = end_status(client, trial.run_id, returncode, bool(sweep.stop.reason))
    if trial.status == "FINISHED":
        trial.val_loss = final_val_loss(client, trial.run_id)
    loss = f", val_loss {trial.val_loss:.4f}" if trial.val_loss is not None else ""
    say(f"trial {trial.index}/{len(sweep.trials)} {trial.status}{loss}")


def trial_command(sweep: Sweep, trial: Trial, run_name: str, base_file: Path) -> list[str]:
    """``slimtrack train`` with the base config file, the trial's values, its run name and,
    when the base names one, its own output folder inside the base's."""
    command = [sys.executable, "-m", "slimtrack", "--log-level", sweep.log_level, "train",
               "--config", str(base_file), *value_flags(sweep.axes, trial.point), "--run-name", run_name]
    if sweep.base.train.output_dir:
        command += ["--output-dir", str(Path(sweep.base.train.output_dir) / f"trial-{trial.index}")]
    return command


def trial_env(run_id: str) -> dict[str, str]:
    """This environment, with the trial's run to attach to and this process's tracking store."""
    import mlflow

    return {**os.environ, "MLFLOW_RUN_ID": run_id, "MLFLOW_TRACKING_URI": mlflow.get_tracking_uri()}


def run_process(command: list[str], env: dict[str, str], stop: StopRequest) -> int:
    """Run a trial to its end; its exit status. It runs in its own session, so a Ctrl-C at
    the terminal reaches it once, passed on by the sweep (twice would stop it at once)."""
    trial = subprocess.Popen(command, env=env, start_new_session=True)
    stop.trial = trial
    if stop.reason:  # a signal came while the trial was starting
        stop.forward(signal.SIGTERM)
    try:
        return trial.wait()
    finally:
        stop.trial = None


def end_status(client: Any, run_id: str, returncode: int, stopped: bool) -> str:
    """The child's end status. A trial that exits with its run still RUNNING (it finished
    attached, or it stopped before its tracker started) is ended here."""
    status = client.get_run(run_id).info.status
    if status != "RUNNING":
        return status
    if returncode == EXIT_OK:
        status = "FINISHED"
    elif stopped or returncode in (EXIT_INTERRUPTED, -signal.SIGINT, -signal.SIGTERM):
        status = "KILLED"
    else:
        status = "FAILED"
    client.set_terminated(run_id, status)
    return status


def final_val_loss(client: Any, run_id: str) -> float | None:
    """The run's last logged ``val_loss`` (None when it has none or it is not finite)."""
    value = client.get_run(run_id).data.metrics.get("val_loss")
    return float(value) if value is not None and math.isfinite(value) else None


def best_trial(trials: Sequence[Trial]) -> Trial | None:
    """The finished trial with the lowest final validation loss (the first of equals)."""
    scored = [t for t in trials if t.status == "FINISHED" and t.val_loss is not None]
    return min(scored, key=lambda t: t.val_loss) if scored else None  # type: ignore[arg-type, return-value]


def experiment_for(client: Any, name: str) -> str:
    """The experiment's id (created when new), tagged as slimtrack's experiments are."""
    from slimtrack.tracking.sink import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG

    found = client.get_experiment_by_name(name)
    experiment_id = found.experiment_id if found else client.create_experiment(name)
    client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return experiment_id


def now_ms() -> int:
    import time

    return int(time.time() * 1000)


def say(message: str) -> None:
    print(f"slimtrack sweep: {message}", flush=True)


def print_summary(sweep: Sweep, best: Trial | None) -> None:
    for trial in sweep.trials:
        if trial.status:
            loss = f"{trial.val_loss:.4f}" if trial.val_loss is not None else "-"
            say(f"  {trial.index:>3}  {trial.status:<8}  val_loss {loss:<8}  {describe(sweep.axes, trial.point)}")
    if best is not None:
        say(f"best: trial {best.index} ({describe(sweep.axes, best.point)}), val_loss {best.val_loss:.4f}, "
            f"run {best.run_id}")


def print_plan(sweep: Sweep) -> None:
    """``--dry-run``: the trials, one a line, without running them."""
    for trial in sweep.trials:
        print(f"trial {trial.index}: {describe(sweep.axes, trial.point)}")
