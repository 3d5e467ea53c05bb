"""Bulky uploads (checkpoints) on a thread of their own: the deliveries after one never wait
for it, a path waiting again is uploaded once more, failures come back for the delivery."""

from __future__ import annotations

import threading
from pathlib import Path

from mlflow import MlflowClient

from slimtrack.tracking.client import Client
from slimtrack.tracking.operations import LogArtifact, LogMetrics, StartRun
from slimtrack.tracking.sink import MlflowSink
from slimtrack.tracking.uploads import Uploads


class GatedUpload:
    """An upload function that waits for ``gate`` before each upload, and records them."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.started = threading.Event()
        self.done: list[str] = []
        self.fail_on: set[str] = set()

    def __call__(self, op: LogArtifact) -> None:
        self.started.set()
        self.gate.wait(10)
        if op.path in self.fail_on:
            raise ConnectionError("server away")
        if not Path(op.path).exists():
            raise FileNotFoundError(op.path)
        self.done.append(op.path)


def checkpoint(tmp_path: Path, name: str) -> LogArtifact:
    path = tmp_path / name
    path.write_bytes(b"state")
    return LogArtifact(run_id="run", path=str(path), artifact_path="checkpoints", bulky=True)


def test_submit_returns_while_the_upload_runs_and_drain_waits_for_it(tmp_path):
    upload = GatedUpload()
    uploads = Uploads(upload)
    uploads.submit(checkpoint(tmp_path, "latest.pt"))
    assert upload.started.wait(5) and upload.done == []  # running, and submit has returned
    waiting = uploads.drain(timeout=0.05)  # timed out: the running upload comes back to be redone
    assert [op.path for op in waiting] == [str(tmp_path / "latest.pt")] and not waiting[0].bulky
    upload.gate.set()
    assert uploads.drain() == [] and upload.done == [str(tmp_path / "latest.pt")]


def test_a_path_submitted_again_while_it_uploads_is_uploaded_once_more(tmp_path):
    upload = GatedUpload()
    uploads = Uploads(upload)
    latest = checkpoint(tmp_path, "latest.pt")
    uploads.submit(latest)
    assert upload.started.wait(5)
    for _ in range(3):  # three newer checkpoints while the first upload runs
        uploads.submit(latest)
    upload.gate.set()
    assert uploads.drain() == [] and upload.done == [latest.path, latest.path]


def test_failed_uploads_come_back_in_line_and_gone_files_are_skipped(tmp_path):
    upload = GatedUpload()
    upload.gate.set()
    uploads = Uploads(upload)
    failing, gone, fine = checkpoint(tmp_path, "a.pt"), checkpoint(tmp_path, "b.pt"), checkpoint(tmp_path, "c.pt")
    upload.fail_on.add(failing.path)
    Path(gone.path).unlink()
    for op in (failing, gone, fine):
        uploads.submit(op)
    failed = uploads.drain()
    assert [(op.path, op.artifact_path, op.bulky) for op in failed] == [(failing.path, "checkpoints", False)]
    assert upload.done == [fine.path]
    assert uploads.drain() == []  # returned once


def test_a_bulky_artifact_reaches_a_real_store_while_metrics_go_on(tmp_path, mlflow_store):
    sink = MlflowSink(Client())
    run = sink.start_run(StartRun(experiment="uploads", run_key="k"))
    big = tmp_path / "step_000010.pt"
    big.write_bytes(b"\0" * (8 << 20))
    sink.log_artifact(LogArtifact(run_id=run.run_id, path=str(big), artifact_path="checkpoints", bulky=True))
    sink.log_metrics(LogMetrics(run_id=run.run_id, points=[("loss", 1.0, 0, 1)]))
    assert sink.drain_uploads(60) == []
    client = MlflowClient()
    assert [f.path for f in client.list_artifacts(run.run_id, "checkpoints")] == ["checkpoints/step_000010.pt"]
    assert client.get_run(run.run_id).data.metrics["loss"] == 1.0
