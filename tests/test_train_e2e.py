"""End to end: the CLI trains and leaves a complete run in a real sqlite MLflow store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from conftest import REPO, run_cli, using_store
from slimpajama_fixture import SET_NAMES, make_slimpajama_tree
from slimtrack.cli import main
from slimtrack.native.threads import cpu_description

pytestmark = pytest.mark.slow

PER_STEP_KEYS = ("loss", "accuracy", "tokens_per_sec", "learning_rate", "gpu_memory_mb", "grad_norm",
                 "step_time_ms", "tokens_seen")


def only_run(client: MlflowClient, experiment: str = "slimtrack"):
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    return runs[0]


def assert_one_point_per_step(client: MlflowClient, run_id: str, steps: int, keys=PER_STEP_KEYS) -> None:
    for key in keys:
        logged = sorted(m.step for m in client.get_metric_history(run_id, key))
        assert logged == list(range(1, steps + 1)), f"{key}: {logged}"


@pytest.fixture(scope="module")
def test_run(tmp_path_factory):
    """One `--test` run with dashboards every 10 steps (shared by the checks below)."""
    work = tmp_path_factory.mktemp("run")
    uri = f"sqlite:///{work / 'mlflow.db'}"
    result = run_cli("train", "--test", "--max-chunks", "30", "--viz-interval", "10", "--output-dir",
                     str(work / "out"), cwd=work, env={"MLFLOW_TRACKING_URI": uri})
    assert result.returncode == 0, result.stderr[-3000:]
    return work, uri, result


def test_run_has_every_record_once_per_step(test_run):
    work, uri, result = test_run
    client = MlflowClient(uri)
    run = only_run(client)
    assert run.info.status == "FINISHED"
    assert_one_point_per_step(client, run.info.run_id, 30)
    by_source = [k for k in run.data.metrics if k.startswith("loss_by_source/")]
    assert {"loss_by_source/PythonStdlibSource", "loss_by_source/PythonDocs"} & set(by_source)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")] == [10, 20, 30]
    assert run.data.params["train.max_chunks"] == "30" and run.data.params["config.preset"] == "test"
    assert run.data.tags["slimtrack.kernels"] == "native"
    assert "torch.version" in run.data.tags
    # The host, for comparing throughput across runs: name (microarchitecture; torch's kernel level).
    assert run.data.tags["slimtrack.cpu"] == cpu_description()
    assert cpu_description().endswith(f"; torch {torch.backends.cpu.get_cpu_capability()})")
    assert "slimtrack.gpu" not in run.data.tags
    exp = client.get_experiment(run.info.experiment_id)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    assert run.info.run_id in result.stderr and "workflowType=machine_learning" in result.stderr
    assert "step 30 | loss" in result.stderr


def test_run_logs_what_tracking_cost(test_run):
    """tracking/cpu_seconds and tracking/cpu_share at the last step, and the console line."""
    work, uri, result = test_run
    client = MlflowClient(uri)
    run = only_run(client)
    seconds = client.get_metric_history(run.info.run_id, "tracking/cpu_seconds")
    share = client.get_metric_history(run.info.run_id, "tracking/cpu_share")
    assert [m.step for m in seconds] == [30] and [m.step for m in share] == [30]
    # 30 records were delivered on the background thread: that took some CPU, and less than the loop.
    assert seconds[0].value > 0 and 0 < share[0].value < 1
    assert "slimtrack: tracking took" in result.stderr


def test_run_has_dashboards_exports_checkpoint_and_model(test_run):
    work, uri, _ = test_run
    client = MlflowClient(uri)
    run_id = only_run(client).info.run_id
    viz = {Path(a.path).name for a in client.list_artifacts(run_id, "training_viz")}
    for name in ("training_step_000010.png", "training_step_000020.png", "training_step_000030.png",
                 "training_latest.png", "metrics_history.json", "text_samples.json"):
        assert name in viz, viz
    local = work / "out" / "training_viz"
    history = json.loads((local / "metrics_history.json").read_text())
    assert [row["step"] for row in history] == list(range(1, 31))
    samples = json.loads((local / "text_samples.json").read_text())
    assert samples["columns"] == ["step", "prompt", "generated", "true_continuation", "accuracy"] and samples["data"]
    images = [a.path for a in client.list_artifacts(run_id, "images")]
    for step in (10, 20, 30):
        assert any(f"training_dashboard+step+{step}+" in p and p.endswith(".png") for p in images), step
    # --log-checkpoints last (the default): one overwritten path in the store, the newest checkpoint
    assert [Path(a.path).name for a in client.list_artifacts(run_id, "checkpoints")] == ["latest.pt"]
    assert only_run(client).data.tags["slimtrack.latest_checkpoint"] == "step_000030.pt"
    assert (work / "out" / "checkpoints" / "step_000030.pt").is_file()
    assert client.search_logged_models([only_run(client).info.experiment_id])


def test_logged_model_loads_and_takes_any_batch(test_run):
    """The pt2 export keeps the batch dimension dynamic (an example of batch 1 would
    specialise it to 1): the loaded model runs on 1 and 3 sequences alike."""
    import mlflow.pytorch
    import torch

    work, uri, result = test_run
    assert "specialized" not in result.stderr
    with using_store(uri):
        model = mlflow.pytorch.load_model(f"runs:/{only_run(MlflowClient(uri)).info.run_id}/model")
    seq_len = int(only_run(MlflowClient(uri)).data.params["data.seq_len"])
    for batch in (1, 3):
        out = model(torch.zeros(batch, seq_len, dtype=torch.int64))
        logits = out[0] if isinstance(out, tuple) else out
        assert logits.shape[:2] == (batch, seq_len)


def test_report_rebuilds_the_dashboard_from_the_store(test_run, tmp_path):
    work, uri, _ = test_run
    run_id = only_run(MlflowClient(uri)).info.run_id
    out = tmp_path / "report.png"
    result = run_cli("report", run_id, "--out", str(out), cwd=tmp_path, env={"MLFLOW_TRACKING_URI": uri})
    assert result.returncode == 0, result.stderr[-2000:]
    assert str(out) in result.stdout and out.read_bytes().startswith(b"\x89PNG")


def test_training_on_a_slimpajama_tree(tmp_path, mlflow_store):
    data = make_slimpajama_tree(tmp_path / "SlimPajama", n_chunks=3, files_per_chunk=2, docs_per_file=40)
    code = main(["train", "--test", "--max-chunks", "6", "--batch-size", "4", "--seq-len", "32",
                 "--dataset", str(data), "--output-dir", str(tmp_path / "out"), "--kernels", "torch"])
    assert code == 0
    client = MlflowClient()
    run = only_run(client)
    assert_one_point_per_step(client, run.info.run_id, 6, keys=("loss", "accuracy"))
    sets = {k.split("/", 1)[1] for k in run.data.metrics if k.startswith("loss_by_source/")}
    assert sets and sets <= set(SET_NAMES)
    assert run.data.tags["slimtrack.dataset"] == str(data)


@pytest.mark.parametrize("argv, fragment", [
    (["train", "--max-chunks", "0"], "--max-chunks"),
    (["train", "--viz-interval", "-5"], "--viz-interval"),
    (["train", "--checkpoint-interval", "abc"], "--checkpoint-interval"),
    (["train", "--preset", "huge"], "--preset"),
    (["train", "--kernels", "fortran"], "--kernels"),
    (["train", "--test", "--seq-len", "4096"], "context"),
    (["train", "--dataset", "/no/such/folder"], "no/such/folder"),
    (["train", "--tokenizer", "/no/such/tokenizer.json"], "tokenizer"),
    (["train", "--test", "maybe"], "--test"),
    (["train", "--bogus"], "unrecognized"),
    (["frobnicate"], "invalid choice"),
])
def test_invalid_input_is_one_line_and_exit_2(argv, fragment, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("slimtrack: error:") and fragment in err


def test_unwritable_output_dir_is_exit_2(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert main(["train", "--test", "--output-dir", str(blocker / "sub")]) == 2
    assert "not writable" in capsys.readouterr().err


def test_exit_status_2_from_the_real_command(tmp_path):
    result = run_cli("train", "--max-chunks", "-1", cwd=tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().count("\n") == 0


def test_mlflow_run_with_local_env_manager(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "SLIMTRACK_OUTPUT_ROOT": str(tmp_path / "outputs"),
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    result = subprocess.run([sys.executable, "-m", "mlflow", "run", str(REPO), "--env-manager", "local",
                             "-P", "max_chunks=12", "-P", "test=true", "-P", "viz_interval=6",
                             "--experiment-name", "mlproject"],
                            env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient(uri)
    run = only_run(client, "mlproject")
    assert run.info.status == "FINISHED"
    assert run.data.params["max_chunks"] == "12" and run.data.params["test"] == "true"
    assert run.data.params["train.max_chunks"] == "12" and run.data.params["config.preset"] == "test"
    assert_one_point_per_step(client, run.info.run_id, 12, keys=("loss", "accuracy", "learning_rate"))


def test_conda_yaml_converts_to_a_pip_environment():
    from mlflow.utils.environment import _PythonEnv

    env = _PythonEnv.from_conda_yaml(str(REPO / "conda.yaml"))
    assert env.python.startswith("3.")
    names = {d.split(">")[0].split("=")[0] for d in env.dependencies}
    assert {"torch", "mlflow", "matplotlib", "pandas", "datasets", "numba"} <= names
