"""The model registry and sweeps against a real ``mlflow server`` (issue #21).

test_system_of_record.py and test_sweep.py check registration and sweeps on a sqlite store,
where the CLI writes the database and the artifact folder itself. Here one server (sqlite
backend, proxied ``mlflow-artifacts:`` storage) serves the whole module, and everything goes
through its REST API: the registry's versions and their tags, the model's files (downloaded
through the server to load it), the parent and child runs of a sweep.

To keep the module short, the sweep starts in the background as soon as the server answers
and runs while the two registering runs train (three clients of one server at once, as on a
team's server); its test waits for it.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from mlflow import MlflowClient

from conftest import run_cli, using_store
from mlflow_server import mlflow_server

pytestmark = pytest.mark.slow

# The smallest runs the sqlite tests use (test_sweep.TINY): 3 steps, torch kernels, no
# system-metrics sampler. Registration needs the final model, so TRAIN keeps --log-model
# (the default) and uploads no checkpoint.
STEPS = 3
TINY_TRIAL = ("--test", "--kernels", "torch", "--max-chunks", str(STEPS), "--no-log-model", "--no-system-metrics")
TRAIN = ("--test", "--kernels", "torch", "--max-chunks", str(STEPS), "--no-system-metrics", "--log-checkpoints", "none")
MODEL = "tiny-gpt-served"
REGISTRY_EXPERIMENT = "registry"
SWEEP_EXPERIMENT = "sweeps"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server for the module: starting one costs 10-40 s on a 2-core box."""
    with mlflow_server(tmp_path_factory.mktemp("server")) as url:
        yield url


@pytest.fixture(scope="module")
def sweep(server, tmp_path_factory):
    """`slimtrack sweep` of a 2x1 grid of tiny trials, started in the background; yields
    ``wait()``, which returns its exit status and output once it has ended."""
    tmp = tmp_path_factory.mktemp("sweep")
    log_path = tmp / "sweep.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "slimtrack", "sweep", *TINY_TRIAL, "--experiment",
                                    SWEEP_EXPERIMENT, "--grid", "lr=1e-3,3e-3", "n_layer=1"], cwd=tmp,
                                   env={**os.environ, "MLFLOW_TRACKING_URI": server}, stdout=log,
                                   stderr=subprocess.STDOUT)

    def wait() -> tuple[int, str]:
        returncode = process.wait(timeout=600)
        return returncode, log_path.read_text(errors="replace")

    try:
        yield wait
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def train_registered(url: str, tmp, name: str):
    """One tiny `slimtrack train --register-model MODEL` run against the server; its run."""
    result = run_cli("train", *TRAIN, "--register-model", MODEL, "--experiment", REGISTRY_EXPERIMENT,
                     "--run-name", name, "--output-dir", str(tmp / name), cwd=tmp, env={"MLFLOW_TRACKING_URI": url})
    assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient(url)
    experiment = client.get_experiment_by_name(REGISTRY_EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`mlflow.runName` = '{name}'")
    assert len(runs) == 1, [run.info.run_name for run in runs]
    return runs[0]


@pytest.fixture(scope="module")
def registered(server, sweep, tmp_path_factory):
    """Two runs registering the same model name, one after the other (while the sweep runs)."""
    tmp = tmp_path_factory.mktemp("registry")
    first = train_registered(server, tmp, "reg-1")
    second = train_registered(server, tmp, "reg-2")
    return MlflowClient(server), first, second


def test_a_registered_run_finishes_as_version_1_tagged_with_its_val_loss(registered):
    client, first, _ = registered
    assert first.info.status == "FINISHED"
    version = client.get_model_version(MODEL, "1")
    assert version.run_id == first.info.run_id
    assert version.tags["run_id"] == first.info.run_id
    assert "val_loss" in first.data.metrics
    assert float(version.tags["val_loss"]) == pytest.approx(first.data.metrics["val_loss"])
    # the version's model is the one the run logged (MLflow 3: models:/<model_id>)
    (logged,) = client.search_logged_models([first.info.experiment_id],
                                            filter_string=f"source_run_id = '{first.info.run_id}'")
    assert version.source == f"models:/{logged.model_id}"


def test_registering_the_same_name_again_makes_version_2(registered):
    client, first, second = registered
    assert second.info.status == "FINISHED" and second.info.run_id != first.info.run_id
    versions = sorted(client.search_model_versions(f"name='{MODEL}'"), key=lambda v: int(v.version))
    assert [(v.version, v.run_id) for v in versions] == [("1", first.info.run_id), ("2", second.info.run_id)]
    assert float(versions[1].tags["val_loss"]) == pytest.approx(second.data.metrics["val_loss"])


def test_the_registered_version_loads_from_the_server_and_continues_a_prompt(registered, server, tmp_path):
    import mlflow.pyfunc

    with using_store(server):
        model = mlflow.pyfunc.load_model(f"models:/{MODEL}/1", dst_path=str(tmp_path))
        continuations = model.predict(["The "], params={"max_new_tokens": 4, "seed": 0})
    assert len(continuations) == 1 and isinstance(continuations[0], str), continuations
    assert len(continuations[0]) <= 4  # the continuation alone (not the prompt), at most 4 new byte tokens


def sweep_runs(client: MlflowClient, experiment: str):
    """The parent run and its children (oldest trial first), as test_sweep.sweep_runs."""
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    parents = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
    assert len(parents) == 1
    children = [run for run in runs if run.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(children) == len(runs) - 1
    return parents[0], sorted(children, key=lambda run: int(run.data.tags["slimtrack.sweep.trial"]))


def test_a_2x1_sweep_on_the_server_is_2_finished_children_under_one_parent_with_the_best_trial(server, sweep):
    returncode, output = sweep()
    assert returncode == 0, output[-3000:]
    client = MlflowClient(server)
    parent, children = sweep_runs(client, SWEEP_EXPERIMENT)
    assert client.get_experiment_by_name(SWEEP_EXPERIMENT).tags["mlflow.experimentKind"] == "custom_model_development"
    assert parent.info.status == "FINISHED"
    assert parent.data.params["grid.lr"] == "0.001,0.003" and parent.data.params["grid.n_layer"] == "1"
    assert len(children) == 2
    assert [run.info.status for run in children] == ["FINISHED"] * 2
    assert all(run.data.tags["mlflow.parentRunId"] == parent.info.run_id for run in children)
    assert [(run.data.params["train.lr"], run.data.params["model.n_layer"]) for run in children] == \
        [("0.001", "1"), ("0.003", "1")]
    assert all(run.data.params["train.max_chunks"] == str(STEPS) for run in children)  # the shared flags
    best = min(children, key=lambda run: run.data.metrics["val_loss"])
    assert parent.data.tags["best_run_id"] == best.info.run_id
    assert parent.data.params["best.lr"] == best.data.params["train.lr"]
    assert parent.data.params["best.n_layer"] == best.data.params["model.n_layer"]
    assert parent.data.metrics["best_val_loss"] == pytest.approx(best.data.metrics["val_loss"])
