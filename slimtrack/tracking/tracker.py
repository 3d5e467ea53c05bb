"""MlflowTracker: the Tracker of a tracked run (rank 0), built from the tracking parts.

The training thread turns each call into an operation (operations.py) and hands it to
the worker (worker.py); it never waits on MLflow. The worker batches the operations
(batching.py) and hands them to the delivery (delivery.py), which applies them to the
sink in the MLflow process (process.py, sink.py) and spools them while the store is
away. The run itself is opened from this process before the worker starts, so the run
exists (or the store's error is known) when training begins.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from slimtrack.errors import UserError
from slimtrack.metrics import TrainingMetrics
from slimtrack.runtime.child import ChildGone, ChildProcess
from slimtrack.tracking.delivery import Delivery, first_line
from slimtrack.tracking.operations import (EndRun, LogArtifact, LogImage, LogInputs, LogMetrics, LogModel, LogParams,
                                           SetTag, StartRun, TagSource)
from slimtrack.tracking.process import SinkProcess, apply_http_policy
from slimtrack.tracking.protocol import TrackingCost
from slimtrack.tracking.spool import Spool
from slimtrack.tracking.uri import redact_text, redact_uri
from slimtrack.tracking.worker import DeliveryWorker

log = logging.getLogger(__name__)

MAX_PARAM_LENGTH = 6000  # MLflow's limit for a param value


def say(message: str) -> None:
    print(f"slimtrack: {redact_text(message)}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class TrackerSettings:
    """How the tracker batches, replays and yields (TrackingConfig's delivery fields)."""

    log_linger: float = 5.0  # seconds a record may wait to share a log_batch with the next ones
    replay_interval: float = 10.0  # offline: seconds between attempts to replay the spool
    final_replay_timeout: float = 30.0  # at the end of an offline run: seconds to keep trying
    background_nice: int = 10  # how much nicer than the training threads the worker runs
    system_metrics: bool = False  # MLflow's system-metrics monitor, in the MLflow process
    system_metrics_interval: float = 10.0  # seconds between two samples
    register_model: str = ""  # the registered model the final model becomes a version of


class MlflowTracker:
    """Non-blocking, outage-proof MLflow logging for one run."""

    def __init__(self, delivery: Delivery, settings: TrackerSettings, process: SinkProcess | None,
                 resumed: bool = False) -> None:
        self.delivery = delivery
        self.settings = settings
        self.process = process  # the MLflow process's sink, once the run is open
        self._resumed = resumed  # a continued run: system metrics go on from its last step
        self._monitoring = False  # the system-metrics monitor runs
        self.worker = DeliveryWorker(delivery, linger=settings.log_linger, replay_interval=settings.replay_interval,
                                     background_nice=settings.background_nice, before_first=self._open_process)
        self._table_paths: list[str] = []
        self._caller_seconds = 0.0  # training-thread seconds inside log_metrics

    @classmethod
    def start(cls, experiment: str, run_name: str, tags: dict[str, str], *,
              settings: TrackerSettings = TrackerSettings(), resume_run_id: str | None = None, spool_dir: Path | None = None,
              mlflow_process: ChildProcess | None = None) -> "MlflowTracker":
        """Attach to MLFLOW_RUN_ID (``mlflow run``), reopen ``resume_run_id``, or create a run
        in ``experiment``. With ``spool_dir``, a store unreachable at start is survived too:
        the run is created when the spool is replayed. With ``mlflow_process``, deliveries
        go through that child; without it, they are made in this process."""
        apply_http_policy()
        process = SinkProcess(mlflow_process) if mlflow_process is not None else None
        delivery = open_delivery(Spool(spool_dir) if spool_dir else None, process)
        tags = {key: str(value) for key, value in tags.items()}  # plain str: nothing for the child to import
        start = StartRun(experiment=experiment, run_name=run_name, run_key=secrets.token_hex(8), tags=tags,
                         resume_run_id=resume_run_id, attach_run_id=os.environ.get("MLFLOW_RUN_ID"))
        if delivery.remote:
            delivery.send([start])  # a server that is away: the run is created when the spool is replayed
        else:
            try:
                delivery.deliver_with_retry(start)
            except Exception as exc:  # noqa: BLE001 — a local store that fails now is the user's to fix
                raise UserError(f"tracking store {redact_uri(delivery.store)}: {first_line(exc)}") from None
        if not start.attach_run_id:  # `mlflow run` sets its own; resolved before the loop, not in it
            delivery.send([TagSource(argv=list(sys.argv), cwd=os.getcwd())])
        if process is not None:
            delivery.sink = process
        return cls(delivery, settings, process, resumed=resume_run_id is not None)

    @property
    def run_id(self) -> str | None:
        return self.delivery.run_id

    @property
    def offline(self) -> bool:
        return self.delivery.offline

    # ---- the Tracker calls (each returns at once) ----------------------------------------------
    def log_params(self, params: dict[str, str]) -> None:
        self.worker.put(LogParams(params={k: str(v)[:MAX_PARAM_LENGTH] for k, v in params.items()}))

    def log_record(self, record: TrainingMetrics) -> None:
        self.log_metrics(record.as_metrics(), record.step, timestamp=record.timestamp)

    def log_metrics(self, metrics: dict[str, float], step: int, timestamp: float | None = None) -> None:
        started = time.perf_counter()
        millis = int((timestamp or time.time()) * 1000)
        points = [(key, float(value), millis, step) for key, value in metrics.items()
                  if step > self.delivery.last_steps.get(key, 0)]  # resumed: never log a step twice
        if points:
            self.worker.put(LogMetrics(points=points))
        self._caller_seconds += time.perf_counter() - started

    def log_artifact(self, local_path: Path, artifact_path: str | None = None, bulky: bool = False) -> None:
        """``bulky`` (a checkpoint): uploaded on a thread of its own where the sink runs
        (uploads.py), so the deliveries after it do not wait for it."""
        self.worker.put(LogArtifact(path=str(local_path), artifact_path=artifact_path, bulky=bulky))

    def log_image(self, png_path: Path, key: str, step: int) -> None:
        self.worker.put(LogImage(path=str(png_path), key=key, step=step))

    def log_inputs(self, datasets: list[dict[str, str]]) -> None:
        """Dataset inputs of the run (``data.lineage``), each with its ``context``."""
        self.worker.put(LogInputs(datasets=datasets))

    def set_tag(self, key: str, value: str) -> None:
        self.worker.put(SetTag(key=key, value=value))

    def log_table_file(self, local_path: Path, artifact_path: str) -> None:
        """Upload a file already in MLflow's table format and register it as a table.

        ``mlflow.log_table`` downloads and concatenates the existing file on every call
        (quadratic over a run); uploading the file and listing it in the
        ``mlflow.loggedArtifacts`` tag gives the UI the same table view."""
        artifact_file = f"{artifact_path}/{Path(local_path).name}"
        if artifact_file not in self._table_paths:
            self._table_paths.append(artifact_file)
        self.log_artifact(local_path, artifact_path)
        self.worker.put(SetTag(key="mlflow.loggedArtifacts",
                             value=json.dumps([{"path": p, "type": "table"} for p in self._table_paths])))

    def log_model(self, checkpoint: Path, model_config: dict[str, Any], seq_len: int,
                  tokenizer_file: Path | None = None, program: Path | None = None) -> None:
        """The final model, from the checkpoint that holds its weights, into the run
        (model_export.py), after everything logged before it; with ``tokenizer_file`` (the
        run's tokenizer.json or byte tokenizer definition), as a text model: a pyfunc flavour
        (prompts in, continuations out) beside the pytorch one. ``program``: the model's .pt2
        file, logged as it is when it exists, else exported into it. Returns at once; once
        the run is finished, ``model_logged`` says whether it is in the store."""
        self.worker.put(LogModel(checkpoint=str(checkpoint), model_config=model_config, seq_len=seq_len,
                                 tokenizer_file=str(tokenizer_file) if tokenizer_file else None,
                                 register_as=self.settings.register_model, program=str(program or "")))

    @property
    def model_logged(self) -> bool:
        return self.delivery.model_logged

    def wait_ready(self, timeout: float = 120.0) -> bool:
        """Block until deliveries can start (the MLflow process has opened the store): a
        benchmark times deliveries without that one-off; a run never waits for it."""
        return self.worker.wait_ready(timeout)

    def flush(self, timeout: float = 300.0) -> bool:
        """Wait until everything logged so far is delivered or spooled; False on timeout."""
        return self.worker.flush(timeout)

    def cost(self) -> TrackingCost:
        cpu = self.worker.cpu_seconds + (self.process.cpu_seconds() if self.process is not None else 0.0)
        return TrackingCost(cpu, self._caller_seconds)

    def finish(self, status: str = "FINISHED") -> None:
        """Deliver (or spool) everything and end the run: a run this process started, or
        any run that did not finish."""
        self.flush()
        self.worker.stop()
        self._stop_system_metrics()
        deliver_failed_uploads(self.delivery, self._services())
        run = self.delivery.run
        if run is None or run.started_here or status != "FINISHED":
            self.delivery.send([EndRun(status=status)])
        self._final_replay()
        if self.process is not None:
            self.process.close()

    def _final_replay(self) -> None:
        timeout = self.settings.final_replay_timeout
        if not self.offline:
            return
        say(f"tracking server unreachable at the end of the run; retrying for up to {timeout:.0f} s")
        deadline = time.monotonic() + timeout
        while self.delivery.replay() == 0 and self.offline and time.monotonic() < deadline:
            time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))
        spool = self.delivery.spool
        if self.offline and spool is not None:
            say(f"{len(spool)} tracking operations are still spooled in {spool.path}; "
                f"deliver them with: slimtrack sync {spool.path.parent}")

    def ui_hint(self) -> str:
        """How to open this run in the MLflow UI (Model-training mode)."""
        run = self.delivery.run
        if run is None:
            return "(the run is created when the spool is delivered: slimtrack sync)"
        uri = self.delivery.store
        path = f"#/experiments/{run.experiment_id}/runs/{run.run_id}?workflowType=machine_learning"
        if uri.startswith(("http://", "https://")):
            return f"{redact_uri(uri).rstrip('/')}/{path}"
        return f"mlflow ui --backend-store-uri {shlex.quote(redact_uri(uri))}  then open http://127.0.0.1:5000/{path}"

    def _open_process(self) -> None:
        """On the worker, before the first delivery: the MLflow process starts sampling
        system metrics once the run exists (it opened the store in ``open_delivery``)."""
        if self.settings.system_metrics and self.run_id is not None and not self.offline:
            self._services().start_system_metrics(self.run_id, self.settings.system_metrics_interval, self._resumed)
            self._monitoring = True
        if self.process is not None:
            self.process.count_cpu_from_now()  # the run's one-off start is not what tracking costs the loop

    def _stop_system_metrics(self) -> None:
        if self._monitoring:
            try:
                self._services().stop_system_metrics()
            except Exception as exc:  # noqa: BLE001 — the samples so far are in the store
                log.warning("mlflow: stopping the system-metrics monitor failed: %s", redact_text(str(exc)))
            self._monitoring = False

    def _services(self) -> Any:
        """Where the MLflow services run: the MLflow process, else the in-process sink."""
        return self.process if self.process is not None else self.delivery.sink


def open_delivery(spool: Spool | None, process: SinkProcess | None = None) -> Delivery:
    """A delivery to the store MLflow resolves (MLFLOW_TRACKING_URI): through the MLflow
    process when there is one (this process then opens no store of its own), else from
    this process. A store that cannot be opened at all is a UserError (one line, exit
    status 2)."""
    if process is not None and not process.in_process:
        try:
            store, problem = process.open_store(resolved_uris())
        except ChildGone:
            pass  # the process is gone: this process opens the store itself, below
        else:
            if problem is not None:
                raise UserError(f"tracking store {redact_uri(store)}: {problem}")
            delivery = Delivery(process, spool, say=say, remote=is_remote(store))
            delivery.store = store
            return delivery
    import mlflow

    from slimtrack.tracking.client import Client
    from slimtrack.tracking.sink import MlflowSink

    store = mlflow.get_tracking_uri()
    try:
        client = Client()
    except Exception as exc:  # noqa: BLE001 — an unknown scheme, a corrupt or unwritable sqlite file
        raise UserError(f"tracking store {redact_uri(store)}: {first_line(exc)}") from None
    delivery = Delivery(MlflowSink(client), spool, say=say, remote=is_remote(store))
    delivery.store = store
    return delivery


def deliver_failed_uploads(delivery: Delivery, services: Any, timeout: float = 300.0) -> None:
    """Wait for the bulky uploads (uploads.py); deliver the failed ones in line, or spool them."""
    try:
        failed = services.drain_uploads(timeout)
    except Exception as exc:  # noqa: BLE001 — the sink is gone with them; the files stay on disk
        log.warning("mlflow: the uploads could not be checked: %s", redact_text(str(exc)))
        return
    if failed:
        delivery.send(failed)


def resolved_uris() -> tuple[str, str] | None:
    """The tracking and registry URIs MLflow resolves in this process, when MLflow is
    imported here (a caller may have set them); None: the MLflow process resolves them
    from the same environment and working folder."""
    if "mlflow" not in sys.modules:
        return None
    import mlflow

    return mlflow.get_tracking_uri(), mlflow.get_registry_uri()


def is_remote(store: str) -> bool:
    """Whether the store is a server (it may be away for a while) rather than local files."""
    return urlsplit(store).scheme not in ("", "file", "sqlite")


def sync(spool_dir: Path) -> Delivery:
    """Deliver the spool a run left in ``spool_dir`` (``slimtrack sync``), from this process."""
    apply_http_policy()
    delivery = open_delivery(Spool(spool_dir))
    delivery.offline = True
    delivery.replay()
    deliver_failed_uploads(delivery, delivery.sink)
    return delivery
