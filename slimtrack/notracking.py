"""NullTracker: the tracker of ``--no-tracking`` and of DDP ranks other than 0.

It has MlflowTracker's interface and does nothing. It lives apart from tracking.py so
a run without tracking never imports mlflow (about a second of start-up).
"""

from __future__ import annotations

from pathlib import Path

from slimtrack.metrics import TrainingMetrics


class NullTracker:
    """Tracking switched off: same interface, nothing leaves the process."""

    run_id: str | None = None
    experiment_id: str | None = None

    def log_params(self, params: dict[str, str]) -> None: ...
    def log_record(self, record: TrainingMetrics) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int, timestamp: float | None = None) -> None: ...
    def log_artifact(self, local_path: Path, artifact_path: str | None = None) -> None: ...
    def log_image(self, png_path: Path, key: str, step: int) -> None: ...
    def log_table_file(self, local_path: Path, artifact_path: str) -> None: ...
    def flush(self, timeout: float = 60.0) -> bool: return True
    def finish(self, status: str = "FINISHED") -> None: ...
    def ui_hint(self) -> str: return "tracking was off (--no-tracking)"
