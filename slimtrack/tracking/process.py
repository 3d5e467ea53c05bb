"""SinkProcess: the MLflow sink's calls made in a child process, off the training process's GIL.

MLflow's client is SQLAlchemy and HTTP code in Python. Made on a thread of the training
process, it takes the GIL in switch-interval slices, and the training thread, which
takes the GIL back after every torch op, waits each time. The child (``python -m
slimtrack.tracking.process``, runtime/child.py) has its own interpreter and GIL and
runs at the background priority; the training process only pickles operations.

``start_mlflow_process`` starts the child; ``slimtrack train`` calls it first thing, so
the child's MLflow import runs beside the training process's own imports, and hands the
child to the run. :class:`SinkProcess` has the :class:`~operations.Sink` methods, each
one request to the child. When the child cannot start, or dies, the calls are made in
this process from then on (the call that found it dead raises, so the delivery's retry
decides about it, as for a network error). This module imports MLflow only in the child
or once the child is gone.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import threading
from typing import Any

from slimtrack.runtime.child import ChildGone, ChildProcess
from slimtrack.tracking.operations import (EndRun, LogArtifact, LogImage, LogInputs, LogMetrics, LogModel, LogParams,
                                           RunRef, SetTag, Sink, StartRun, TagSource)

log = logging.getLogger(__name__)

CHILD_MODULE = "slimtrack.tracking.process"
# MLflow's own HTTP retries (minutes by default) would hold a delivery long after the
# store went away; slimtrack retries and spools itself. A user's own settings win.
HTTP_POLICY = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


def apply_http_policy() -> None:
    """Set ``HTTP_POLICY`` in this process's environment where the user set nothing."""
    for name, value in HTTP_POLICY.items():
        os.environ.setdefault(name, value)


def start_mlflow_process(background_nice: int, model_config: dict[str, Any] | None = None,
                         seq_len: int = 0) -> ChildProcess | None:
    """Start the MLflow process now, ``background_nice`` nicer than this one. With
    ``model_config`` (the run logs its model, a GPT of these ModelConfig fields, with inputs
    of ``seq_len`` tokens), it starts the export process (export.py) at once, and imports
    what logging the model needs once the run is open. None when it cannot start (the sink
    then works in this process)."""
    args = [str(background_nice), *([json.dumps([model_config, seq_len])] if model_config else [])]
    try:
        return ChildProcess(CHILD_MODULE, args=args, env={**HTTP_POLICY, **os.environ})
    except ChildGone as exc:
        log.warning("MLflow process unavailable (%s); deliveries go from this process", exc)
        return None


class SinkProcess:
    """A :class:`Sink` whose calls run in the MLflow process (or here, once it is gone)."""

    def __init__(self, child: ChildProcess | None) -> None:
        self._child = child if child is not None and child.alive else None
        self._local: Sink | None = None  # an MlflowSink in this process, once the child is gone
        self._cpu_at_ready: float | None = None  # the child's CPU once it had opened the store
        self._bulky_in_child: dict[tuple[str, str | None], LogArtifact] = {}  # since the last drain

    @property
    def in_process(self) -> bool:
        return self._child is None or not self._child.alive

    def open_store(self, uris: tuple[str, str] | None) -> tuple[str, str | None]:
        """The child opens the store: this process's ``uris``, or with None the one the
        environment names. Returns the store's tracking URI and, when it cannot be opened,
        the first line of why. From then on the child's CPU is counted (``cpu_seconds``)."""
        store, problem = self._ask("open_store", uris)
        self.count_cpu_from_now()
        return store, problem

    def count_cpu_from_now(self) -> None:
        """Leave what the child did so far (opening the store and the run, starting the
        system-metrics monitor: once per run) out of ``cpu_seconds``."""
        if not self.in_process:
            self._cpu_at_ready = self._child.cpu_seconds()

    def cpu_seconds(self) -> float:
        """The child's CPU time since it was ready: what the deliveries cost it (the export
        process it starts is a process of its own, at idle priority, and not counted)."""
        if self.in_process or self._cpu_at_ready is None:
            return 0.0
        return max(0.0, self._child.cpu_seconds() - self._cpu_at_ready)

    def close(self) -> None:
        if self._child is not None:
            self._child.close()

    # ---- the Sink methods ----------------------------------------------------------------------
    def start_run(self, op: StartRun) -> RunRef:
        return self._ask("start_run", op)

    def log_metrics(self, op: LogMetrics) -> None:
        self._ask("log_metrics", op)

    def log_params(self, op: LogParams) -> None:
        self._ask("log_params", op)

    def log_artifact(self, op: LogArtifact) -> None:
        given_to_child = op.bulky and not self.in_process
        self._ask("log_artifact", op)
        if given_to_child:  # uploaded on the child's upload thread: uploaded again should the child die
            self._bulky_in_child[(op.path, op.artifact_path)] = op

    def log_image(self, op: LogImage) -> None:
        self._ask("log_image", op)

    def log_inputs(self, op: LogInputs) -> None:
        self._ask("log_inputs", op)

    def set_tag(self, op: SetTag) -> None:
        self._ask("set_tag", op)

    def tag_source(self, op: TagSource) -> None:
        self._ask("tag_source", op)

    def end_run(self, op: EndRun) -> None:
        self._ask("end_run", op)

    def log_model(self, op: LogModel) -> bool:
        return self._ask("log_model", op)

    def logged_steps(self, run_id: str) -> dict[str, int]:
        return self._ask("logged_steps", run_id)

    def start_system_metrics(self, run_id: str, interval: float, resume: bool) -> None:
        self._ask("start_system_metrics", (run_id, interval, resume))

    def stop_system_metrics(self) -> None:
        self._ask("stop_system_metrics", None)

    def drain_uploads(self, timeout: float) -> list[LogArtifact]:
        """The bulky uploads that failed, as in-line operations; when the child died, also
        every one it was given (its uploads may not have run)."""
        given, self._bulky_in_child = [dataclasses.replace(op, bulky=False) for op in self._bulky_in_child.values()], {}
        child_was_alive = not self.in_process
        try:
            failed = self._ask("drain_uploads", timeout)
        except ChildGone:
            return given
        return failed if child_was_alive else given + failed

    def _ask(self, method: str, argument: Any) -> Any:
        if not self.in_process:
            try:
                return self._child.ask((method, argument))
            except ChildGone as exc:
                log.warning("MLflow process died (%s); deliveries go from this process from now on", exc)
                raise
        if self._local is None:
            from slimtrack.tracking.client import Client
            from slimtrack.tracking.sink import MlflowSink

            self._local = MlflowSink(Client())
        return _SINK_METHODS[method](self._local, argument)


_SINK_METHODS = {
    "start_run": lambda sink, op: sink.start_run(op),
    "log_metrics": lambda sink, op: sink.log_metrics(op),
    "log_params": lambda sink, op: sink.log_params(op),
    "log_artifact": lambda sink, op: sink.log_artifact(op),
    "log_image": lambda sink, op: sink.log_image(op),
    "log_inputs": lambda sink, op: sink.log_inputs(op),
    "set_tag": lambda sink, op: sink.set_tag(op),
    "end_run": lambda sink, op: sink.end_run(op),
    "log_model": lambda sink, op: sink.log_model(op),
    "logged_steps": lambda sink, run_id: sink.logged_steps(run_id),
    "start_system_metrics": lambda sink, args: sink.start_system_metrics(*args),
    "stop_system_metrics": lambda sink, _: sink.stop_system_metrics(),
    "tag_source": lambda sink, op: sink.tag_source(op),
    "drain_uploads": lambda sink, timeout: sink.drain_uploads(timeout),
}


# ---- in the child ------------------------------------------------------------------------------
def main(background_nice: int, model_to_export: tuple[dict[str, Any], int] | None) -> None:
    from slimtrack.tracking.export import ExportProcess

    # First: the export process imports torch and exports the model on idle CPU time.
    export = ExportProcess(*model_to_export, awaited_nice=background_nice) if model_to_export else None
    import mlflow

    from slimtrack.runtime.child import serve
    from slimtrack.runtime.priority import lower_this_thread_priority
    from slimtrack.tracking.client import Client
    from slimtrack.tracking.delivery import first_line
    from slimtrack.tracking.model_export import import_for_logging
    from slimtrack.tracking.sink import MlflowSink

    # The store the environment names is opened now, the usual case. The parent's
    # "open_store" may name another store it resolved; that one is opened then. A store
    # that cannot be opened is not an error here: the parent gets it as the answer.
    uris = (mlflow.get_tracking_uri(), mlflow.get_registry_uri())
    try:
        sink: MlflowSink | None = MlflowSink(Client(*uris), export)
    except Exception:  # noqa: BLE001
        sink = None
    lower_this_thread_priority(background_nice)  # deliveries wait a little rather than preempt the step

    def open_store(requested: tuple[str, str] | None) -> tuple[str, str | None]:
        nonlocal sink, uris
        if requested is not None and tuple(requested) != uris:
            uris, sink = tuple(requested), None
        if sink is None:
            try:
                sink = MlflowSink(Client(*uris), export)
            except Exception as exc:  # noqa: BLE001 — an unknown scheme, a corrupt or unwritable sqlite file
                return uris[0], first_line(exc)
        return uris[0], None

    warm = threading.Thread(target=import_for_logging, name="slimtrack-warm", daemon=True)

    def answer(request: tuple[str, Any]) -> Any:
        nonlocal sink
        method, argument = request
        if method == "start_run" and export is not None and warm.ident is None:
            warm.start()  # the run is open: nothing waits for this now
        if method == "open_store":
            return open_store(argument)
        if sink is None:
            sink = MlflowSink(Client(*uris), export)
        return _SINK_METHODS[method](sink, argument)

    serve(answer)
    # The parent closed the pipe once every request was answered, so every call has
    # returned and nothing is left to write; the interpreter's own teardown (MLflow's
    # exit handlers, SQLAlchemy's pools, module cleanup) would only hold the parent's
    # wait for this process. The monitor is stopped and the uploads finished first, should
    # the parent not have.
    if sink is not None:
        sink.stop_system_metrics()
        sink.uploads.drain()
    if export is not None:
        export.close()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 0, json.loads(sys.argv[2]) if len(sys.argv) > 2 else None)
