"""Tracker: what the training run asks of tracking, and NullTracker, the do-nothing one.

The run depends on this protocol only. :class:`~slimtrack.tracking.tracker.MlflowTracker`
implements it for rank 0 of a tracked run; :class:`NullTracker` for ``--no-tracking`` and
for DDP ranks other than 0. Nothing here imports MLflow, so a run without tracking never
does. Every call returns at once but ``flush`` and ``finish``, which wait for the deliveries
(the final model's too: ``model_logged`` says how it went).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from slimtrack.metrics import TrainingMetrics


@dataclass(frozen=True)
class TrackingCost:
    """The CPU tracking took from the process, as the tracker counts it.

    On a busy machine a CPU second of the delivery thread is about a second the training
    threads lose (it preempts one of them, and the others wait at the next barrier); the
    callers' seconds are spent on the training thread itself. It is not an upper bound:
    the loop can lose more than this to cache and scheduling effects."""

    worker_cpu_seconds: float  # the delivery thread's CPU, plus the MLflow process's after its start-up
    caller_seconds: float  # wall time the training thread spent in log_metrics / log_record

    @property
    def seconds(self) -> float:
        return self.worker_cpu_seconds + self.caller_seconds

    def share_of(self, wall_seconds: float) -> float:
        """This cost as a fraction of ``wall_seconds`` (the training loop's duration)."""
        return self.seconds / wall_seconds if wall_seconds > 0 else 0.0


class Tracker(Protocol):
    run_id: str | None  # None while the run does not exist (the store unreachable at start)

    def log_params(self, params: dict[str, str]) -> None: ...
    def log_record(self, record: TrainingMetrics) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int, timestamp: float | None = None) -> None: ...
    def log_artifact(self, local_path: Path, artifact_path: str | None = None, bulky: bool = False) -> None: ...
    def log_image(self, png_path: Path, key: str, step: int) -> None: ...
    def log_inputs(self, datasets: list[dict[str, str]]) -> None: ...
    def set_tag(self, key: str, value: str) -> None: ...
    def log_table_file(self, local_path: Path, artifact_path: str) -> None: ...
    def log_model(self, checkpoint: Path, model_config: dict[str, Any], seq_len: int,
                  tokenizer_file: Path | None = None, program: Path | None = None) -> None: ...
    @property
    def model_logged(self) -> bool: ...
    def flush(self, timeout: float = 300.0) -> bool: ...
    def cost(self) -> TrackingCost: ...
    def finish(self, status: str = "FINISHED") -> None: ...
    def ui_hint(self) -> str: ...


class NullTracker:
    """Tracking switched off: the same interface, and nothing leaves the process."""

    run_id: str | None = None

    def log_params(self, params: dict[str, str]) -> None: ...
    def log_record(self, record: TrainingMetrics) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int, timestamp: float | None = None) -> None: ...
    def log_artifact(self, local_path: Path, artifact_path: str | None = None, bulky: bool = False) -> None: ...
    def log_image(self, png_path: Path, key: str, step: int) -> None: ...
    def log_inputs(self, datasets: list[dict[str, str]]) -> None: ...
    def set_tag(self, key: str, value: str) -> None: ...
    def log_table_file(self, local_path: Path, artifact_path: str) -> None: ...
    def log_model(self, checkpoint: Path, model_config: dict[str, Any], seq_len: int,
                  tokenizer_file: Path | None = None, program: Path | None = None) -> None: ...
    model_logged: bool = False
    def flush(self, timeout: float = 300.0) -> bool: return True
    def cost(self) -> TrackingCost: return TrackingCost(0.0, 0.0)
    def finish(self, status: str = "FINISHED") -> None: ...
    def ui_hint(self) -> str: return "tracking was off (--no-tracking)"
