"""VisualizationManager: renders off the training thread, files on disk, resume restore."""

from __future__ import annotations

import json
import time

from slimtrack.metrics import TrainingMetrics
from slimtrack.tracking import NullTracker
from slimtrack.dashboard.manager import MAX_PENDING_RENDERS, VisualizationManager


def record(step: int) -> TrainingMetrics:
    return TrainingMetrics(step=step, loss=5.0 / step, accuracy=step / 100, tokens_per_sec=1000.0,
                           learning_rate=1e-3, timestamp=time.time())


def test_renders_every_interval_and_once_at_the_end(tmp_path):
    viz = VisualizationManager(tmp_path, NullTracker(), viz_interval=10)
    for step in range(1, 26):
        sample = ({"step": step, "prompt": "in", "generated": "out", "true_continuation": "true", "accuracy": 0.5}
                  if step % 5 == 0 else None)
        viz.update(record(step), sample)
    viz.close()
    folder = tmp_path / "training_viz"
    assert sorted(p.name for p in folder.glob("training_step_*.png")) == [
        "training_step_000010.png", "training_step_000020.png", "training_step_000025.png"]
    assert (folder / "training_latest.png").read_bytes() == (folder / "training_step_000025.png").read_bytes()
    history = json.loads((folder / "metrics_history.json").read_text())
    assert [row["step"] for row in history] == list(range(1, 26))
    samples = json.loads((folder / "text_samples.json").read_text())
    assert [row[0] for row in samples["data"]] == [5, 10, 15, 20, 25]


def test_a_run_ending_on_a_viz_step_renders_that_step_once(tmp_path):
    viz = VisualizationManager(tmp_path, NullTracker(), viz_interval=10)
    for step in range(1, 21):
        viz.update(record(step))
    deadline = time.monotonic() + 60
    while viz._pending and time.monotonic() < deadline:  # the worker took step 20's request...
        time.sleep(0.001)
    viz.close()  # ...and is likely still drawing it (a few hundred ms), as when a run ends
    assert viz.rendered_steps == [10, 20]


def test_a_slow_render_never_builds_an_unbounded_queue(tmp_path):
    viz = VisualizationManager(tmp_path, NullTracker(), viz_interval=1)
    with viz._cond:  # hold the worker off, as a long render would
        for step in range(1, 50):
            viz.history.append(record(step))
            viz.last_step = step
            started = time.perf_counter()
            viz.request_render()  # must not wait: the worker cannot take the lock right now...
            assert time.perf_counter() - started < 0.05
            assert len(viz._pending) <= MAX_PENDING_RENDERS
        newest = [r.step for r in viz._pending]
    assert newest == list(range(50 - MAX_PENDING_RENDERS, 50))  # the newest requests survive
    viz.close()
    assert viz.rendered_steps[-1] == 49


def test_export_now_and_restore_continue_a_history(tmp_path):
    viz = VisualizationManager(tmp_path, NullTracker(), viz_interval=1000)
    for step in range(1, 8):
        viz.update(record(step), {"step": step, "prompt": "a", "generated": "b", "true_continuation": "c",
                                  "accuracy": 1.0})
    viz.export_now()
    viz.close()
    again = VisualizationManager(tmp_path, NullTracker(), viz_interval=1000)
    again.restore(until_step=5)
    assert list(again.history.frame()["step"]) == [1, 2, 3, 4, 5]
    assert [s["step"] for s in again.samples] == [1, 2, 3, 4, 5]
    again.close()


def test_history_export_is_throttled_between_renders_and_complete_at_the_end(tmp_path, monkeypatch):
    import slimtrack.dashboard.manager as viz_module
    monkeypatch.setattr(viz_module, "HISTORY_EXPORT_SHARE", 1e-9)  # after one export, the next is "too soon"
    viz = VisualizationManager(tmp_path, NullTracker(), viz_interval=5)
    history = tmp_path / "training_viz" / "metrics_history.json"
    for step in range(1, 21):
        viz.update(record(step))
        if step == 5 or step == 15:
            deadline = time.monotonic() + 60
            while viz.rendered_steps[-1:] != [step] and time.monotonic() < deadline:
                time.sleep(0.01)
            assert viz.rendered_steps[-1] == step
    assert [row["step"] for row in json.loads(history.read_text())] == [1, 2, 3, 4, 5]  # later renders skipped it
    viz.close()
    rows = json.loads(history.read_text())
    assert [row["step"] for row in rows] == list(range(1, 21))
    assert rows[-1]["loss"] == 5.0 / 20 and rows[-1]["val_loss"] is None


class ArtifactNames(NullTracker):
    """A tracker that keeps the names of the files logged as artifacts."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def log_artifact(self, local_path, artifact_path=None, bulky=False) -> None:
        self.names.append(local_path.name)


def test_the_history_is_logged_at_the_end_when_a_checkpoint_wrote_it_first(tmp_path, monkeypatch):
    """The last step is a checkpoint's: its export_now writes the history (not logged), and the
    last render's export is then "too soon"; the run must still end with the history logged."""
    import slimtrack.dashboard.manager as viz_module
    monkeypatch.setattr(viz_module, "HISTORY_EXPORT_SHARE", 1e-9)  # after one export, the next is "too soon"
    tracker = ArtifactNames()
    viz = VisualizationManager(tmp_path, tracker, viz_interval=1000)
    for step in range(1, 9):
        viz.update(record(step))
    viz.export_now()  # the checkpoint at step 8
    viz.close()  # renders step 8, whose export is skipped
    assert "training_step_000008.png" in tracker.names
    assert tracker.names.count("metrics_history.json") == 1
