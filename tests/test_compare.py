"""``slimtrack compare`` and the comparison figure, against a real sqlite store of synthetic runs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric

from slimtrack import analysis
from slimtrack.cli import main
from slimtrack.dashboard.compare import PANELS, build_comparison
from slimtrack.dashboard.charts import MAX_LINE_POINTS

EXPERIMENT = "compare-test"
STEPS = 120
T0 = 1_700_000_000_000  # ms


def synthetic_run(client: MlflowClient, experiment_id: str, name: str, start: int, lr: float) -> str:
    """A finished run with the five compared metrics at every step, logged in one go."""
    run_id = client.create_run(experiment_id, run_name=name, start_time=start).info.run_id
    rng = np.random.default_rng(len(name))
    steps = np.arange(1, STEPS + 1)
    series = {
        "loss": 6.0 * np.exp(-steps * lr * 20) + rng.normal(0, 0.1, STEPS),
        "accuracy": np.clip(0.6 * (1 - np.exp(-steps * lr * 20)) + rng.normal(0, 0.02, STEPS), 0, 1),
        "tokens_per_sec": 1000 + rng.normal(0, 50, STEPS),
        "learning_rate": lr * np.minimum(1.0, steps / 10),
        "val_bpb": 8.0 * np.exp(-steps * lr * 20) + 1.0,
    }
    metrics = [Metric(key, float(values[i]), start + int(step), int(step))
               for key, values in series.items() for i, step in enumerate(steps)]
    for first in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[first:first + 1000])
    client.set_terminated(run_id, "FINISHED", end_time=start + 60_000)
    return run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Three runs, oldest first: slow-lr, run-alpha, run-beta."""
    work = tmp_path_factory.mktemp("compare")
    uri = f"sqlite:///{work / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment(EXPERIMENT, artifact_location=(work / "artifacts").as_uri())
    ids = {name: synthetic_run(client, exp, name, T0 + 1000 * i, lr)
           for i, (name, lr) in enumerate([("slow-lr", 1e-4), ("run-alpha", 1e-3), ("run-beta", 3e-3)])}
    return {"uri": uri, "ids": ids}


@pytest.fixture
def tracking_env(store, monkeypatch, tmp_path):
    """The CLI finds the store the way users point it there: MLFLOW_TRACKING_URI."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store["uri"])
    monkeypatch.chdir(tmp_path)
    return store


def legend_texts(figure) -> list[str]:
    return [text.get_text() for legend in figure.legends for text in legend.get_texts()]


def test_compare_two_runs_writes_a_png_named_by_the_runs(tracking_env, tmp_path, capsys):
    ids = tracking_env["ids"]
    out = tmp_path / "charts" / "f.png"
    assert main(["compare", ids["run-alpha"], ids["run-beta"], "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert str(out) in capsys.readouterr().out

    # The same figure the command saved, built from the same histories.
    figure = build_comparison(analysis.comparison_histories([ids["run-alpha"], ids["run-beta"]]))
    assert legend_texts(figure) == ["run-alpha", "run-beta"]
    assert [ax.get_title() for ax in figure.axes] == [panel.title for panel in PANELS]
    for ax in figure.axes:
        colors = {line.get_color() for line in ax.lines}
        assert len(colors) == 2, ax.get_title()  # one colour per run, on every chart
    assert figure.axes[3].get_yscale() == "log"


def test_compare_default_output_name(tracking_env, tmp_path, capsys):
    ids = tracking_env["ids"]
    assert main(["compare", ids["run-alpha"], ids["slow-lr"]]) == 0
    expected = tmp_path / f"compare-{ids['run-alpha'][:8]}-2runs.png"
    assert expected.is_file() and expected.name in capsys.readouterr().out


def test_compare_the_last_runs_of_an_experiment(tracking_env, tmp_path, capsys):
    ids = tracking_env["ids"]
    out = tmp_path / "latest.png"
    assert main(["compare", "--experiment", EXPERIMENT, "--last", "2", "--out", str(out)]) == 0
    assert out.is_file() and str(out) in capsys.readouterr().out
    newest = analysis.latest_runs(EXPERIMENT, 2)
    assert newest == [ids["run-beta"], ids["run-alpha"]]
    assert legend_texts(build_comparison(analysis.comparison_histories(newest))) == ["run-beta", "run-alpha"]


@pytest.mark.parametrize("argv, fragment", [
    (["compare", "RUN_A", "no-such-run"], "no run 'no-such-run'"),
    (["compare", "--experiment", "no-such-experiment"], "no experiment 'no-such-experiment'"),
    (["compare"], "give run ids or --experiment"),
    (["compare", "RUN_A", "--experiment", EXPERIMENT], "not both"),
    (["compare", "RUN_A", "--last", "2"], "--last needs --experiment"),
    (["compare", "--experiment", EXPERIMENT, "--last", "0"], "--last"),
])
def test_bad_input_is_one_line_and_exit_2(tracking_env, tmp_path, capsys, argv, fragment):
    argv = [tracking_env["ids"]["run-alpha"] if arg == "RUN_A" else arg for arg in argv]
    assert main(argv + ["--out", str(tmp_path / "x.png")]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("slimtrack: error:") and fragment in err
    assert captured.out == "" and not (tmp_path / "x.png").exists()


# ---- the pure figure ---------------------------------------------------------------------------
def test_comparison_of_no_runs_is_an_empty_figure():
    figure = build_comparison({})
    assert legend_texts(figure) == [] and "no runs" in figure.get_suptitle()


def test_missing_metrics_and_gaps_are_skipped():
    partial = pd.DataFrame({"step": [1, 2, 3], "loss": [3.0, np.nan, 2.0]})  # no accuracy, lr, throughput
    empty = pd.DataFrame(columns=["step", "loss"])
    figure = build_comparison({"partial": partial, "empty": empty})
    assert legend_texts(figure) == ["partial", "empty"]  # a run without data still has its entry
    loss_ax, accuracy_ax = figure.axes[:2]
    raw = [line for line in loss_ax.lines if line.get_label() != "partial" and len(line.get_xdata())]
    assert raw and list(raw[0].get_xdata()) == [1.0, 3.0]
    assert any(text.get_text() == "no data" for text in accuracy_ax.texts)


def test_long_histories_are_decimated_and_zero_lr_left_out():
    steps = np.arange(50_000)
    frame = pd.DataFrame({"step": steps, "loss": np.linspace(8, 2, len(steps)), "accuracy": 0.5,
                          "tokens_per_sec": 1e3, "learning_rate": np.where(steps < 10, 0.0, 1e-3)})
    figure = build_comparison({"long": frame})
    for ax in figure.axes:
        for line in ax.lines:
            assert len(line.get_xdata()) <= MAX_LINE_POINTS
    lr_line = figure.axes[3].lines[0]
    assert min(lr_line.get_xdata()) >= 10  # the log axis cannot show the zero warmup start
