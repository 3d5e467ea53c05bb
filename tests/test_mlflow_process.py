"""The tracker's deliveries through the MLflow child process (tracking/process.py), real sqlite store."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from slimtrack.metrics import TrainingMetrics
from slimtrack.tracking.process import SinkProcess, start_mlflow_process
from slimtrack.tracking.sink import MlflowSink
from slimtrack.tracking.tracker import MlflowTracker


def record(step: int) -> TrainingMetrics:
    return TrainingMetrics(step=step, loss=1.0 / step, accuracy=0.5, tokens_per_sec=100.0,
                           learning_rate=1e-3, timestamp=1.7e9 + step)


def logged_steps(run_id: str, key: str = "loss") -> list[int]:
    return sorted(m.step for m in MlflowClient().get_metric_history(run_id, key))


def test_deliveries_go_through_a_child_process_and_its_cpu_is_counted(mlflow_store):
    tracker = MlflowTracker.start("exp-p", "r", {}, mlflow_process=start_mlflow_process(10))
    assert isinstance(tracker.process, SinkProcess) and not tracker.process.in_process
    assert tracker.delivery.sink is tracker.process and tracker.process._child.pid != os.getpid()
    assert tracker.wait_ready(timeout=120)  # the child imported MLflow and opened the store
    for step in range(1, 31):
        tracker.log_record(record(step))
    assert tracker.flush(timeout=60)
    assert tracker.cost().worker_cpu_seconds > 0  # the child's CPU since it was ready
    tracker.finish()
    assert logged_steps(tracker.run_id) == list(range(1, 31))
    assert MlflowClient().get_run(tracker.run_id).info.status == "FINISHED"


def test_an_error_in_the_child_is_raised_in_the_caller(mlflow_store):
    client = SinkProcess(start_mlflow_process(0))
    try:
        with pytest.raises(MlflowException):
            client.logged_steps("no-such-run")
        assert not client.in_process  # an MLflow error is an answer: the process lives on
    finally:
        client.close()


def test_a_killed_child_falls_back_to_this_process_and_loses_nothing(mlflow_store):
    tracker = MlflowTracker.start("exp-k", "r", {}, mlflow_process=start_mlflow_process(10))
    for step in range(1, 6):
        tracker.log_record(record(step))
    assert tracker.flush(timeout=60)
    os.kill(tracker.process._child.pid, signal.SIGKILL)
    for step in range(6, 11):
        tracker.log_record(record(step))
    assert tracker.flush(timeout=60)
    assert tracker.process.in_process and not tracker.offline  # the retry went from this process
    tracker.finish()
    assert logged_steps(tracker.run_id) == list(range(1, 11))


def test_a_checkpoint_given_to_a_child_that_died_is_uploaded_again_from_this_process(mlflow_store, tmp_path):
    """The child took the upload (its upload thread may not have run it) and died: the run's
    end hands it back to the delivery, which uploads it from this process."""
    tracker = MlflowTracker.start("exp-u", "r", {}, mlflow_process=start_mlflow_process(10))
    checkpoint = tmp_path / "latest.pt"
    checkpoint.write_bytes(b"state")
    tracker.log_artifact(checkpoint, "checkpoints", bulky=True)
    assert tracker.flush(timeout=60) and not tracker.process.in_process
    child = tracker.process._child._process
    os.kill(child.pid, signal.SIGKILL)
    child.wait(30)
    redo = tracker.process.drain_uploads(10)
    assert [(op.path, op.artifact_path, op.bulky) for op in redo] == [(str(checkpoint), "checkpoints", False)]
    tracker.delivery.send(redo)  # what finish does with them
    tracker.finish()
    client = MlflowClient()
    assert [f.path for f in client.list_artifacts(tracker.run_id, "checkpoints")] == ["checkpoints/latest.pt"]
    assert client.get_run(tracker.run_id).info.status == "FINISHED"


def test_the_process_can_be_switched_off(mlflow_store):
    tracker = MlflowTracker.start("exp-o", "r", {}, mlflow_process=None)  # tracking.mlflow_process = False
    assert tracker.process is None and type(tracker.delivery.sink) is MlflowSink
    tracker.log_record(record(1))
    tracker.finish()
    assert logged_steps(tracker.run_id) == [1]


def test_a_prestarted_process_is_taken_over_and_follows_this_process_store(mlflow_store, tmp_path, monkeypatch):
    """`slimtrack train` starts the MLflow process before anything else; the tracker takes it
    over, and its ready(uris) points it at the store this process resolved, even when
    that is not the one the child was started with."""
    import mlflow

    child = start_mlflow_process(10)  # started with mlflow_store's URI in the environment
    other = f"sqlite:///{tmp_path / 'other.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", other)
    mlflow.set_tracking_uri(other)
    tracker = MlflowTracker.start("exp-pre", "r", {}, mlflow_process=child)
    assert tracker.process._child is child
    tracker.log_record(record(1))
    tracker.finish()
    assert sorted(m.step for m in MlflowClient(other).get_metric_history(tracker.run_id, "loss")) == [1]


RACE = """
import sys, time
from slimtrack.tracking.client import Client
uri, start = sys.argv[1], float(sys.argv[2])
time.sleep(max(0.0, start - time.time()))  # both processes open the new file at once
Client(uri).search_experiments()
"""


def test_two_processes_opening_a_new_sqlite_store_at_once_both_succeed(tmp_path):
    """What `slimtrack train` does (the MLflow process and the run's opening); without the
    lock one of them failed creating the tables, 3 times in 3."""
    uri = f"sqlite:///{tmp_path / 'fresh.db'}"
    start = time.time() + 8  # past both imports of MLflow
    procs = [subprocess.Popen([sys.executable, "-c", RACE, uri, str(start)], stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    assert [e.name for e in MlflowClient(uri).search_experiments()] == ["Default"]
