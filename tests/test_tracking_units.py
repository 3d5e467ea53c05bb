"""The pure tracking units: operations, Batcher, Delivery and Spool, against a recording sink."""

from __future__ import annotations

from pathlib import Path

from tracking_fakes import RecordingSink

from slimtrack.tracking.batching import Batcher
from slimtrack.tracking.delivery import Delivery
from slimtrack.tracking.operations import (EndRun, LogArtifact, LogMetrics, LogModel, LogParams, SetTag, StartRun,
                                           TagSource, from_json, merge_metrics)
from slimtrack.tracking.spool import Spool


def metrics(step: int, run_id: str | None = None) -> LogMetrics:
    return LogMetrics(run_id=run_id, points=[("loss", 1.0 / step, 1000 * step, step)])


def test_every_operation_survives_its_spool_line():
    ops = [StartRun(experiment="e", run_name="r", run_key="k", tags={"a": "1"}, attach_run_id="x"),
           metrics(3, "run"), LogParams(run_id="run", params={"train.lr": "0.001"}),
           LogArtifact(run_id="run", path="/a/b.png", artifact_path="viz"), SetTag(run_id="run", key="k", value="v"),
           LogArtifact(run_id="run", path="/o/.upload/latest.pt", artifact_path="checkpoints", bulky=True),
           LogModel(run_id="run", checkpoint="/o/step_000020.pt", model_config={"n_layer": 2}, seq_len=64,
                    tokenizer_file="/o/tokenizer.json", register_as="tiny"),
           TagSource(run_id="run", argv=["slimtrack", "train", "--test"], cwd="/home/u/project"),
           EndRun(run_id="run", status="KILLED")]
    assert [from_json(op.to_json()) for op in ops] == ops


def test_consecutive_metrics_of_one_run_merge_and_order_is_kept():
    tag = SetTag(run_id="r", key="k", value="v")
    merged = merge_metrics([metrics(1, "r"), metrics(2, "r"), tag, metrics(3, "r"), metrics(4, "other")])
    assert [type(op).__name__ for op in merged] == ["LogMetrics", "SetTag", "LogMetrics", "LogMetrics"]
    assert [p[3] for p in merged[0].points] == [1, 2] and merged[1] is tag


def test_the_batcher_sends_at_once_after_a_quiet_spell_then_lingers():
    batcher = Batcher(linger=5.0)
    assert batcher.wait(now=100.0) is None  # nothing waits
    batcher.add(metrics(1))
    assert batcher.wait(now=100.0) == 0.0  # the first record after a quiet spell goes at once
    ops, count = batcher.take(now=100.0)
    assert count == 1 and len(ops) == 1
    batcher.add(metrics(2))
    batcher.add(metrics(3))
    assert batcher.wait(now=101.0) == 4.0  # the next ones wait for the linger, together
    assert batcher.wait(now=106.0) == 0.0
    ops, count = batcher.take(now=106.0)
    assert count == 2 and len(ops) == 1 and [p[3] for p in ops[0].points] == [2, 3]


def test_a_flush_ends_the_linger_only_for_what_waits():
    batcher = Batcher(linger=5.0)
    batcher.add(metrics(1))
    batcher.take(now=10.0)
    batcher.flush()  # nothing waits: the flush is spent
    batcher.add(metrics(2))
    assert batcher.wait(now=11.0) == 4.0
    batcher.flush()
    assert batcher.wait(now=11.0) == 0.0


def test_delivery_fills_in_the_run_and_never_sends_a_step_the_store_holds():
    sink = RecordingSink()
    delivery = Delivery(sink, None, say=lambda _: None)
    delivery.send([StartRun(experiment="e", run_key="k", resume_run_id="run-1")])
    sink.store_steps = {"loss": 2}
    delivery.load_logged_steps()
    delivery.send([metrics(1), metrics(2), metrics(3)])
    assert sink.points() == [("loss", 3)]
    assert all(op.run_id == "run-1" for op in sink.applied[1:])


def test_delivery_retries_then_spools_everything_from_the_failed_operation(tmp_path: Path):
    sink = RecordingSink()
    lines: list[str] = []
    delivery = Delivery(sink, Spool(tmp_path), retry_attempts=2, retry_delay=0.0, say=lines.append)
    delivery.send([StartRun(experiment="e", run_key="k")])
    sink.fail = True
    delivery.send([metrics(1), metrics(2)])
    delivery.send([metrics(3)])
    assert delivery.offline and len(lines) == 1 and "spooled" in lines[0]
    assert [op.points[0][3] for op in delivery.spool.read()] == [1, 2, 3]
    assert all(op.run_id == "run-1" for op in delivery.spool.read())  # the spool names its run
    sink.fail = False
    assert delivery.replay() == 3
    assert not delivery.offline and len(delivery.spool) == 0
    assert sink.points() == [("loss", 1), ("loss", 2), ("loss", 3)]


def test_a_replay_that_fails_halfway_keeps_only_the_undelivered_rest(tmp_path: Path):
    sink = RecordingSink()
    spool = Spool(tmp_path)
    spool.append([StartRun(experiment="e", run_key="k"), metrics(1), metrics(2)])  # started offline
    delivery = Delivery(sink, spool, say=lambda _: None)
    delivery.offline = True
    original = sink.log_metrics

    def fail_on_step_two(op: LogMetrics) -> None:
        if op.points[0][3] == 2:
            raise ConnectionError("gone again")
        original(op)

    sink.log_metrics = fail_on_step_two
    assert delivery.replay() == 0 and delivery.offline
    rest = spool.read()
    assert [type(op).__name__ for op in rest] == ["LogMetrics"] and rest[0].run_id == "run-1"
    sink.log_metrics = original
    assert Delivery(sink, spool, say=lambda _: None).replay() == 1  # a fresh process (slimtrack sync)
    assert sink.points() == [("loss", 1), ("loss", 2)] and sink.runs_created == 1


def test_a_replay_killed_and_started_again_creates_the_run_once(tmp_path: Path):
    """The spool still holds its StartRun (the replay died before rewriting it): the run key
    finds the run the first replay created."""
    sink = RecordingSink()
    spool = Spool(tmp_path)
    spool.append([StartRun(experiment="e", run_key="key-1"), metrics(1)])
    for _ in range(2):
        Delivery(sink, spool, say=lambda _: None).deliver(spool.read()[0])
    assert sink.runs_created == 1
    assert Delivery(sink, spool, say=lambda _: None).replay() == 2 and sink.runs_created == 1


def test_an_artifact_whose_file_is_gone_is_skipped_and_counted(tmp_path: Path):
    sink = RecordingSink()
    delivery = Delivery(sink, Spool(tmp_path), say=lambda _: None)
    delivery.send([StartRun(experiment="e", run_key="k")])
    kept = tmp_path / "kept.txt"
    kept.write_text("x")
    delivery.send([LogArtifact(path=str(tmp_path / "step_000005.pt")), LogArtifact(path=str(kept)), metrics(1)])
    assert not delivery.offline
    assert delivery.missing_files == [str(tmp_path / "step_000005.pt")]
    assert [type(op).__name__ for op in sink.applied] == ["StartRun", "LogArtifact", "LogMetrics"]


def test_a_model_that_cannot_be_logged_is_said_once_and_holds_up_nothing(tmp_path: Path):
    """An export error is neither retried nor spooled: the run's end after it is delivered."""
    sink = RecordingSink()
    lines: list[str] = []
    delivery = Delivery(sink, Spool(tmp_path), retry_attempts=3, retry_delay=0.0, say=lines.append)
    delivery.send([StartRun(experiment="e", run_key="k")])
    checkpoint = tmp_path / "step_000020.pt"
    checkpoint.write_bytes(b"weights")
    sink.model_error = RuntimeError("exporting the model failed: no tracer")
    delivery.send([LogModel(checkpoint=str(checkpoint)), EndRun(status="FINISHED")])
    assert [type(op).__name__ for op in sink.applied] == ["StartRun", "LogModel", "EndRun"]  # tried once
    assert not delivery.offline and len(delivery.spool) == 0 and not delivery.model_logged
    assert len(lines) == 1 and "could not log the final model" in lines[0] and "no tracer" in lines[0]
    sink.model_error = None
    delivery.send([LogModel(checkpoint=str(checkpoint))])
    assert delivery.model_logged


def test_a_model_whose_checkpoint_is_gone_is_skipped_and_counted(tmp_path: Path):
    sink = RecordingSink()
    delivery = Delivery(sink, None, say=lambda _: None)
    delivery.send([StartRun(experiment="e", run_key="k"), LogModel(checkpoint=str(tmp_path / "gone.pt"))])
    assert delivery.missing_files == [str(tmp_path / "gone.pt")] and not delivery.model_logged
    assert [type(op).__name__ for op in sink.applied] == ["StartRun"]


def test_a_torn_last_spool_line_is_skipped(tmp_path: Path):
    spool = Spool(tmp_path)
    spool.append([metrics(1, "r"), metrics(2, "r")])
    with open(spool.path, "a") as f:
        f.write('{"kind":"log_metrics","run_id":"r","poi')  # a kill in the middle of a write
    assert [op.points[0][3] for op in spool.read()] == [1, 2]
