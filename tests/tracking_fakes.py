"""A Sink that records what it is given, and can be told to fail (for the pure tracking units)."""

from __future__ import annotations

from slimtrack.tracking.operations import (EndRun, LogArtifact, LogImage, LogInputs, LogMetrics, LogModel, LogParams,
                                           Operation, RunRef, SetTag, StartRun, TagSource)


class RecordingSink:
    def __init__(self) -> None:
        self.applied: list[Operation] = []
        self.store_steps: dict[str, int] = {}  # what logged_steps answers
        self.runs_created = 0
        self.keys: dict[str, str] = {}  # run key -> run id
        self.fail = False  # every call raises ConnectionError while True
        self.model_error: Exception | None = None  # log_model raises it (an export error)

    def _take(self, op: Operation) -> None:
        if self.fail:
            raise ConnectionError("store unreachable")
        self.applied.append(op)

    def start_run(self, op: StartRun) -> RunRef:
        self._take(op)
        if op.run_key not in self.keys:
            self.runs_created += 1
            self.keys[op.run_key] = f"run-{self.runs_created}"
        return RunRef(self.keys[op.run_key], "exp-1", True)

    def log_metrics(self, op: LogMetrics) -> None:
        self._take(op)

    def log_params(self, op: LogParams) -> None:
        self._take(op)

    def log_artifact(self, op: LogArtifact) -> None:
        self._take(op)

    def log_image(self, op: LogImage) -> None:
        self._take(op)

    def log_inputs(self, op: LogInputs) -> None:
        self._take(op)

    def set_tag(self, op: SetTag) -> None:
        self._take(op)

    def tag_source(self, op: TagSource) -> None:
        self._take(op)

    def end_run(self, op: EndRun) -> None:
        self._take(op)

    def log_model(self, op: LogModel) -> bool:
        self._take(op)
        if self.model_error is not None:
            raise self.model_error
        return True

    def logged_steps(self, run_id: str) -> dict[str, int]:
        if self.fail:
            raise ConnectionError("store unreachable")
        return dict(self.store_steps)

    def points(self) -> list[tuple[str, int]]:
        return [(key, step) for op in self.applied if isinstance(op, LogMetrics) for key, _, _, step in op.points]
