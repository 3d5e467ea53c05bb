"""VisualizationManager: the metric history, text samples, and dashboards off-thread.

The training thread only appends (a record) and, every ``viz_interval`` steps and at
the end, has its ``sampler`` (``train/samples.py``: the model continues the run's fixed
validation prompts, when the run set one) add that step's text samples, then queues
"render up to step N" and returns. One worker thread has the dashboard drawn by
``renderer.DashboardRenderer`` (a child process: matplotlib never holds the training
process's GIL) and writes/logs the files. At most MAX_PENDING_RENDERS requests wait; when renders fall further
behind, the oldest waiting request is dropped (coalescing) instead of queueing
without bound.

Files per render, under ``<output_dir>/training_viz/`` and as run artifacts:
``training_step_NNNNNN.png``, ``training_latest.png``, ``metrics_history.json``
(one entry per step) and ``text_samples.json`` (the newest samples, in MLflow's
table format so the UI shows it as a table). The dashboard is also logged with
``log_image(key="training_dashboard", step=N)``: the UI's step slider.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from slimtrack.metrics import MetricHistory, TrainingMetrics
from slimtrack.runtime.files import atomic_write_bytes
from slimtrack.runtime.priority import lower_this_thread_priority
from slimtrack.tracking.protocol import Tracker
from slimtrack.dashboard.renderer import DashboardRenderer
# A sample row's columns (train/samples.py writes the rows; kept here to spare the
# readers of text_samples.json an import of torch).
SAMPLE_COLUMNS = ("step", "prompt", "generated", "true_continuation", "accuracy")

log = logging.getLogger(__name__)

VIZ_DIR = "training_viz"
IMAGE_KEY = "training_dashboard"
SAMPLES_KEPT = 100  # text_samples.json stays bounded: uploading it each interval is O(1)
MAX_PENDING_RENDERS = 4  # beyond this, the oldest pending request is dropped (coalescing)
# Rewriting metrics_history.json is O(steps) in time and size: between
# forced exports (checkpoints, the end) it is rewritten at most this share of wall time.
HISTORY_EXPORT_SHARE = 0.05


@dataclass(frozen=True)
class _Request:
    step: int
    n_records: int
    n_samples: int
    final: bool = False  # the run's last render: metrics_history.json is always written


def samples_table(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """MLflow's table JSON (``{"columns": [...], "data": [[...]]}``) for text samples."""
    columns = list(SAMPLE_COLUMNS)
    return {"columns": columns, "data": [[s.get(c) for c in columns] for s in samples]}


def samples_from_table(table: dict[str, Any]) -> list[dict[str, Any]]:
    """Inverse of ``samples_table``: MLflow table JSON -> list of sample dicts."""
    columns = table.get("columns", [])
    return [dict(zip(columns, row)) for row in table.get("data", [])]


class VisualizationManager:
    def __init__(self, output_dir: Path, tracker: Tracker, viz_interval: int, background_nice: int = 10) -> None:
        self.dir = Path(output_dir) / VIZ_DIR
        self.dir.mkdir(parents=True, exist_ok=True)
        self.tracker = tracker
        self.viz_interval = viz_interval
        self.history = MetricHistory()
        self.last_step = 0  # the step of the newest record
        self.samples: list[dict[str, Any]] = []
        # step -> that step's sample rows; set once the model exists (job.setup), None: no samples
        self.sampler: Callable[[int], list[dict[str, Any]]] | None = None
        self._last_loss_finite = True  # a non-finite model is not sampled
        self.rendered_steps: list[int] = []
        self._requested_step = 0  # the step of the newest render request
        self._pending: deque[_Request] = deque(maxlen=MAX_PENDING_RENDERS)
        self._export_lock = threading.Lock()
        self._exported_step = 0  # metrics_history.json on disk covers steps up to this one
        self._logged_history_step = 0  # and the one in the run, up to this one
        self._next_history_export = 0.0  # time.monotonic() before which a render skips it
        self.background_nice = background_nice
        self._renderer = DashboardRenderer(background_nice=background_nice)  # its child starts (and warms up) now
        self._closed = False
        self._cond = threading.Condition()
        self._worker = threading.Thread(target=self._render_forever, name="slimtrack-viz", daemon=True)
        self._worker.start()

    # ---- training thread ------------------------------------------------------------------------
    def update(self, record: TrainingMetrics, sample: dict[str, Any] | None = None) -> None:
        """Append one step (and a sample row, when given); every viz_interval steps, take the
        sampler's rows for this step and request a render."""
        self.history.append(record)
        self.last_step = record.step
        self._last_loss_finite = math.isfinite(record.loss)
        if sample is not None:
            self.samples.append(sample)
        if record.step % self.viz_interval == 0:
            self.take_samples()
            self.request_render()

    def take_samples(self) -> None:
        """The sampler's rows for the newest step, on the calling (training) thread."""
        if self.sampler is not None and self._last_loss_finite and len(self.history):
            self.samples.extend(self.sampler(self.last_step))

    def wait_for_renderer(self) -> None:
        """Block until the dashboard process has started and warmed up (a benchmark times its
        loop without that one-off; a run never waits for it)."""
        self._renderer.wait_ready()

    def request_render(self) -> None:
        """Ask the worker for a dashboard of everything appended so far; returns at once."""
        if not len(self.history):
            return
        request = self._request_now()
        self._requested_step = request.step
        with self._cond:
            if request not in self._pending:
                self._pending.append(request)  # a full deque drops its oldest request
            self._cond.notify()

    def close(self, timeout: float = 120.0, render_last: bool = True) -> None:
        """Render once more at the current step (unless already asked for, or ``render_last``
        is False: a resumed run with nothing new to draw), then stop the worker."""
        # Not rendered_steps: the worker may be drawing this step's render right now (the
        # run ended on a viz step), and a second one would log the same step's image twice.
        if render_last and len(self.history) and self._requested_step != self.last_step:
            self.take_samples()  # the run's last step gets its samples too
            self.request_render()
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._worker.join(timeout)
        if render_last and self._logged_history_step != self.last_step and not self._worker.is_alive():
            # The last render skipped the (throttled) history export, or a checkpoint's export
            # came first: the run ends with all of it.
            history, _ = self.export_json(self._request_now(final=True))
            if history is not None:
                self.tracker.log_artifact(history, VIZ_DIR)

    def _request_now(self, final: bool = False) -> _Request:
        return _Request(self.last_step, len(self.history), len(self.samples), final)

    def restore(self, until_step: int) -> None:
        """Continue a resumed run's history from its local exports (steps <= until_step)."""
        from slimtrack.metrics import records_from_json

        history, samples = self.dir / "metrics_history.json", self.dir / "text_samples.json"
        if history.is_file():
            records = [r for r in records_from_json(history.read_text()) if r.step <= until_step]
            self.history = MetricHistory(records)
            self.last_step = records[-1].step if records else 0
        if samples.is_file():
            rows = samples_from_table(json.loads(samples.read_text()))
            self.samples = [s for s in rows if s["step"] <= until_step]

    def export_now(self) -> None:
        """Write the JSON exports for everything appended so far, on the calling thread.

        Called before each checkpoint, so a resumed run finds its whole history on disk."""
        self.export_json(self._request_now(final=True))

    def export_json(self, request: _Request) -> tuple[Path | None, Path]:
        """text_samples.json up to ``request``, and metrics_history.json when due (always for
        a final request); neither is ever older than what is on disk. Returns the history
        path, or None when this request skipped it."""
        history, samples_file = self.dir / "metrics_history.json", self.dir / "text_samples.json"
        written = None
        with self._export_lock:
            if request.step < self._exported_step:
                return None, samples_file
            table = samples_table(self.samples[:request.n_samples][-SAMPLES_KEPT:])
            # Durable (fsync'd) for a final request: before a checkpoint and at the end. The
            # renders' exports are rewritten every interval and can be rebuilt.
            atomic_write_bytes(samples_file, json.dumps(table, indent=1).encode(), durable=request.final)
            now = time.monotonic()
            if request.final or now >= self._next_history_export:
                atomic_write_bytes(history, self.history.to_json(request.n_records).encode(), durable=request.final)
                self._exported_step = request.step
                took = time.monotonic() - now
                self._next_history_export = now + took / HISTORY_EXPORT_SHARE
                written = history
        return written, samples_file

    # ---- worker thread ------------------------------------------------------------------------
    def _render_forever(self) -> None:
        lower_this_thread_priority(self.background_nice)  # exports must not preempt the training threads
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if not self._pending:  # closed and nothing left to do
                    self._renderer.close()
                    return
                request = self._pending.popleft()
            try:
                self._render(request)
            except Exception:  # noqa: BLE001 — a failed chart must never stop training
                log.exception("dashboard render at step %d failed", request.step)

    def _render(self, request: _Request) -> None:
        step_png = self.dir / f"training_step_{request.step:06d}.png"
        self._renderer.render(self.history.frame(request.n_records), self.samples[:request.n_samples], step_png)
        latest_png = self.dir / "training_latest.png"
        atomic_write_bytes(latest_png, step_png.read_bytes(), durable=False)
        history, samples_file = self.export_json(request)

        self.tracker.log_artifact(step_png, VIZ_DIR)
        self.tracker.log_artifact(latest_png, VIZ_DIR)
        if history is not None:
            self.tracker.log_artifact(history, VIZ_DIR)
            self._logged_history_step = request.step
        self.tracker.log_table_file(samples_file, VIZ_DIR)
        self.tracker.log_image(step_png, key=IMAGE_KEY, step=request.step)
        self.rendered_steps.append(request.step)
