"""Tracking operations: what a tracker asks the store to do, one small dataclass each.

An operation is created on the training thread, batched (batching.py), delivered to a
:class:`Sink` (delivery.py), and, while the store is unreachable, written to the spool
as one JSON line (spool.py) and read back from it. ``op.apply(sink)`` calls the sink's
method for that operation: the sink has one method per operation, and nothing
dispatches on strings.

Every operation but :class:`StartRun` names its run. ``run_id`` is None only for an
operation made while the run did not exist yet (the store was unreachable at start);
the delivery fills it in once :class:`StartRun` has been delivered.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

Point = tuple[str, float, int, int]  # (key, value, timestamp in ms, step)


@dataclass(frozen=True)
class RunRef:
    """The run a start operation opened, and whether this process owns its end."""

    run_id: str
    experiment_id: str
    started_here: bool  # False when attached to a run `mlflow run` created (MLFLOW_RUN_ID)


class Sink(Protocol):
    """Where operations go: one method per operation (tracking/sink.py writes to MLflow)."""

    def start_run(self, op: "StartRun") -> RunRef: ...
    def log_metrics(self, op: "LogMetrics") -> None: ...
    def log_params(self, op: "LogParams") -> None: ...
    def log_artifact(self, op: "LogArtifact") -> None: ...
    def log_image(self, op: "LogImage") -> None: ...
    def log_inputs(self, op: "LogInputs") -> None: ...
    def set_tag(self, op: "SetTag") -> None: ...
    def tag_source(self, op: "TagSource") -> None: ...
    def end_run(self, op: "EndRun") -> None: ...
    def log_model(self, op: "LogModel") -> bool: ...
    def logged_steps(self, run_id: str) -> dict[str, int]: ...


@dataclass
class Operation:
    """Base of every operation: its spool form is its fields plus its ``kind``."""

    kind: ClassVar[str] = ""
    run_id: str | None = None

    def apply(self, sink: Sink) -> Any:
        raise NotImplementedError

    def to_json(self) -> str:
        return json.dumps({"kind": self.kind, **dataclasses.asdict(self)}, separators=(",", ":"))


@dataclass
class StartRun(Operation):
    """Open the run: attach to ``attach_run_id``, reopen ``resume_run_id``, or create one.

    ``run_key`` is a client-made id tagged on a created run: delivering this operation
    again (a retry, a replayed spool, a replay killed and started again) finds that run
    instead of creating a second one."""

    kind: ClassVar[str] = "start_run"
    experiment: str = ""
    run_name: str = ""
    run_key: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    resume_run_id: str | None = None
    attach_run_id: str | None = None

    def apply(self, sink: Sink) -> RunRef:
        return sink.start_run(self)


@dataclass
class LogMetrics(Operation):
    kind: ClassVar[str] = "log_metrics"
    points: list[Point] = field(default_factory=list)

    def apply(self, sink: Sink) -> None:
        sink.log_metrics(self)


@dataclass
class LogParams(Operation):
    """Params once: keys the run already has (``mlflow run -P``) keep their values."""

    kind: ClassVar[str] = "log_params"
    params: dict[str, str] = field(default_factory=dict)

    def apply(self, sink: Sink) -> None:
        sink.log_params(self)


@dataclass
class LogArtifact(Operation):
    """A local file into the run's artifacts (``artifact_path``: the folder there)."""

    kind: ClassVar[str] = "log_artifact"
    path: str = ""
    artifact_path: str | None = None
    bulky: bool = False  # uploaded on a thread of its own (uploads.py): a checkpoint

    def apply(self, sink: Sink) -> None:
        sink.log_artifact(self)


@dataclass
class LogImage(Operation):
    """A PNG as a step-indexed image (the MLflow UI's step slider)."""

    kind: ClassVar[str] = "log_image"
    path: str = ""
    key: str = ""
    step: int = 0

    def apply(self, sink: Sink) -> None:
        sink.log_image(self)


@dataclass
class LogInputs(Operation):
    """Dataset inputs (lineage): each a ``data.lineage.SplitDescription`` dict plus its
    ``context`` ("training", "validation")."""

    kind: ClassVar[str] = "log_inputs"
    datasets: list[dict[str, str]] = field(default_factory=list)

    def apply(self, sink: Sink) -> None:
        sink.log_inputs(self)


@dataclass
class SetTag(Operation):
    kind: ClassVar[str] = "set_tag"
    key: str = ""
    value: str = ""

    def apply(self, sink: Sink) -> None:
        sink.set_tag(self)


@dataclass
class TagSource(Operation):
    """The run's source tags (tracking/source.py) for the command ``argv`` run in ``cwd``,
    resolved where the sink runs: who started the run, with what, at which git commit."""

    kind: ClassVar[str] = "tag_source"
    argv: list[str] = field(default_factory=list)
    cwd: str = ""

    def apply(self, sink: Sink) -> None:
        sink.tag_source(self)


@dataclass
class EndRun(Operation):
    kind: ClassVar[str] = "end_run"
    status: str = "FINISHED"  # FINISHED | FAILED | KILLED

    def apply(self, sink: Sink) -> None:
        sink.end_run(self)


@dataclass
class LogModel(Operation):
    """The run's final model, rebuilt from its final checkpoint where the sink runs (the
    MLflow process) and logged as an MLflow model (model_export.py); with ``register_as``,
    also a new version of that registered model. The sink reports whether it was logged:
    a model that cannot be exported is said once, never retried."""

    kind: ClassVar[str] = "log_model"
    checkpoint: str = ""  # the final checkpoint file: its "model" entry holds the weights
    model_config: dict[str, Any] = field(default_factory=dict)  # the ModelConfig fields
    seq_len: int = 0  # the sequence length of the model's input example
    tokenizer_file: str | None = None  # with it, a text model (the pyfunc flavour too)
    register_as: str = ""
    program: str = ""  # the model's .pt2 program: logged as it is when the file exists, else written there

    def apply(self, sink: Sink) -> bool:
        return sink.log_model(self)


KINDS: dict[str, type[Operation]] = {cls.kind: cls for cls in (StartRun, LogMetrics, LogParams, LogArtifact, LogImage,
                                                               LogInputs, SetTag, TagSource, EndRun, LogModel)}


def from_json(line: str) -> Operation:
    """Inverse of ``Operation.to_json``; ValueError for a line that is no operation."""
    data = json.loads(line)
    cls = KINDS.get(data.pop("kind", None)) if isinstance(data, dict) else None
    if cls is None:
        raise ValueError(f"not a tracking operation: {line[:80]!r}")
    if cls is LogMetrics:
        data["points"] = [tuple(point) for point in data.get("points", [])]
    return cls(**data)


def merge_metrics(ops: list[Operation]) -> list[Operation]:
    """Consecutive metric operations of one run become one (a single ``log_batch``), in order."""
    merged: list[Operation] = []
    for op in ops:
        last = merged[-1] if merged else None
        if isinstance(op, LogMetrics) and isinstance(last, LogMetrics) and last.run_id == op.run_id:
            merged[-1] = LogMetrics(run_id=op.run_id, points=last.points + op.points)
        else:
            merged.append(op)
    return merged
