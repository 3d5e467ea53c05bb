"""slimtrack.analysis against a real sqlite MLflow store holding synthetic runs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param

from slimtrack import analysis
from slimtrack.errors import UserError
from slimtrack.metrics import MetricHistory, TrainingMetrics
from slimtrack.dashboard.manager import samples_table

EXPERIMENT = "analysis-test"
T0 = 1_700_000_000_000  # ms: start times are set explicitly, so durations and order are known
ALPHA_LOSS = [5.0, 4.0, 3.0, 2.5, 2.8, 2.9]  # best 2.5 at step 4, final 2.9
ALPHA_ACCURACY = [0.1, 0.2, 0.3, 0.35, 0.33, 0.32]  # best 0.35, final 0.32
LONG_STEPS = 2500  # more than one log_batch (1000 points) and more than one page of a naive reader


def log_points(client: MlflowClient, run_id: str, key: str, values, steps=None) -> None:
    """Metric points via log_batch, 1000 at a time (MLflow's limit per call)."""
    steps = list(steps) if steps is not None else list(range(1, len(values) + 1))
    metrics = [Metric(key, float(v), T0 + s, s) for s, v in zip(steps, values)]
    for start in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[start:start + 1000])


def write_exports(folder: Path, steps: int = 4) -> Path:
    """A run's training_viz/ files, written with the project's own serialisers."""
    records = [TrainingMetrics(step=s, loss=5.0 - s, accuracy=s / 10, tokens_per_sec=100.0 * s,
                               learning_rate=1e-3, timestamp=1.7e9 + s, tokens_seen=512 * s,
                               loss_by_source={"PythonDocs": 4.0 - s / 2},
                               val_loss=3.5 if s == steps else None, val_accuracy=0.4 if s == steps else None)
               for s in range(1, steps + 1)]
    records[1].grad_norm = math.nan  # written as null: must come back as NaN in a float column
    samples = [{"step": s, "prompt": f"in {s}\nline", "generated": f"out {s}", "true_continuation": f"true {s}",
                "accuracy": s / 10}
               for s in (2, 4)]
    viz = folder / "training_viz"
    viz.mkdir(parents=True)
    (viz / "metrics_history.json").write_text(MetricHistory(records).to_json())
    (viz / "text_samples.json").write_text(json.dumps(samples_table(samples)))
    return viz


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """sqlite store with: alpha (finished, val_loss), beta (running), long (2500 points), exported."""
    work = tmp_path_factory.mktemp("analysis")
    uri = f"sqlite:///{work / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment(EXPERIMENT, artifact_location=(work / "artifacts").as_uri())
    client.create_experiment("empty", artifact_location=(work / "artifacts-empty").as_uri())
    ids = {}

    alpha = client.create_run(exp, run_name="alpha", start_time=T0).info.run_id
    client.log_batch(alpha, params=[Param("train.lr", "0.001"), Param("preset", "test"),
                                    Param("data.dataset", "embedded"), Param("status", "odd param")])
    log_points(client, alpha, "loss", ALPHA_LOSS)
    log_points(client, alpha, "accuracy", ALPHA_ACCURACY)
    log_points(client, alpha, "tokens_seen", [512 * s for s in range(1, 7)])
    log_points(client, alpha, "val_loss", [3.1, 2.7], steps=[3, 6])
    log_points(client, alpha, "loss_by_source/PythonDocs", [4.0, 3.0, 2.0, 2.0, 2.0, 2.0])
    client.set_terminated(alpha, "FINISHED", end_time=T0 + 90_500)
    ids["alpha"] = alpha

    beta = client.create_run(exp, run_name="beta", start_time=T0 + 1_000).info.run_id
    client.log_batch(beta, params=[Param("train.lr", "0.003"), Param("preset", "test")])
    log_points(client, beta, "loss", [6.0, 5.0, 4.5])
    log_points(client, beta, "accuracy", [0.05, 0.1, 0.12])
    ids["beta"] = beta  # still RUNNING: no end time, no val_loss

    long = client.create_run(exp, run_name="long", start_time=T0 + 2_000).info.run_id
    log_points(client, long, "loss", np.linspace(8.0, 2.0, LONG_STEPS), steps=range(LONG_STEPS))
    client.set_terminated(long, "FINISHED", end_time=T0 + 3_000)
    ids["long"] = long

    exported = client.create_run(exp, run_name="exported", start_time=T0 + 3_000).info.run_id
    viz = write_exports(work / "exported-out")
    client.log_artifact(exported, str(viz / "metrics_history.json"), "training_viz")
    client.log_artifact(exported, str(viz / "text_samples.json"), "training_viz")
    client.set_terminated(exported, "FINISHED", end_time=T0 + 4_000)
    ids["exported"] = exported
    return {"uri": uri, "ids": ids, "work": work}


def test_runs_frame_columns_and_values(store):
    runs = analysis.runs_frame(EXPERIMENT, store["uri"])
    assert list(runs.columns[:len(analysis.RUN_COLUMNS)]) == analysis.RUN_COLUMNS
    params = list(runs.columns[len(analysis.RUN_COLUMNS):])
    assert params == sorted(["train.lr", "preset", "data.dataset", "params.status"])
    assert list(runs.run_name) == ["exported", "long", "beta", "alpha"]  # newest first

    alpha = runs.set_index("run_name").loc["alpha"]
    assert alpha.run_id == store["ids"]["alpha"] and alpha.status == "FINISHED"
    assert alpha.duration_s == pytest.approx(90.5)
    assert alpha.start_time == pd.Timestamp(T0, unit="ms", tz="UTC")
    assert alpha.tokens_seen == 3072
    assert (alpha.final_loss, alpha.best_loss) == (pytest.approx(2.9), pytest.approx(2.5))
    assert (alpha.final_accuracy, alpha.best_accuracy) == (pytest.approx(0.32), pytest.approx(0.35))
    assert (alpha.final_val_loss, alpha.best_val_loss) == (pytest.approx(2.7), pytest.approx(2.7))
    assert alpha["train.lr"] == pytest.approx(0.001) and alpha.preset == "test"
    assert alpha["params.status"] == "odd param"  # a param named like a fixed column keeps its value

    beta = runs.set_index("run_name").loc["beta"]
    assert beta.status == "RUNNING" and math.isnan(beta.duration_s)
    assert math.isnan(beta.final_val_loss) and math.isnan(beta.best_val_loss) and math.isnan(beta.tokens_seen)
    assert beta.best_loss == pytest.approx(4.5)
    assert pd.api.types.is_float_dtype(runs["train.lr"])  # numbers, not MLflow's strings
    assert runs["data.dataset"].isna().sum() == 3  # only alpha logged it


def test_runs_frame_of_unknown_and_empty_experiments(store):
    with pytest.raises(UserError, match="no experiment 'nope'"):
        analysis.runs_frame("nope", store["uri"])
    empty = analysis.runs_frame("empty", store["uri"])
    assert empty.empty and list(empty.columns) == analysis.RUN_COLUMNS


def test_latest_runs_are_newest_first(store):
    ids = store["ids"]
    assert analysis.latest_runs(EXPERIMENT, 2, store["uri"]) == [ids["exported"], ids["long"]]
    assert len(analysis.latest_runs(EXPERIMENT, 50, store["uri"])) == 4
    assert analysis.latest_runs("empty", 5, store["uri"]) == []


def test_history_frame_reads_every_point_of_a_long_history(store):
    run_id = store["ids"]["long"]
    tidy = analysis.history_frame([run_id], ["loss"], store["uri"])
    assert len(tidy) == LONG_STEPS
    assert sorted(tidy.step) == list(range(LONG_STEPS))
    assert tidy.sort_values("step").value.iloc[[0, -1]].tolist() == pytest.approx([8.0, 2.0])
    assert set(tidy.run) == {run_id} and set(tidy.key) == {"loss"}


def test_history_frame_defaults_to_all_keys_of_each_run(store):
    ids = store["ids"]
    tidy = analysis.history_frame([ids["alpha"], ids["beta"]], tracking_uri=store["uri"])
    assert set(tidy[tidy.run == ids["beta"]].key) == {"loss", "accuracy"}
    assert {"val_loss", "tokens_seen", "loss_by_source/PythonDocs"} <= set(tidy[tidy.run == ids["alpha"]].key)
    with pytest.raises(UserError, match="no run 'missing'"):
        analysis.history_frame(["missing"], ["loss"], store["uri"])


def test_wide_history_pivots_one_row_per_step(store):
    wide = analysis.wide_history(store["ids"]["alpha"], store["uri"])
    assert list(wide.step) == [1, 2, 3, 4, 5, 6]
    assert {"loss", "accuracy", "val_loss", "tokens_seen", "loss_by_source/PythonDocs"} <= set(wide.columns)
    assert wide.loss.tolist() == pytest.approx(ALPHA_LOSS)
    assert wide.val_loss.isna().tolist() == [True, True, False, True, True, False]
    only = analysis.wide_history(store["ids"]["alpha"], store["uri"], keys=["loss", "learning_rate"])
    assert list(only.columns) == ["step", "loss"]  # a key the run never logged is simply absent


def test_source_loss_frame(store):
    sources = analysis.source_loss_frame([store["ids"]["alpha"], store["ids"]["beta"]], store["uri"])
    assert list(sources.columns) == ["run", "step", "source", "loss"]
    assert set(sources.source) == {"PythonDocs"} and len(sources) == 6


def test_load_exported_from_a_local_output_folder(tmp_path):
    viz = write_exports(tmp_path / "out", steps=4)
    history, samples = analysis.load_exported(tmp_path / "out")
    assert history.step.tolist() == [1, 2, 3, 4]
    assert history.loss.tolist() == [4.0, 3.0, 2.0, 1.0]
    assert pd.api.types.is_float_dtype(history.grad_norm) and math.isnan(history.grad_norm[1])
    assert history.val_loss.isna().tolist() == [True, True, True, False]
    assert history["loss_by_source/PythonDocs"].tolist() == [3.5, 3.0, 2.5, 2.0]
    assert list(samples.columns) == ["step", "prompt", "generated", "true_continuation", "accuracy"]
    assert samples.step.tolist() == [2, 4] and samples.prompt[0] == "in 2\nline"

    same_history, same_samples = analysis.load_exported(str(viz))  # training_viz/ itself works too
    pd.testing.assert_frame_equal(same_history, history)
    pd.testing.assert_frame_equal(same_samples, samples)


def test_load_exported_without_samples_or_history(tmp_path):
    viz = write_exports(tmp_path / "out")
    (viz / "text_samples.json").unlink()
    history, samples = analysis.load_exported(tmp_path / "out")
    assert len(history) == 4 and samples.empty and list(samples.columns) == [
        "step", "prompt", "generated", "true_continuation", "accuracy"]
    (tmp_path / "bare").mkdir()
    with pytest.raises(UserError, match="metrics_history.json"):
        analysis.load_exported(tmp_path / "bare")
    with pytest.raises(UserError, match="not a run's output folder"):
        analysis.load_exported(tmp_path / "no" / "such")


def test_load_exported_from_run_artifacts(store):
    history, samples = analysis.load_exported(store["ids"]["exported"], store["uri"])
    local_history, local_samples = analysis.load_exported(store["work"] / "exported-out")
    pd.testing.assert_frame_equal(history, local_history)
    pd.testing.assert_frame_equal(samples, local_samples)
    with pytest.raises(UserError, match="has no training_viz/metrics_history.json"):
        analysis.load_exported(store["ids"]["alpha"], store["uri"])
    with pytest.raises(UserError, match="no run 'deadbeef'"):
        analysis.load_exported("deadbeef", store["uri"])


def test_display_names_tell_equal_names_apart(store):
    runs = [analysis.get_run(store["ids"][name], store["uri"]) for name in ("alpha", "beta")]
    assert analysis.display_names(runs) == ["alpha", "beta"]
    twice = analysis.display_names([runs[0], runs[0]])
    assert twice[0] == twice[1] == f"alpha ({store['ids']['alpha'][:8]})"


def test_unreachable_store_is_a_user_error_without_credentials(monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # port 9 refuses at once; no backoff
    with pytest.raises(UserError) as error:
        analysis.get_run("abc", "http://user:secret@127.0.0.1:9")
    message = str(error.value)
    assert message.startswith("cannot read run 'abc' from http://127.0.0.1:9")
    assert "secret" not in message and "\n" not in message
