"""MlflowSink: each tracking operation as MLflow client calls (one method per operation).

It runs where the calls are made: in the MLflow process (process.py) or, when that is
off or gone, in the training process. It keeps no state of the run; what was delivered
is the delivery's business (delivery.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunStatus, RunTag

from slimtrack.tracking.client import Client
from slimtrack.tracking.operations import (EndRun, LogArtifact, LogImage, LogInputs, LogMetrics, LogModel, LogParams,
                                           RunRef, SetTag, StartRun, TagSource)
from slimtrack.tracking.source import source_tags
from slimtrack.tracking.uploads import Uploads

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"  # MLflow 3's UI opens the experiment in Model-training mode
RUN_KEY_TAG = "slimtrack.run_key"
MAX_METRICS_PER_BATCH = 1000  # MLflow's limit for one log_batch call
MAX_PARAMS_PER_BATCH = 100


class MlflowSink:
    def __init__(self, client: Client, export: Any = None) -> None:
        self.client = client
        self._monitor: Any = None  # MLflow's system-metrics monitor, while one runs
        self._export = export  # export.ExportProcess: the final model's program, prepared ahead
        self.uploads = Uploads(self._upload)  # bulky artifacts, beside the other deliveries

    def start_run(self, op: StartRun) -> RunRef:
        client = self.client
        run_id = op.resume_run_id or op.attach_run_id
        if run_id:
            run = client.get_run(run_id)
            experiment_id = run.info.experiment_id
            if run.info.status != "RUNNING":
                client.update_run(run_id, status="RUNNING")
        else:
            found = client.get_experiment_by_name(op.experiment)
            experiment_id = found.experiment_id if found else client.create_experiment(op.experiment)
            run_id = self._run_with_key(experiment_id, op.run_key)
            if run_id is None:
                tags = {RUN_KEY_TAG: op.run_key} if op.run_key else {}
                run_id = client.create_run(experiment_id, run_name=op.run_name or None, tags=tags).info.run_id
        client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in op.tags.items()])
        started_here = bool(op.resume_run_id) or not op.attach_run_id
        return RunRef(run_id, experiment_id, started_here)

    def _run_with_key(self, experiment_id: str, run_key: str) -> str | None:
        """The run an earlier delivery of the same start operation created, if any."""
        if not run_key:
            return None
        runs = self.client.search_runs([experiment_id], f"tags.`{RUN_KEY_TAG}` = '{run_key}'", max_results=1)
        return runs[0].info.run_id if runs else None

    def log_metrics(self, op: LogMetrics) -> None:
        metrics = [Metric(key, value, timestamp, step) for key, value, timestamp, step in op.points]
        for start in range(0, len(metrics), MAX_METRICS_PER_BATCH):
            self.client.log_batch(op.run_id, metrics=metrics[start:start + MAX_METRICS_PER_BATCH])

    def log_params(self, op: LogParams) -> None:
        existing = self.client.get_run(op.run_id).data.params
        fresh = [Param(k, v) for k, v in op.params.items() if k not in existing]
        for start in range(0, len(fresh), MAX_PARAMS_PER_BATCH):
            self.client.log_batch(op.run_id, params=fresh[start:start + MAX_PARAMS_PER_BATCH])

    def log_artifact(self, op: LogArtifact) -> None:
        if op.bulky:
            self.uploads.submit(op)
        else:
            self._upload(op)

    def _upload(self, op: LogArtifact) -> None:
        self.client.log_artifact(op.run_id, op.path, op.artifact_path)

    def log_image(self, op: LogImage) -> None:
        self.client.log_png(op.run_id, op.path, key=op.key, step=op.step)

    def log_inputs(self, op: LogInputs) -> None:
        from mlflow.entities import Dataset, DatasetInput, InputTag
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        inputs = [DatasetInput(Dataset(d["name"], d["digest"], d["source_type"], d["source"], d.get("schema")),
                               [InputTag(MLFLOW_DATASET_CONTEXT, d["context"])]) for d in op.datasets]
        self.client.log_inputs(op.run_id, datasets=inputs)

    def set_tag(self, op: SetTag) -> None:
        self.client.set_tag(op.run_id, op.key, op.value)

    def tag_source(self, op: TagSource) -> None:
        tags = source_tags(op.argv, op.cwd)
        self.client.log_batch(op.run_id, tags=[RunTag(key, value) for key, value in tags.items()])

    def end_run(self, op: EndRun) -> None:
        self.client.set_terminated(op.run_id, status=RunStatus.to_string(RunStatus.from_string(op.status)))

    def log_model(self, op: LogModel) -> bool:
        """The final model from its checkpoint (model_export.py); True once it is logged."""
        import mlflow

        from slimtrack.tracking.model_export import log_checkpoint_model

        mlflow.set_tracking_uri(self.client.tracking_uri)  # the fluent API logs models: into this store
        mlflow.set_registry_uri(self.client._registry_uri)
        log_checkpoint_model(op.run_id, Path(op.checkpoint), op.model_config, op.seq_len,
                             Path(op.tokenizer_file) if op.tokenizer_file else None, op.register_as,
                             exporter=self._export, program=Path(op.program) if op.program else None)
        return True

    # ---- services of the process the sink runs in (not operations: never spooled) -----------
    def start_system_metrics(self, run_id: str, interval: float, resume: bool) -> None:
        """MLflow's own system-metrics monitor (CPU, memory, disk, network; GPU where
        nvidia-ml-py finds one), sampling every ``interval`` seconds into ``system/*``."""
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        self.stop_system_metrics()
        self._monitor = SystemMetricsMonitor(run_id, sampling_interval=interval, resume_logging=resume,
                                             tracking_uri=self.client.tracking_uri)
        self._monitor.start()

    def drain_uploads(self, timeout: float) -> list[LogArtifact]:
        """Wait for the bulky uploads; the ones that failed, as in-line operations."""
        return self.uploads.drain(timeout)

    def stop_system_metrics(self) -> None:
        if self._monitor is not None:
            self._monitor.finish()
            self._monitor = None

    def logged_steps(self, run_id: str) -> dict[str, int]:
        """Each key's last step in the store. A kill or an outage can land between two
        ``log_batch`` calls, so the last step differs between keys."""
        run = self.client.get_run(run_id)
        # RunData keeps each key's latest point (its highest step); .metrics holds values only.
        return {metric.key: metric.step for metric in run.data._metric_objs}
