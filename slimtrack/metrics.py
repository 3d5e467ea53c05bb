"""TrainingMetrics: one record per optimizer step, and the history of a run.

Pure data: no MLflow, no files. The tracker (``tracking/``) turns records into MLflow
metrics with ``record.as_metrics()``; the dashboard manager (``dashboard/manager.py``)
keeps a ``MetricHistory`` and turns it into a pandas frame for the charts and into
``metrics_history.json``. ``records_from_json`` is the one reader of that file: resume
rebuilds the history from it, and ``analysis.load_exported`` builds its frame on it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
import pandas as pd

# Fields that become MLflow metrics at every step (the keys users see).
STEP_METRIC_KEYS = (
    "loss", "accuracy", "tokens_per_sec", "learning_rate", "gpu_memory_mb", "rss_mb",
    "grad_norm", "step_time_ms", "tokens_seen", "data_wait_ms", "mfu",
)
SOURCE_PREFIX = "loss_by_source/"
# The history columns the dashboard charts (dashboard/charts.py). They live here, not in
# charts.py, so that the training process can pick them without importing matplotlib.
DASHBOARD_REQUIRED_COLUMNS = ("step", "loss", "accuracy", "tokens_per_sec", "learning_rate")
DASHBOARD_OPTIONAL_COLUMNS = ("val_loss", "val_accuracy")


@dataclass
class TrainingMetrics:
    step: int  # global optimizer step, 1-based
    loss: float  # mean cross-entropy over the step's target tokens (all its micro-batches)
    accuracy: float  # fraction 0-1 of target tokens where argmax(logits) == target
    tokens_per_sec: float  # target tokens of this step / wall time of the step
    learning_rate: float  # the learning rate this step used
    timestamp: float  # unix seconds when the step finished
    gpu_memory_mb: float = 0.0  # peak CUDA memory allocated (0 on CPU)
    rss_mb: float = 0.0  # resident memory of the process
    grad_norm: float = 0.0  # global gradient norm before clipping
    step_time_ms: float = 0.0  # wall time of the step
    tokens_seen: int = 0  # target tokens trained on so far, this one included
    data_wait_ms: float = 0.0  # time the loop waited for this step's chunk(s)
    mfu: float = 0.0  # model FLOPs utilisation 0-1: flops_per_token * tokens_per_sec / peak (train/flops.py)
    loss_by_source: dict[str, float] = field(default_factory=dict)  # mean loss per SlimPajama set
    val_loss: float | None = None  # set at evaluation steps only
    val_accuracy: float | None = None
    val_bpb: float | None = None  # validation loss in bits per UTF-8 byte of its text (eval steps)
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
        if self.val_bpb is not None:
            metrics["val_bpb"] = float(self.val_bpb)
        return metrics

    def as_row(self) -> dict[str, Any]:
        """Flat dict: the record's fields with loss_by_source spread into columns."""
        row = {name: getattr(self, name) for name in _ROW_FIELDS}
        row.update(self.extra)
        for source, value in self.loss_by_source.items():
            row[SOURCE_PREFIX + source] = value
        return row

    def console_line(self) -> str:
        """``step 50 | loss 3.21 | acc 41.2% | 12,345 tok/s | lr 3.0e-04 | mfu 12.34%``"""
        line = (f"step {self.step} | loss {self.loss:.4f} | acc {self.accuracy * 100:.1f}% | "
                f"{self.tokens_per_sec:,.0f} tok/s | lr {self.learning_rate:.1e} | mfu {self.mfu * 100:.2f}%")
        if self.val_loss is not None:
            line += f" | val_loss {self.val_loss:.4f} | val_acc {(self.val_accuracy or 0) * 100:.1f}%"
            if self.val_bpb is not None:
                line += f" | val_bpb {self.val_bpb:.3f}"
        return line


# The scalar fields, in declaration order: as_row runs every step, dataclasses.fields() is slow.
_ROW_FIELDS = tuple(f.name for f in dataclasses.fields(TrainingMetrics) if f.name not in ("loss_by_source", "extra"))


class MetricHistory:
    """The run's records as growing float64 columns (one row per appended record).

    A frame of the first n rows costs no copy of the run, so a dashboard of step 1,000,000
    does not rebuild a million-row frame from Python objects. ``append`` only queues the
    record (one deque append: the training thread never does the conversion, and never
    waits for the render thread's lock); the reader moves queued records into the
    columns. Rows below n never change once written.
    """

    INTEGER_COLUMNS = ("step", "tokens_seen")

    def __init__(self, records: Iterable[TrainingMetrics] = ()) -> None:
        self._columns: dict[str, np.ndarray] = {}  # name -> [capacity] float64, NaN where unset
        self._rows = 0  # rows in the columns
        self._capacity = 1024
        self._queued: deque[TrainingMetrics] = deque()  # appended, not yet in the columns
        self._appended = 0  # written by the appending thread only
        self._lock = threading.Lock()  # one reader at a time moves queued records
        for record in records:
            self.append(record)

    def __len__(self) -> int:
        return self._appended

    def append(self, record: TrainingMetrics) -> None:
        self._queued.append(record)
        self._appended += 1

    def frame(self, rows: int | None = None) -> pd.DataFrame:
        """The first ``rows`` rows (default all) in append order, one column per key.

        The float columns are views of the history: treat the frame as read-only."""
        rows = self._appended if rows is None else min(rows, self._appended)
        with self._lock:
            self._fill(rows)
            columns = {name: column[:rows] for name, column in self._columns.items()}
        for name in self.INTEGER_COLUMNS:
            if name in columns and not np.isnan(columns[name]).any():
                columns[name] = columns[name].astype(np.int64)
        return pd.DataFrame(columns, copy=False)

    def _fill(self, rows: int) -> None:
        """Move queued records into the columns until they hold ``rows`` rows (lock held)."""
        while self._rows < rows:
            row = self._rows
            if row == self._capacity:
                self._capacity *= 2
                self._columns = {name: _grown(column, self._capacity) for name, column in self._columns.items()}
            for name, value in self._queued.popleft().as_row().items():
                column = self._columns.get(name)
                if column is None:  # a key first seen now (a new source set, val_loss)
                    column = self._columns[name] = np.full(self._capacity, np.nan)
                column[row] = np.nan if value is None else value
            self._rows = row + 1

    def to_json(self, rows: int | None = None) -> str:
        """The first ``rows`` rows as a JSON list of records; null for NaN (JSON has none).

        Written by pandas' C writer rather than json.dumps on dicts, which is much slower at
        this size; 15 significant digits keep float32-born metrics and microsecond
        timestamps exact."""
        return self.frame(rows).to_json(orient="records", double_precision=15)


def _grown(column: np.ndarray, capacity: int) -> np.ndarray:
    grown = np.full(capacity, np.nan)
    grown[:len(column)] = column
    return grown


def dashboard_columns(frame: pd.DataFrame) -> list[str]:
    """The columns of ``frame`` the dashboard reads; the others never reach a chart."""
    return [name for name in DASHBOARD_REQUIRED_COLUMNS + DASHBOARD_OPTIONAL_COLUMNS if name in frame.columns]


def records_frame(records: Iterable[TrainingMetrics]) -> pd.DataFrame:
    """One row per step, sorted by step, columns named as the record's fields (plus
    loss_by_source/<set> and rank/... columns); NaN where a record has no value."""
    history = MetricHistory(records)
    if not len(history):
        return pd.DataFrame(columns=list(_ROW_FIELDS))
    return history.frame().sort_values("step", kind="stable").reset_index(drop=True)


def records_from_json(text: str) -> list[TrainingMetrics]:
    """The records of a ``metrics_history.json`` (``MetricHistory.to_json``), in file order.

    null is NaN for the per-step metrics and None for val_loss / val_accuracy / val_bpb; a null
    ``loss_by_source/<set>`` or ``rank/...`` column is a set (or rank) the step did not have."""
    names = {f.name for f in dataclasses.fields(TrainingMetrics)} - {"extra", "loss_by_source"}
    records = []
    for row in json.loads(text):
        by_source = {k[len(SOURCE_PREFIX):]: v for k, v in row.items() if k.startswith(SOURCE_PREFIX) and v is not None}
        fields = {k: (math.nan if v is None and k in STEP_METRIC_KEYS else v)
                  for k, v in row.items() if k in names}
        extra = {k: v for k, v in row.items() if k.startswith("rank/") and v is not None}
        records.append(TrainingMetrics(**fields, loss_by_source=by_source, extra=extra))
    return records
