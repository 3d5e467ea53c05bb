"""The module that writes to MLflow (``analysis.py`` is the one that reads).

``MlflowTracker`` attaches to the run ``mlflow run`` created (MLFLOW_RUN_ID),
reopens a run to resume, or starts one. Everything it sends is an *operation*, a
plain dict (``{"op": "metrics", "points": [...]}``, ``{"op": "artifact", ...}``),
put on a queue that one background thread delivers in order, merging consecutive
metric records into ``log_batch`` calls (a synchronous ``log_metrics`` per step
costs ~11 ms against the default sqlite store: a large share of a small CPU step).
That thread makes its MLflow calls through the MLflow process (``mlflow_process.py``), so
MLflow's own Python never holds the training process's GIL. The training thread never
waits on MLflow.

Outages: when a delivery keeps failing, the tracker goes offline: it appends every
operation to a durable spool (``spool.py``) in order, and replays the spool when
the server answers again, at the end of the run, or with ``slimtrack sync``.
Replay is idempotent: MLflow keeps duplicate points at a step and cannot delete
them, so before replaying the tracker reads the last step the store holds for
each key and skips every point at or below it (the same rule makes ``--resume``
safe). ``NullTracker`` is the ``--no-tracking`` stand-in.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import re
import sys
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

# Fail fast on an unreachable server (MLflow's defaults retry for minutes); the spool
# takes over from there. A user's own settings win.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")

import mlflow  # noqa: E402
from mlflow.entities import Metric, Param, RunStatus, RunTag  # noqa: E402

from slimtrack.metrics import TrainingMetrics  # noqa: E402
from slimtrack.mlflow_client import Client  # noqa: E402
from slimtrack.mlflow_process import ClientProcess, open_client  # noqa: E402
from slimtrack.notracking import NullTracker, TrackingCost  # noqa: E402,F401 — NullTracker re-exported
from slimtrack.priority import lower_this_thread_priority  # noqa: E402
from slimtrack.spool import Spool  # noqa: E402

log = logging.getLogger(__name__)

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"  # MLflow 3 UI: open in Model-training mode
MAX_METRICS_PER_BATCH = 1000  # MLflow's limit for one log_batch call
MAX_PARAMS_PER_BATCH = 100
DEFAULT_LOG_LINGER_SECONDS = 5.0  # SLIMTRACK_LOG_LINGER: see MlflowTracker.__init__
_FLUSH = "flush"  # queue marker from flush(): deliver what lingers now


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


_CREDENTIALS = re.compile(r"(?P<scheme>[a-zA-Z][\w+.-]*://)[^/@\s]+@")


def redact_text(text: str) -> str:
    """Any ``scheme://user:password@`` inside a message loses its credentials."""
    return _CREDENTIALS.sub(lambda m: m.group("scheme"), text)


def say(message: str) -> None:
    print(f"slimtrack: {redact_text(message)}", file=sys.stderr, flush=True)


class MlflowTracker:
    """Non-blocking, outage-proof MLflow logging for one run (rank 0 only)."""

    def __init__(self, client: Client | ClientProcess, spool: Spool | None) -> None:
        self.client = client
        self.spool = spool
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self.started_here = True
        self.last_logged: dict[str, int] = {}  # key -> last step the store holds
        self.retry_attempts = 3  # per live delivery, before going offline
        self.replay_interval = float(os.environ.get("SLIMTRACK_REPLAY_INTERVAL", "10"))
        # Records arriving within this many seconds of the last delivery wait and share one
        # log_batch: into sqlite a record alone costs ~11 ms of CPU, batched ~2.5 ms, and that
        # CPU is taken from the training step's threads. Nothing waits longer than this.
        self.linger = float(os.environ.get("SLIMTRACK_LOG_LINGER", DEFAULT_LOG_LINGER_SECONDS))
        self._last_send = 0.0
        # At the end of an offline run, keep trying this long before leaving a spool behind.
        self.final_replay_timeout = float(os.environ.get("SLIMTRACK_FINAL_REPLAY_TIMEOUT", "30"))
        self.offline = False
        self._last_replay = 0.0
        self._table_paths: list[str] = []
        self._queue: queue.Queue[dict[str, Any] | str | None] = queue.Queue()  # ops, _FLUSH, None = stop
        self._pending = 0
        self._pending_lock = threading.Condition()
        self._worker: threading.Thread | None = None
        self._ready = threading.Event()  # set once the worker's client can deliver
        # What tracking costs the process (``cost()``): CPU seconds of the delivery thread,
        # and wall seconds the callers (the training thread) spent inside log_metrics.
        self._worker_cpu = 0.0
        self._caller_seconds = 0.0

    # ---- starting -------------------------------------------------------------------------
    @classmethod
    def start(cls, experiment: str, run_name: str, tags: dict[str, str], resume_run_id: str | None = None,
              spool_dir: Path | None = None) -> "MlflowTracker":
        """Attach to MLFLOW_RUN_ID (set by ``mlflow run``), reopen ``resume_run_id``
        (``--resume``: our own run, RUNNING again), or create a run in ``experiment``.
        With ``spool_dir``, an unreachable server at start is survived too: the run is
        created when the spool is replayed."""
        # The run is opened from this process, so it exists (or the error is known) at once;
        # the deliveries then go through the MLflow process (mlflow_process.py), which
        # imports MLflow meanwhile, while the run sets up.
        tracker = cls(Client(), Spool(spool_dir) if spool_dir else None)
        start_op = {"op": "start", "experiment": experiment, "run_name": run_name, "tags": tags,
                    "resume_run_id": resume_run_id, "attach_run_id": os.environ.get("MLFLOW_RUN_ID")}
        try:
            tracker._apply(start_op)
        except Exception as exc:
            if tracker.spool is None:
                raise
            tracker._go_offline(exc, [start_op])
        tracker.client = open_client()
        tracker._start_worker()
        return tracker

    @classmethod
    def for_sync(cls, spool_dir: Path) -> "MlflowTracker":
        """A tracker that only replays the spool left in ``spool_dir`` (``slimtrack sync``)."""
        tracker = cls(Client(), Spool(spool_dir))
        known = [op["run_id"] for op in tracker.spool.read() if op.get("run_id")]
        tracker.run_id = known[0] if known else None
        tracker.offline = True
        return tracker

    def _start_worker(self) -> None:
        self._worker = threading.Thread(target=self._drain_forever, name="slimtrack-mlflow", daemon=True)
        self._worker.start()

    # ---- what the trainer calls (all return at once) -------------------------------------------
    def log_params(self, params: dict[str, str]) -> None:
        """Log params once; keys already on the run (``mlflow run -P``) are left as they are."""
        self._enqueue({"op": "params", "params": {k: str(v)[:6000] for k, v in params.items()}})

    def log_record(self, record: TrainingMetrics) -> None:
        self.log_metrics(record.as_metrics(), record.step, timestamp=record.timestamp)

    def log_metrics(self, metrics: dict[str, float], step: int, timestamp: float | None = None) -> None:
        started = time.perf_counter()
        millis = int((timestamp or time.time()) * 1000)
        points = [[key, float(value), millis, step] for key, value in metrics.items()
                  if step > self.last_logged.get(key, 0)]  # resumed: never log a step twice
        if points:
            self._enqueue({"op": "metrics", "points": points})
        self._caller_seconds += time.perf_counter() - started

    def cost(self) -> TrackingCost:
        """The CPU tracking has taken so far (read by the session at the end of the loop)."""
        return TrackingCost(self._worker_cpu + self.client.cpu_seconds(), self._caller_seconds)

    def log_artifact(self, local_path: Path, artifact_path: str | None = None) -> None:
        self._enqueue({"op": "artifact", "path": str(local_path), "artifact_path": artifact_path})

    def log_image(self, png_path: Path, key: str, step: int) -> None:
        """A step-indexed image (the MLflow UI shows these with a step slider)."""
        self._enqueue({"op": "image", "path": str(png_path), "key": key, "step": step})

    def log_table_file(self, local_path: Path, artifact_path: str) -> None:
        """Upload a file already in MLflow's table format and register it as a table.

        ``mlflow.log_table`` downloads and re-concatenates an existing file on every
        call (quadratic over a run); writing the file ourselves and registering it in
        the ``mlflow.loggedArtifacts`` tag gives the UI the same table view."""
        artifact_file = f"{artifact_path}/{Path(local_path).name}"
        if artifact_file not in self._table_paths:
            self._table_paths.append(artifact_file)
        value = json.dumps([{"path": p, "type": "table"} for p in self._table_paths])
        self.log_artifact(local_path, artifact_path)
        self._enqueue({"op": "tag", "key": "mlflow.loggedArtifacts", "value": value})

    def wait_ready(self, timeout: float = 120.0) -> bool:
        """Block until deliveries can start (the MLflow process has imported MLflow): a
        benchmark times deliveries without that one-off; a run never waits for it."""
        return self._ready.wait(timeout)

    def flush(self, timeout: float = 300.0) -> bool:
        """Wait until everything queued so far is delivered or spooled; False on timeout."""
        deadline = time.monotonic() + timeout
        self._queue.put(_FLUSH)  # cut the worker's linger short
        with self._pending_lock:
            while self._pending > 0:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._pending_lock.wait(min(remaining, 0.5))
        return True

    def log_model(self, model: Any, input_example: Any) -> None:
        """The final model as an MLflow PyTorch model (``runs:/<id>/model``), in the 'pt2'
        (torch.export) format: loading it runs no pickled code."""
        import mlflow.pytorch
        import torch

        self.flush()
        if self.offline or self.run_id is None:
            say("tracking server unreachable: the final model is not logged (the checkpoints hold it)")
            return
        try:
            with mlflow.start_run(run_id=self.run_id):  # log_model wants an active run: ours
                mlflow.pytorch.log_model(model, name="model", serialization_format="pt2",
                                         input_example=input_example,
                                         pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])
        except Exception as exc:  # noqa: BLE001 — the checkpoints hold the weights regardless
            log.error("mlflow: could not log the final model: %s", redact_text(str(exc)))

    def finish(self, status: str = "FINISHED") -> None:
        """Deliver (or spool) everything, end the run (only a run we started, unless it failed)."""
        self.flush()
        self._queue.put(None)
        if self._worker is not None:
            self._worker.join(timeout=60)
        if self.started_here or status != "FINISHED":
            self._send_or_spool([{"op": "terminate", "status": status}])
        deadline = time.monotonic() + self.final_replay_timeout
        if self.offline:
            say(f"tracking server unreachable at the end of the run; retrying for up to "
                f"{self.final_replay_timeout:.0f} s")
        while self.offline:
            self.replay()
            if not self.offline or time.monotonic() >= deadline:
                break
            time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))
        if self.offline and self.spool is not None:
            say(f"{len(self.spool)} tracking operations are still spooled in {self.spool.path}; "
                f"deliver them with: slimtrack sync {self.spool.path.parent}")
        self.client.close()

    def ui_hint(self) -> str:
        """How to open this run in the MLflow UI (Model-training mode)."""
        if self.run_id is None:
            return "(the run is created when the spool is delivered: slimtrack sync)"
        uri = mlflow.get_tracking_uri()
        path = f"#/experiments/{self.experiment_id}/runs/{self.run_id}?workflowType=machine_learning"
        if uri.startswith(("http://", "https://")):
            return f"{redact_uri(uri).rstrip('/')}/{path}"
        return f"mlflow ui --backend-store-uri {redact_uri(uri)}  then open http://127.0.0.1:5000/{path}"

    # ---- the background worker ---------------------------------------------------------------
    def _enqueue(self, op: dict[str, Any]) -> None:
        with self._pending_lock:
            self._pending += 1
        self._queue.put(op)

    def _drain_forever(self) -> None:
        lower_this_thread_priority()  # deliveries wait a little rather than preempt the step (priority.py)
        try:
            self.client.ready()
        except Exception as exc:  # noqa: BLE001 — the first delivery meets it again, with retries
            log.warning("mlflow: the delivery process is not ready: %s", exc)
        self._ready.set()
        while True:
            try:
                op: Any = self._queue.get(timeout=self.replay_interval if self.offline else None)
            except queue.Empty:
                op = "tick"  # offline: wake up to try a replay
            if op is None:
                return
            real = isinstance(op, dict)  # not a "tick" or a flush marker
            ops, stop = self._collect([op] if real else [], linger=real)
            if self.offline and time.monotonic() - self._last_replay >= self.replay_interval:
                self.replay()
            self._send_or_spool(ops)
            if ops:  # a tick or a lone flush marker sent nothing: the next op need not linger
                self._last_send = time.monotonic()
            self._worker_cpu = time.thread_time()  # this thread's CPU since it started
            self._done(len(ops))
            if stop:
                return

    def _collect(self, ops: list[dict[str, Any]], linger: bool) -> tuple[list[dict[str, Any]], bool]:
        """Take whatever else waits (consecutive records share a log_batch); with ``linger``,
        keep taking until ``self.linger`` seconds after the last delivery or a flush.
        Returns the ops and whether the stop marker came."""
        deadline = self._last_send + self.linger if linger else 0.0
        while True:
            remaining = deadline - time.monotonic()
            try:
                nxt = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                return ops, False
            if nxt is None:
                return ops, True
            if nxt == _FLUSH:
                deadline = 0.0  # deliver now
            else:
                ops.append(nxt)

    def _send_or_spool(self, ops: list[dict[str, Any]]) -> None:
        if not self.offline:
            for index, op in enumerate(_merge_metrics(ops)):
                try:
                    self._with_retry(op)
                except Exception as exc:  # noqa: BLE001 — the server is gone: spool from here on
                    self._go_offline(exc, _merge_metrics(ops)[index:])
                    return
            return
        if self.spool is not None:
            self.spool.append([{**op, "run_id": self.run_id} if self.run_id else op for op in ops])
        else:
            log.error("mlflow: %d operations lost (no spool directory)", len(ops))

    def _go_offline(self, exc: Exception, unsent: list[dict[str, Any]]) -> None:
        self.offline = True
        self._last_replay = time.monotonic()
        where = self.spool.path if self.spool is not None else "nowhere (no spool)"
        say(f"tracking server unreachable ({type(exc).__name__}: {str(exc)[:160]}); training goes on, "
            f"records are spooled to {where}")
        self._send_or_spool(unsent)

    def _with_retry(self, op: dict[str, Any]) -> None:
        delay = 0.5
        for attempt in range(1, self.retry_attempts + 1):
            try:
                self._apply(op)
                return
            except Exception as exc:  # noqa: BLE001
                if attempt == self.retry_attempts:
                    raise
                log.warning("mlflow: %s failed (%s); retrying in %.1fs", op["op"], redact_text(str(exc)), delay)
                time.sleep(delay)
                delay *= 2

    def replay(self) -> int:
        """Deliver the spool in order; returns how many ops were delivered. Idempotent."""
        self._last_replay = time.monotonic()
        if self.spool is None:
            return 0
        ops = self.spool.read()
        try:
            if self.run_id is not None:
                self.load_logged_steps()  # the store may hold some of these already
            for index, op in enumerate(ops):
                try:
                    self._apply(op)
                except Exception:
                    self.spool.clear()
                    self.spool.append(ops[index:])  # only what is still undelivered
                    raise
        except Exception as exc:  # noqa: BLE001 — still unreachable: try again later
            log.info("mlflow: replay failed: %s", redact_text(str(exc)))
            return 0
        self.spool.clear()
        self.offline = False
        if ops:
            say(f"tracking server is back: delivered {len(ops)} spooled operations")
        return len(ops)

    def _done(self, count: int) -> None:
        if count:
            with self._pending_lock:
                self._pending -= count
                self._pending_lock.notify_all()

    # ---- applying one operation to the store ----------------------------------------------------
    def load_logged_steps(self) -> None:
        """Remember the last step the store holds for each key. A kill or an outage can land
        between two log_batch calls, so the last step differs per key."""
        run = self.client.get_run(self.run_id)
        # RunData keeps each key's latest point (highest step) with its step; .metrics has values only.
        for metric in run.data._metric_objs:
            self.last_logged[metric.key] = max(self.last_logged.get(metric.key, 0), metric.step)

    def _apply(self, op: dict[str, Any]) -> None:
        kind = op["op"]
        run_id = op.get("run_id") or self.run_id
        if kind == "start":
            self._apply_start(op)
        elif kind == "metrics":
            points = [Metric(k, v, ts, step) for k, v, ts, step in op["points"]
                      if step > self.last_logged.get(k, 0)]
            for start in range(0, len(points), MAX_METRICS_PER_BATCH):
                batch = points[start:start + MAX_METRICS_PER_BATCH]
                self.client.log_batch(run_id, metrics=batch)
                for m in batch:
                    self.last_logged[m.key] = max(self.last_logged.get(m.key, 0), m.step)
        elif kind == "params":
            existing = self.client.get_run(run_id).data.params
            fresh = [Param(k, v) for k, v in op["params"].items() if k not in existing]
            for start in range(0, len(fresh), MAX_PARAMS_PER_BATCH):
                self.client.log_batch(run_id, params=fresh[start:start + MAX_PARAMS_PER_BATCH])
        elif kind == "artifact":
            self.client.log_artifact(run_id, op["path"], op["artifact_path"])
        elif kind == "image":
            self.client.log_png(run_id, op["path"], key=op["key"], step=op["step"])
        elif kind == "tag":
            self.client.set_tag(run_id, op["key"], op["value"])
        elif kind == "terminate":
            self.client.set_terminated(run_id, status=RunStatus.to_string(RunStatus.from_string(op["status"])))
        else:
            raise ValueError(f"unknown tracking operation {kind!r}")

    def _apply_start(self, op: dict[str, Any]) -> None:
        client = self.client
        run_id = op.get("resume_run_id") or op.get("attach_run_id") or op.get("created_run_id")
        if run_id:
            run = client.get_run(run_id)
            experiment_id = run.info.experiment_id
            self.started_here = bool(op.get("resume_run_id")) or not op.get("attach_run_id")
            if run.info.status != "RUNNING":
                client.update_run(run_id, status="RUNNING")
        else:
            found = client.get_experiment_by_name(op["experiment"])
            experiment_id = found.experiment_id if found else client.create_experiment(op["experiment"])
            run_id = client.create_run(experiment_id, run_name=op["run_name"] or None).info.run_id
            # Kept in the op: if a call below fails (a locked sqlite file, a server gone),
            # the op is retried or spooled and replayed, and must reopen this run, not
            # create a second one with the same name.
            op["created_run_id"] = run_id
        client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in op["tags"].items()])
        self.run_id, self.experiment_id = run_id, experiment_id
        if op.get("resume_run_id"):
            self.load_logged_steps()


def _merge_metrics(ops: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Consecutive metric ops become one (one log_batch per 1000 points), order kept."""
    merged: list[dict[str, Any]] = []
    for op in ops:
        if op["op"] == "metrics" and merged and merged[-1]["op"] == "metrics" and \
                merged[-1].get("run_id") == op.get("run_id"):
            merged[-1] = {**merged[-1], "points": merged[-1]["points"] + op["points"]}
        else:
            merged.append(op)
    return merged
