"""``slimtrack sweep``: the grid, the samplers, and real sweeps of tiny trials into a real
sqlite store (one parent run, one nested child run per trial)."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys

import pytest
from mlflow import MlflowClient

from conftest import run_cli
from slimtrack.cli import main
from slimtrack.errors import UserError
from slimtrack.sweep import parse_grid, pick_points, point_at, value_flags

TINY = ("--test", "--kernels", "torch", "--max-chunks", "3", "--no-log-model", "--no-system-metrics")


# ---- the grid and the samplers (no runs) ---------------------------------------------------
def test_grid_keys_are_fields_or_qualified_fields_and_values_take_the_fields_type():
    lr, n_layer, kernels = parse_grid(["lr=1e-3,3e-3", "model.n_layer=2,4", "kernels=torch"])
    assert (lr.info.key, lr.values) == ("train.lr", (0.001, 0.003))
    assert (n_layer.info.key, n_layer.values) == ("model.n_layer", (2, 4))
    assert kernels.values == ("torch",)


@pytest.mark.parametrize("spec, message", [
    ("bogus=1,2", "unknown config field 'bogus'"),
    ("lr", "expected KEY=V1,V2"),
    ("lr=1e-3,", "no empty value"),
    ("n_layer=2.5", "invalid int value '2.5'"),
    ("kernels=fast", "invalid choice 'fast'"),
    ("log_model=maybe", "expected true or false"),
    ("experiment=a,b", "cannot be swept"),
    ("vocab_size=64", "cannot be swept"),
])
def test_a_bad_grid_entry_is_a_user_error(spec, message):
    with pytest.raises(UserError, match=message):
        parse_grid([spec])


def test_the_grid_sampler_is_the_cartesian_product_in_order():
    axes = parse_grid(["lr=1e-3,3e-3", "n_layer=1,2,3"])
    assert pick_points(axes, "grid", None, 0) == list(itertools.product((0.001, 0.003), (1, 2, 3)))
    assert pick_points(axes, "grid", 2, 0) == [(0.001, 1), (0.001, 2)]
    assert [point_at(axes, i) for i in range(6)] == list(itertools.product((0.001, 0.003), (1, 2, 3)))


def test_the_random_sampler_picks_distinct_points_of_the_grid_reproducibly():
    axes = parse_grid(["lr=1e-3,3e-3,1e-2", "n_layer=1,2,3"])
    picks = pick_points(axes, "random", 4, seed=1)
    assert picks == pick_points(axes, "random", 4, seed=1)
    assert len(set(picks)) == 4 and set(picks) <= set(itertools.product((0.001, 0.003, 0.01), (1, 2, 3)))
    assert any(pick_points(axes, "random", 4, seed=seed) != picks for seed in range(2, 6))
    with pytest.raises(UserError, match="needs --trials"):
        pick_points(axes, "random", None, seed=1)
    with pytest.raises(UserError, match="exceeds the grid's 9"):
        pick_points(axes, "random", 10, seed=1)


def test_a_bool_value_is_its_flag_or_its_no_flag():
    axes = parse_grid(["log_model=true,false", "lr=1e-3"])
    assert value_flags(axes, (True, 0.001)) == ["--log-model", "--lr=0.001"]
    assert value_flags(axes, (False, 0.001)) == ["--no-log-model", "--lr=0.001"]


def test_random_trials_2_seed_1_prints_the_same_2_points_of_the_grid(capsys):
    argv = ["sweep", "--test", "--grid", "lr=1e-3,3e-3", "n_layer=2,4", "--trials", "2", "--sampler", "random",
            "--seed", "1", "--dry-run"]
    assert main(argv) == 0
    first = capsys.readouterr().out.splitlines()
    assert main(argv) == 0
    assert capsys.readouterr().out.splitlines() == first
    grid = {f"lr={lr} n_layer={n}" for lr in (0.001, 0.003) for n in (2, 4)}
    assert len(first) == 2 and {line.split(": ", 1)[1] for line in first} <= grid


def test_a_bad_grid_key_is_one_line_and_exit_2_before_any_run(mlflow_store, tmp_path, capsys):
    assert main(["sweep", *TINY, "--grid", "lr=1e-3,3e-3", "n_layrs=2,4"]) == 2
    err = capsys.readouterr().err
    assert err == "slimtrack: error: --grid n_layrs: unknown config field 'n_layrs'\n"
    assert not (tmp_path / "mlflow.db").exists()


def test_a_sweep_without_tracking_is_exit_2(capsys):
    assert main(["sweep", "--test", "--no-tracking", "--grid", "lr=1e-3"]) == 2
    assert "--no-tracking" in capsys.readouterr().err


# ---- real sweeps -------------------------------------------------------------------------
def sweep_runs(uri: str, experiment: str = "slimtrack"):
    """The parent run and its children (oldest trial first)."""
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    parents = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
    assert len(parents) == 1
    children = [run for run in runs if run.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(children) == len(runs) - 1
    return client, parents[0], sorted(children, key=lambda run: int(run.data.tags["slimtrack.sweep.trial"]))


@pytest.mark.slow
def test_a_2x1_grid_is_2_finished_children_under_one_parent_with_the_best_trial(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = run_cli("sweep", *TINY, "--experiment", "sweeps", "--grid", "lr=1e-3,3e-3", "n_layer=1",
                     cwd=tmp_path, env={"MLFLOW_TRACKING_URI": uri})
    assert result.returncode == 0, result.stderr[-3000:]
    client, parent, children = sweep_runs(uri, "sweeps")
    assert client.get_experiment_by_name("sweeps").tags["mlflow.experimentKind"] == "custom_model_development"
    assert parent.info.status == "FINISHED"
    assert parent.data.params["grid.lr"] == "0.001,0.003" and parent.data.params["grid.n_layer"] == "1"
    assert [run.info.status for run in children] == ["FINISHED"] * 2
    assert [(run.data.params["train.lr"], run.data.params["model.n_layer"]) for run in children] == \
        [("0.001", "1"), ("0.003", "1")]
    assert all(run.data.params["train.max_chunks"] == "3" for run in children)  # the shared flags
    best = min(children, key=lambda run: run.data.metrics["val_loss"])
    assert parent.data.tags["best_run_id"] == best.info.run_id
    assert parent.data.params["best.lr"] == best.data.params["train.lr"]
    assert parent.data.params["best.n_layer"] == best.data.params["model.n_layer"]
    assert parent.data.metrics["best_val_loss"] == pytest.approx(best.data.metrics["val_loss"])


@pytest.mark.slow
def test_a_failed_trial_is_failed_and_the_sweep_goes_on(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    (tmp_path / "base.yaml").write_text("preset: test\ntrain:\n  kernels: torch\n  max_chunks: 3\n"
                                        "tracking:\n  log_model: false\n  system_metrics: false\n")
    result = run_cli("sweep", "--config", "base.yaml", "--grid", f"dataset={tmp_path / 'missing'},embedded",
                     cwd=tmp_path, env={"MLFLOW_TRACKING_URI": uri})
    assert result.returncode == 0, result.stderr[-3000:]
    _, parent, (failed, finished) = sweep_runs(uri)
    assert (failed.info.status, finished.info.status, parent.info.status) == ("FAILED", "FINISHED", "FINISHED")
    assert failed.data.params["data.dataset"] == str(tmp_path / "missing")  # what it tried, though it never ran
    assert finished.data.params["train.max_chunks"] == "3"  # the --config file reached the trial
    assert parent.data.params["best.dataset"] == "embedded" and parent.data.tags["best_run_id"] == finished.info.run_id


@pytest.mark.slow
def test_ctrl_c_stops_the_running_trial_and_the_sweep(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONUNBUFFERED": "1"}
    sweep = subprocess.Popen([sys.executable, "-m", "slimtrack", "sweep", *TINY, "--max-chunks", "500",
                              "--grid", "lr=1e-3,3e-3"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        for line in sweep.stdout:  # the trial's set-up line: it is training
            lines.append(line)
            if "parameters on" in line:
                break
        sweep.send_signal(signal.SIGINT)
        output = "".join(lines) + sweep.stdout.read()
        assert sweep.wait(timeout=120) == 130, output[-3000:]
    finally:
        sweep.kill()
    _, parent, children = sweep_runs(uri)
    assert parent.info.status == "KILLED"
    assert [run.info.status for run in children] == ["KILLED"]  # no second trial started
    assert "interrupted at step" in output and "(SIGINT)" in output  # the trial ended itself, as `slimtrack train` does on Ctrl-C
    assert "trial 2/2" not in output
