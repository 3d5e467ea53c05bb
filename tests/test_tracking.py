"""MlflowTracker against a real sqlite-backed MLflow store (no mocks)."""

import json
import threading
from pathlib import Path

import mlflow
import numpy as np
from mlflow import MlflowClient

from slimtrack.metrics import TrainingMetrics
from slimtrack.tracking import NullTracker
from slimtrack.tracking.client import Client, open_encoded_png
from slimtrack.tracking.delivery import Delivery
from slimtrack.tracking.operations import LogArtifact, LogMetrics, RunRef, StartRun
from slimtrack.tracking.spool import Spool
from slimtrack.tracking.sink import EXPERIMENT_KIND, MlflowSink
from slimtrack.tracking.tracker import MlflowTracker
from slimtrack.tracking.uri import redact_uri


def record(step: int) -> TrainingMetrics:
    return TrainingMetrics(step=step, loss=10.0 / step, accuracy=step / 1000, tokens_per_sec=100.0 + step,
                           learning_rate=1e-3, timestamp=1_700_000_000 + step,
                           loss_by_source={"PythonDocs": 1.0})


def test_every_record_lands_once_per_step(mlflow_store):
    tracker = MlflowTracker.start("exp-a", "run-a", {"slimtrack.device": "cpu"})
    main_thread = threading.get_ident()
    for step in range(1, 301):
        tracker.log_record(record(step))  # returns at once; the worker batches
    assert threading.get_ident() == main_thread
    tracker.finish("FINISHED")

    client = MlflowClient()
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["slimtrack.device"] == "cpu"
    for key in ("loss", "accuracy", "tokens_per_sec", "learning_rate", "gpu_memory_mb",
                "loss_by_source/PythonDocs"):
        steps = [m.step for m in client.get_metric_history(tracker.run_id, key)]
        assert sorted(steps) == list(range(1, 301)), key
    experiment = client.get_experiment(tracker.delivery.run.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == EXPERIMENT_KIND


def test_params_never_clash_with_existing_ones(mlflow_store):
    client = MlflowClient()
    exp = client.create_experiment("exp-b")
    run_id = client.create_run(exp).info.run_id
    client.log_param(run_id, "max_chunks", "100")  # what `mlflow run -P` logs itself
    import os
    os.environ["MLFLOW_RUN_ID"] = run_id
    try:
        tracker = MlflowTracker.start("ignored", "", {})
        tracker.log_params({"max_chunks": "100.0", "train.lr": "0.001"})
        tracker.finish("FINISHED")
    finally:
        del os.environ["MLFLOW_RUN_ID"]
    params = client.get_run(run_id).data.params
    assert params == {"max_chunks": "100", "train.lr": "0.001"}
    assert tracker.delivery.run.started_here is False


def test_resume_never_relogs_a_step(mlflow_store):
    tracker = MlflowTracker.start("exp-c", "r", {})
    for step in (1, 2, 3):
        tracker.log_record(record(step))
    tracker.log_metrics({"accuracy": 0.9}, 4)  # a kill can land mid-step: keys differ
    tracker.finish("KILLED")
    resumed = MlflowTracker.start("ignored", "", {}, resume_run_id=tracker.run_id)
    assert MlflowClient().get_run(tracker.run_id).info.status == "RUNNING"
    assert resumed.delivery.last_steps["loss"] == 3 and resumed.delivery.last_steps["accuracy"] == 4
    for step in (2, 3, 4, 5):
        resumed.log_record(record(step))
    resumed.finish()
    client = MlflowClient()
    for key in ("loss", "accuracy"):
        steps = [m.step for m in client.get_metric_history(tracker.run_id, key)]
        assert sorted(steps) == [1, 2, 3, 4, 5], key
    assert client.get_run(tracker.run_id).info.status == "FINISHED"


def test_artifacts_images_and_tables(mlflow_store, tmp_path):
    tracker = MlflowTracker.start("exp-d", "r", {})
    table = tmp_path / "text_samples.json"
    table.write_text(json.dumps({"columns": ["step", "input"], "data": [[1, "hi"]]}))
    tracker.log_table_file(table, "training_viz")
    png = tmp_path / "dash.png"
    from PIL import Image
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(png)
    tracker.log_image(png, key="training_dashboard", step=5)
    tracker.finish()
    client = MlflowClient()
    names = {a.path for a in client.list_artifacts(tracker.run_id, "training_viz")}
    assert "training_viz/text_samples.json" in names
    tag = json.loads(client.get_run(tracker.run_id).data.tags["mlflow.loggedArtifacts"])
    assert {"path": "training_viz/text_samples.json", "type": "table"} in tag
    image_files = [a.path for a in client.list_artifacts(tracker.run_id, "images")]
    assert any("training_dashboard" in p and "+step+5+" in p for p in image_files), image_files


def test_log_image_stores_the_png_as_it_is_and_a_thumbnail(mlflow_store, tmp_path):
    """The dashboard PNG reaches MLflow's images/ byte for byte (no decode and re-encode),
    and MLflow still makes its small thumbnail from it."""
    from PIL import Image

    png = tmp_path / "dash.png"
    pixels = np.random.default_rng(0).integers(0, 255, (300, 600, 4), dtype=np.uint8)
    Image.fromarray(pixels, "RGBA").save(png, compress_level=1)  # not PIL's default level
    tracker = MlflowTracker.start("exp-img", "r", {})
    tracker.log_image(png, key="training_dashboard", step=7)
    tracker.finish()
    client = MlflowClient()
    files = [a.path for a in client.list_artifacts(tracker.run_id, "images")]
    full = [p for p in files if p.endswith(".png") and "+step+7+" in p]
    thumbnail = [p for p in files if p.endswith("+compressed.webp")]
    assert len(full) == 1 and len(thumbnail) == 1, files
    local = Path(mlflow.artifacts.download_artifacts(run_id=tracker.run_id, artifact_path="images",
                                                     dst_path=str(tmp_path / "dl")))
    assert (local / Path(full[0]).name).read_bytes() == png.read_bytes()
    with Image.open(local / Path(thumbnail[0]).name) as small:
        assert max(small.size) == 256 and small.size[0] == 2 * small.size[1]


def test_an_encoded_png_saved_another_way_is_encoded_for_real(tmp_path):
    from PIL import Image

    png = tmp_path / "a.png"
    Image.fromarray(np.full((4, 6, 3), 200, dtype=np.uint8)).save(png)
    with open_encoded_png(str(png)) as image:
        image.save(tmp_path / "b.jpg")
        image.save(tmp_path / "c.png", compress_level=9)
    for name in ("b.jpg", "c.png"):
        with Image.open(tmp_path / name) as copy:
            assert copy.size == (6, 4) and copy.getpixel((0, 0))[0] in range(195, 206)


def test_a_failing_store_spools_and_never_raises_into_training(mlflow_store, tmp_path):
    tracker = MlflowTracker.start("exp-e", "r", {}, spool_dir=tmp_path / "spool")
    real_run = tracker.delivery.run
    tracker.delivery.run = RunRef("no-such-run", real_run.experiment_id, True)  # every delivery now fails
    tracker.delivery.retry_attempts = 1
    tracker.log_record(record(1))
    tracker.log_record(record(2))
    assert tracker.flush(timeout=30)
    spool = tracker.delivery.spool
    assert tracker.offline and len(spool) >= 1
    tracker.delivery.run = real_run  # "the server is back"
    spooled = spool.read()
    for op in spooled:
        op.run_id = None
    spool.rewrite(spooled)
    assert tracker.delivery.replay() == len(spooled)
    tracker.finish()
    steps = sorted(m.step for m in MlflowClient().get_metric_history(real_run.run_id, "loss"))
    assert steps == [1, 2]


def test_a_start_replayed_after_a_partial_failure_reopens_its_run(mlflow_store):
    """A start op that created its run and then failed (e.g. sqlite locked by another
    writer) is retried or spooled and replayed: applying it again must reopen that run,
    never create a second one with the same name."""
    delivery = Delivery(MlflowSink(Client()), None)
    op = StartRun(experiment="exp-start", run_name="once", run_key="k1", tags={"t": "1"})
    delivery.deliver(op)
    first = delivery.run_id
    delivery.deliver(op)  # what a retry or a spool replay does with the same op
    assert delivery.run_id == first and delivery.run.started_here
    client = MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name("exp-start").experiment_id])
    assert [r.info.run_id for r in runs] == [first]


def test_redact_uri_and_null_tracker():
    assert redact_uri("http://bob:s3cret@host:5000/x") == "http://host:5000/x"
    assert redact_uri("sqlite:///tmp/m.db") == "sqlite:///tmp/m.db"
    null = NullTracker()
    null.log_record(record(1))
    assert null.flush() and null.run_id is None


def _spool_started_offline(tmp_path: Path, missing: Path) -> Spool:
    """What a run that never reached its store leaves: the start, metrics, a checkpoint since rotated away."""

    spool = Spool(tmp_path / "out")
    spool.append([StartRun(experiment="exp-offline", run_name="offline", run_key="key-offline"),
                  LogMetrics(points=[("loss", 1.0, 1000, 1), ("loss", 0.9, 2000, 2)]),
                  LogArtifact(path=str(missing), artifact_path="checkpoints"),
                  LogMetrics(points=[("loss", 0.8, 3000, 3)])])
    return spool


def test_a_replay_killed_after_creating_the_run_and_replayed_again_creates_it_once(mlflow_store, tmp_path):
    spool = _spool_started_offline(tmp_path, tmp_path / "gone.pt")
    first = Delivery(MlflowSink(Client()), spool)
    first.deliver(spool.read()[0])  # the first replay creates the run and dies before it rewrites the spool
    first.deliver(spool.read()[1])
    again = Delivery(MlflowSink(Client()), spool)
    again.offline = True
    assert again.replay() == 4 and not again.offline and len(spool) == 0
    client = MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name("exp-offline").experiment_id])
    assert [r.info.run_id for r in runs] == [again.run_id]
    assert sorted(m.step for m in client.get_metric_history(again.run_id, "loss")) == [1, 2, 3]


def test_a_spooled_checkpoint_that_was_rotated_away_does_not_block_the_rest(mlflow_store, tmp_path):
    spool = _spool_started_offline(tmp_path, tmp_path / "out" / "checkpoints" / "step_000005.pt")
    delivery = Delivery(MlflowSink(Client()), spool)
    delivery.offline = True
    assert delivery.replay() == 4 and len(spool) == 0
    assert delivery.missing_files == [str(tmp_path / "out" / "checkpoints" / "step_000005.pt")]
    assert sorted(m.step for m in MlflowClient().get_metric_history(delivery.run_id, "loss")) == [1, 2, 3]
