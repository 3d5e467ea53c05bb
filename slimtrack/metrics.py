"""TrainingMetrics: one record per optimizer step, and the history as a frame.

Pure data: no MLflow, no files. ``tracking.py`` turns records into MLflow
metrics with ``record.as_metrics()``; ``viz.py`` keeps a history and turns it
into a pandas frame for the dashboard and the JSON export.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any, Iterable

import pandas as pd

# Fields that become MLflow metrics at every step (the keys users see).
STEP_METRIC_KEYS = (
    "loss", "accuracy", "tokens_per_sec", "learning_rate", "gpu_memory_mb", "rss_mb",
    "grad_norm", "step_time_ms", "tokens_seen", "data_wait_ms",
)
SOURCE_PREFIX = "loss_by_source/"


@dataclass
class TrainingMetrics:
    step: int  # global optimizer step, 1-based
    loss: float  # mean cross-entropy over the chunk's target tokens
    accuracy: float  # fraction 0-1 of target tokens where argmax(logits) == target
    tokens_per_sec: float  # target tokens of this step / wall time of the step
    learning_rate: float  # the learning rate this step used
    timestamp: float  # unix seconds when the step finished
    gpu_memory_mb: float = 0.0  # peak CUDA memory allocated (0 on CPU)
    rss_mb: float = 0.0  # resident memory of the process
    grad_norm: float = 0.0  # global gradient norm before clipping
    step_time_ms: float = 0.0  # wall time of the step
    tokens_seen: int = 0  # target tokens trained on so far, this one included
    data_wait_ms: float = 0.0  # time the loop waited for this step's chunk
    loss_by_source: dict[str, float] = field(default_factory=dict)  # mean loss per SlimPajama set
    val_loss: float | None = None  # set at evaluation steps only
    val_accuracy: float | None = None
    extra: dict[str, float] = field(default_factory=dict)  # e.g. rank/<r>/tokens_per_sec under DDP

    def as_metrics(self) -> dict[str, float]:
        """MLflow metric key -> value for this step (NaN-free keys only where defined)."""
        metrics = {key: float(getattr(self, key)) for key in STEP_METRIC_KEYS}
        for source, value in self.loss_by_source.items():
            metrics[SOURCE_PREFIX + source] = float(value)
        metrics.update(self.extra)
        if self.val_loss is not None:
            metrics["val_loss"] = float(self.val_loss)
        if self.val_accuracy is not None:
            metrics["val_accuracy"] = float(self.val_accuracy)
        return metrics

    def as_row(self) -> dict[str, Any]:
        """Flat dict: the record's fields with loss_by_source spread into columns."""
        row = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
               if f.name not in ("loss_by_source", "extra")}
        row.update(self.extra)
        for source, value in self.loss_by_source.items():
            row[SOURCE_PREFIX + source] = value
        return row

    def console_line(self) -> str:
        """``step 50 | loss 3.21 | acc 41.2% | 12,345 tok/s | lr 3.0e-04``"""
        line = (f"step {self.step} | loss {self.loss:.4f} | acc {self.accuracy * 100:.1f}% | "
                f"{self.tokens_per_sec:,.0f} tok/s | lr {self.learning_rate:.1e}")
        if self.val_loss is not None:
            line += f" | val_loss {self.val_loss:.4f} | val_acc {(self.val_accuracy or 0) * 100:.1f}%"
        return line


def history_frame(records: Iterable[TrainingMetrics]) -> pd.DataFrame:
    """One row per step, columns named as the record's fields (plus loss_by_source/<set>)."""
    rows = [r.as_row() for r in records]
    if not rows:
        columns = [f.name for f in dataclasses.fields(TrainingMetrics) if f.name not in ("loss_by_source", "extra")]
        return pd.DataFrame(columns=columns)
    return pd.DataFrame(rows).sort_values("step").reset_index(drop=True)


def _json_safe(value: Any) -> Any:
    """JSON has no NaN/Inf: write them as null so every reader can parse the file."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def history_json(records: Iterable[TrainingMetrics]) -> str:
    """The metric history as a JSON list of records (one entry per step)."""
    rows = [{k: _json_safe(v) for k, v in r.as_row().items()} for r in records]
    return json.dumps(rows, indent=1)


def records_from_json(text: str) -> list[TrainingMetrics]:
    """Inverse of ``history_json`` (used by resume and by ``slimtrack report``)."""
    names = {f.name for f in dataclasses.fields(TrainingMetrics)} - {"extra", "loss_by_source"}
    records = []
    for row in json.loads(text):
        by_source = {k[len(SOURCE_PREFIX):]: v for k, v in row.items() if k.startswith(SOURCE_PREFIX)}
        fields = {k: (math.nan if v is None and k in STEP_METRIC_KEYS + ("loss",) else v)
                  for k, v in row.items() if k in names}
        extra = {k: v for k, v in row.items() if k.startswith("rank/")}
        records.append(TrainingMetrics(**fields, loss_by_source=by_source, extra=extra))
    return records
