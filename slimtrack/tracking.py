"""The only module that imports mlflow.

``MlflowTracker`` attaches to the run ``mlflow run`` created (MLFLOW_RUN_ID) or
starts one, logs the config as params once, and takes every TrainingMetrics
record without blocking: records go on a queue that one background thread
drains into ``MlflowClient.log_batch`` calls (a synchronous ``log_metrics`` per
step costs ~11 ms against the default sqlite store, a large share of a small CPU
step). Artifacts are sent from the same thread, in order. ``NullTracker`` is the
``--no-tracking`` stand-in with the same interface.

MLflow keeps duplicate points at the same step and cannot delete them, so the
tracker never sends a step twice (``MlflowTracker.last_logged``).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit, urlunsplit

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunStatus, RunTag

from slimtrack.metrics import TrainingMetrics

log = logging.getLogger(__name__)

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"  # MLflow 3 UI: open in Model-training mode
MAX_METRICS_PER_BATCH = 1000  # MLflow's limit for one log_batch call
MAX_PARAMS_PER_BATCH = 100


def redact_uri(uri: str) -> str:
    """A tracking URI without credentials (``user:password@`` is never printed or logged)."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return uri
    if parts.username or parts.password:
        host = parts.hostname or ""
        if parts.port:
            host += f":{parts.port}"
        return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
    return uri


@dataclass
class _Op:
    """One unit of background work: a batch of metrics or an artifact upload."""

    kind: str  # "metrics" | "call"
    metrics: list[Metric] | None = None
    call: Callable[[], Any] | None = None
    description: str = ""


class NullTracker:
    """Tracking switched off: same interface, nothing leaves the process."""

    run_id: str | None = None
    experiment_id: str | None = None

    def log_params(self, params: dict[str, str]) -> None: ...
    def log_record(self, record: TrainingMetrics) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...
    def log_artifact(self, local_path: Path, artifact_path: str | None = None) -> None: ...
    def log_image(self, image: Any, key: str, step: int) -> None: ...
    def log_table_file(self, local_path: Path, artifact_path: str) -> None: ...
    def flush(self, timeout: float = 60.0) -> bool: return True
    def finish(self, status: str = "FINISHED") -> None: ...
    def ui_hint(self) -> str: return "tracking was off (--no-tracking)"


class MlflowTracker:
    """Non-blocking MLflow logging for one run (rank 0 only)."""

    def __init__(self, client: MlflowClient, run_id: str, experiment_id: str, started_here: bool) -> None:
        self.client = client
        self.run_id = run_id
        self.experiment_id = experiment_id
        self.started_here = started_here
        self.last_logged: dict[str, int] = {}  # key -> last step already in MLflow (resume)
        self.retry_attempts = 5  # per delivery, with exponential backoff
        self._queue: queue.Queue[_Op | None] = queue.Queue()
        self._pending = 0  # ops queued but not yet delivered
        self._pending_lock = threading.Condition()
        self._table_paths: list[str] = []
        self._worker = threading.Thread(target=self._drain_forever, name="slimtrack-mlflow", daemon=True)
        self._worker.start()

    # ---- starting -------------------------------------------------------------------------
    @classmethod
    def start(cls, experiment: str, run_name: str, tags: dict[str, str],
              resume_run_id: str | None = None) -> "MlflowTracker":
        """Attach to MLFLOW_RUN_ID (set by ``mlflow run``), reopen ``resume_run_id``
        (``--resume``: our own run, RUNNING again), or create a run in ``experiment``."""
        client = MlflowClient()  # honours MLFLOW_TRACKING_URI, else MLflow's default store
        run_id = resume_run_id or os.environ.get("MLFLOW_RUN_ID")
        if run_id:
            run = client.get_run(run_id)
            experiment_id = run.info.experiment_id
            started_here = resume_run_id is not None
            if run.info.status != "RUNNING":
                client.update_run(run_id, status="RUNNING")
        else:
            found = client.get_experiment_by_name(experiment)
            experiment_id = found.experiment_id if found else client.create_experiment(experiment)
            run_id = client.create_run(experiment_id, run_name=run_name or None).info.run_id
            started_here = True
        client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        tracker = cls(client, run_id, experiment_id, started_here)
        tracker._call_now(lambda: client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()]))
        if resume_run_id:
            tracker.load_logged_steps()
        return tracker

    def load_logged_steps(self) -> None:
        """Remember the last step MLflow holds for each key, so a resumed run never logs a
        step twice (MLflow keeps duplicate points and cannot delete them). A kill can land
        between two log_batch calls, so the last step differs per key."""
        run = self.client.get_run(self.run_id)
        # RunData keeps each key's latest point (highest step) with its step; .metrics has values only.
        for metric in run.data._metric_objs:
            self.last_logged[metric.key] = max(self.last_logged.get(metric.key, 0), metric.step)

    # ---- what the trainer calls -------------------------------------------------------------
    def log_params(self, params: dict[str, str]) -> None:
        """Log params once; keys already on the run (``mlflow run -P``) are left as they are."""
        existing = self.client.get_run(self.run_id).data.params
        fresh = [Param(k, str(v)[:6000]) for k, v in params.items() if k not in existing]
        for start in range(0, len(fresh), MAX_PARAMS_PER_BATCH):
            batch = fresh[start:start + MAX_PARAMS_PER_BATCH]
            self._call_now(lambda b=batch: self.client.log_batch(self.run_id, params=b))

    def log_record(self, record: TrainingMetrics) -> None:
        """Queue one step's metrics; returns at once."""
        self.log_metrics(record.as_metrics(), record.step, timestamp=record.timestamp)

    def log_metrics(self, metrics: dict[str, float], step: int, timestamp: float | None = None) -> None:
        millis = int((timestamp or time.time()) * 1000)
        # A step already in MLflow from before a resume is never logged twice.
        batch = [Metric(key, float(value), millis, step) for key, value in metrics.items()
                 if step > self.last_logged.get(key, 0)]
        if not batch:
            return
        self._enqueue(_Op("metrics", metrics=batch, description=f"metrics of step {step}"))

    def log_artifact(self, local_path: Path, artifact_path: str | None = None) -> None:
        path = str(local_path)
        self._enqueue(_Op("call", call=lambda: self.client.log_artifact(self.run_id, path, artifact_path),
                          description=f"artifact {path}"))

    def log_image(self, image: Any, key: str, step: int) -> None:
        """A step-indexed image (the MLflow UI shows these with a step slider)."""
        self._enqueue(_Op("call", call=lambda: self.client.log_image(self.run_id, image, key=key, step=step,
                                                                      synchronous=True),
                          description=f"image {key}@{step}"))

    def log_table_file(self, local_path: Path, artifact_path: str) -> None:
        """Upload a file already in MLflow's table format and register it as a table.

        ``mlflow.log_table`` downloads and re-concatenates an existing file on
        every call (quadratic over a run); writing the file ourselves and
        registering it in the ``mlflow.loggedArtifacts`` tag gives the UI the
        same table view without that cost.
        """
        artifact_file = f"{artifact_path}/{Path(local_path).name}"
        if artifact_file not in self._table_paths:
            self._table_paths.append(artifact_file)
        tag = "[" + ",".join(f'{{"path": "{p}", "type": "table"}}' for p in self._table_paths) + "]"
        self.log_artifact(local_path, artifact_path)
        self._enqueue(_Op("call", call=lambda: self.client.set_tag(self.run_id, "mlflow.loggedArtifacts", tag),
                          description="table tag"))

    def flush(self, timeout: float = 120.0) -> bool:
        """Wait until everything queued so far is delivered; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._pending_lock:
            while self._pending > 0:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._pending_lock.wait(min(remaining, 0.5))
        return True

    def finish(self, status: str = "FINISHED") -> None:
        """Flush, stop the worker, and end the run (only a run we started, unless it failed)."""
        delivered = self.flush()
        if not delivered:
            log.warning("mlflow: %d operations could not be delivered", self._pending)
        self._queue.put(None)
        self._worker.join(timeout=10)
        if self.started_here or status != "FINISHED":
            self.client.set_terminated(self.run_id, status=RunStatus.to_string(RunStatus.from_string(status)))

    def log_model(self, model: Any, input_example: Any) -> None:
        """The final model as an MLflow PyTorch model (``runs:/<id>/model``).

        Saved in the 'pt2' (torch.export) format: loading it runs no pickled code.
        """
        import mlflow.pytorch
        import torch

        self.flush()
        try:
            # log_model needs an active run; this one is ours already (end status is set in finish).
            with mlflow.start_run(run_id=self.run_id):
                mlflow.pytorch.log_model(model, name="model", serialization_format="pt2",
                                         input_example=input_example,
                                         pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])
        except Exception as exc:  # noqa: BLE001 — the checkpoints hold the weights regardless
            log.error("mlflow: could not log the final model: %s", exc)

    def ui_hint(self) -> str:
        """How to open this run in the MLflow UI (Model-training mode)."""
        uri = mlflow.get_tracking_uri()
        path = f"#/experiments/{self.experiment_id}/runs/{self.run_id}?workflowType=machine_learning"
        if uri.startswith(("http://", "https://")):
            return f"{redact_uri(uri).rstrip('/')}/{path}"
        return f"mlflow ui --backend-store-uri {redact_uri(uri)}  then open http://127.0.0.1:5000/{path}"

    # ---- the background worker ---------------------------------------------------------------
    def _enqueue(self, op: _Op) -> None:
        with self._pending_lock:
            self._pending += 1
        self._queue.put(op)

    def _call_now(self, fn: Callable[[], Any]) -> None:
        """Setup calls (tags, params) run synchronously: they happen once, before training."""
        fn()

    def _drain_forever(self) -> None:
        while True:
            op = self._queue.get()
            if op is None:
                return
            ops = [op]
            # Take whatever else is waiting so consecutive metric records share a log_batch.
            while True:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._deliver(ops)
                    return
                ops.append(nxt)
            self._deliver(ops)

    def _deliver(self, ops: list[_Op]) -> None:
        metrics: list[Metric] = []
        metric_ops = 0
        for op in ops:
            if op.kind == "metrics":
                metrics.extend(op.metrics or [])
                metric_ops += 1
                continue
            self._send_metrics(metrics, metric_ops)  # keep ordering: metrics before the call
            metrics, metric_ops = [], 0
            self._with_retry(op.call, op.description)
            self._done(1)
        self._send_metrics(metrics, metric_ops)

    def _send_metrics(self, metrics: list[Metric], op_count: int) -> None:
        for start in range(0, len(metrics), MAX_METRICS_PER_BATCH):
            batch = metrics[start:start + MAX_METRICS_PER_BATCH]
            self._with_retry(lambda b=batch: self.client.log_batch(self.run_id, metrics=b),
                             f"{len(batch)} metric points")
        self._done(op_count)

    def _with_retry(self, fn: Callable[[], Any] | None, description: str) -> None:
        """Retry a delivery with backoff; a lost artifact is logged, never raised into training."""
        attempts = self.retry_attempts
        delay = 0.5
        for attempt in range(1, attempts + 1):
            try:
                if fn is not None:
                    fn()
                return
            except Exception as exc:  # noqa: BLE001 — the worker must survive any store error
                if attempt == attempts:
                    log.error("mlflow: giving up on %s after %d attempts: %s", description, attempts, exc)
                    return
                log.warning("mlflow: %s failed (%s); retrying in %.1fs", description, exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, 10.0)

    def _done(self, count: int) -> None:
        if count == 0:
            return
        with self._pending_lock:
            self._pending -= count
            self._pending_lock.notify_all()
