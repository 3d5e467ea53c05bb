"""MLflow as the system of record: system metrics, dataset inputs, source tags, one checkpoint
in the store, the registry. A real tracked run into a real sqlite store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from conftest import run_cli

pytestmark = pytest.mark.slow


def the_run(client: MlflowClient):
    return client.search_runs([client.get_experiment_by_name("slimtrack").experiment_id])[0]


# slimtrack's main, then the names of the MLflow modules and of torch.export's tracer it imported.
MAIN_THEN_IMPORTS = ("import json, sys; from slimtrack.cli import main; status = main(sys.argv[1:]); "
                     "heavy = [m for m in sys.modules if m.split('.')[0] == 'mlflow' or m == 'torch.export._trace']; "
                     "open('imported.json', 'w').write(json.dumps(heavy)); sys.exit(status)")


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """One 40-step run from inside a git checkout, checkpoints every 10 steps, registered."""
    tmp = tmp_path_factory.mktemp("record")
    subprocess.run(["git", "init", "-q"], cwd=tmp, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "x"],
                   cwd=tmp, check=True)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp, capture_output=True, text=True).stdout.strip()
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    result = subprocess.run([sys.executable, "-c", MAIN_THEN_IMPORTS, "train", "--test", "--kernels", "torch",
                             "--max-chunks", "40", "--checkpoint-interval", "10", "--system-metrics-interval", "1",
                             "--register-model", "tiny-gpt", "--output-dir", str(tmp / "out")],
                            cwd=tmp, env={**os.environ, "MLFLOW_TRACKING_URI": uri}, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient(uri)
    return client, the_run(client), commit, tmp


def test_the_training_process_imports_neither_mlflow_nor_torch_export(recorded):
    """The MLflow process opens the run, resolves the source tags and exports the model: the
    training process's start-up and end carry none of that (the fixed cost of tracking)."""
    client, run, _, tmp = recorded
    assert json.loads((tmp / "imported.json").read_text()) == []
    assert client.search_logged_models([run.info.experiment_id])  # and the model is logged all the same


def test_system_metrics_are_sampled_into_the_run(recorded):
    client, run, _, _ = recorded
    system = [key for key in run.data.metrics if key.startswith("system/")]
    assert "system/cpu_utilization_percentage" in system and "system/system_memory_usage_megabytes" in system


def test_training_and_validation_inputs_are_logged(recorded):
    _, run, _, _ = recorded
    inputs = {tag.value: entry.dataset for entry in run.inputs.dataset_inputs for tag in entry.tags
              if tag.key == "mlflow.data.context"}
    assert set(inputs) == {"training", "validation"}
    assert inputs["training"].name == "embedded/train" and inputs["validation"].name == "embedded/validation"
    assert inputs["training"].source_type == "embedded" and len(inputs["training"].digest) == 16
    assert inputs["training"].digest != inputs["validation"].digest
    assert "redpajama_set_name" in inputs["training"].schema


def test_a_direct_run_has_source_tags_and_the_checkouts_commit(recorded):
    _, run, commit, _ = recorded
    tags = run.data.tags
    assert tags["mlflow.source.git.commit"] == commit
    assert tags["mlflow.source.name"].startswith("slimtrack train --test")
    assert tags["mlflow.user"] and tags["mlflow.source.type"] == "LOCAL"


def test_the_store_holds_only_the_newest_checkpoint(recorded):
    client, run, _, tmp = recorded
    stored = [a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")]
    assert stored == ["checkpoints/latest.pt"]
    assert run.data.tags["slimtrack.latest_checkpoint"] == "step_000040.pt"
    local = Path(client.download_artifacts(run.info.run_id, "checkpoints/latest.pt", str(tmp / "dl")))
    assert local.read_bytes() == (tmp / "out" / "checkpoints" / "step_000040.pt").read_bytes()


def test_the_final_model_is_registered_with_the_runs_metrics(recorded):
    client, run, _, _ = recorded
    versions = client.search_model_versions("name='tiny-gpt'")
    assert [str(v.version) for v in versions] == ["1"] and versions[0].run_id == run.info.run_id
    tags = versions[0].tags
    assert float(tags["val_loss"]) == pytest.approx(run.data.metrics["val_loss"])
    assert tags["run_id"] == run.info.run_id


@pytest.mark.parametrize("mode, expected", [("all", ["checkpoints/step_000005.pt", "checkpoints/step_000008.pt"]),
                                            ("none", [])])
def test_log_checkpoints_all_and_none(tmp_path, mode, expected):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = run_cli("train", "--test", "--kernels", "torch", "--max-chunks", "8", "--checkpoint-interval", "5",
                     "--no-log-model", "--no-system-metrics", "--log-checkpoints", mode,
                     "--output-dir", str(tmp_path / "out"), cwd=tmp_path, env={"MLFLOW_TRACKING_URI": uri})
    assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient(uri)
    run = the_run(client)
    assert sorted(a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")) == expected
