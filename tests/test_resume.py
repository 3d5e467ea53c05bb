"""kill -9 mid-run, then --resume: the same MLflow run, every step exactly once, and a loss
curve bit-identical to an uninterrupted run (CPU, same seed)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
from mlflow import MlflowClient

from conftest import run_cli

pytestmark = pytest.mark.slow
STEPS = 30
ARGS = ["train", "--test", "--max-chunks", str(STEPS), "--checkpoint-interval", "3", "--viz-interval", "5",
        "--eval-interval", "8"]
KEYS = ("loss", "accuracy", "tokens_per_sec", "learning_rate", "gpu_memory_mb", "grad_norm", "tokens_seen")


def loss_curve(client: MlflowClient, run_id: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, "loss"))


@pytest.mark.parametrize("kernels", ["torch", "native"])
def test_kill_9_then_resume_is_exact(tmp_path, kernels):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {"MLFLOW_TRACKING_URI": uri}
    reference = run_cli(*ARGS, "--kernels", kernels, "--experiment", "reference", "--output-dir",
                        str(tmp_path / "ref"), cwd=tmp_path, env=env)
    assert reference.returncode == 0, reference.stderr[-2000:]

    out = tmp_path / "killed"
    proc_args = [*ARGS, "--kernels", kernels, "--experiment", "resumed"]
    proc = subprocess.Popen([sys.executable, "-m", "slimtrack", *proc_args, "--output-dir", str(out)],
                            cwd=tmp_path, env={**os.environ, **env}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not list((out / "checkpoints").glob("step_*.pt")):
        assert proc.poll() is None, "training ended before its first checkpoint"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(random.uniform(0.0, 0.3))  # the 27 steps left take ~1.3 s: the kill lands mid-run
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    client = MlflowClient(uri)
    run = client.search_runs([client.get_experiment_by_name("resumed").experiment_id])[0]
    assert run.info.status == "RUNNING"  # killed: nobody ended it
    killed_at = max((m.step for m in client.get_metric_history(run.info.run_id, "loss")), default=0)
    assert killed_at < STEPS, "the kill came too late to test anything"

    report = run_cli("report", run.info.run_id, "--out", str(tmp_path / "killed.png"), cwd=tmp_path, env=env)
    assert report.returncode == 0 and (tmp_path / "killed.png").is_file()  # a killed run reports too

    resumed = run_cli("train", "--resume", run.info.run_id, cwd=tmp_path, env=env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming after step" in resumed.stderr

    run = client.get_run(run.info.run_id)
    assert run.info.status == "FINISHED"
    for key in KEYS:
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, key))
        assert steps == list(range(1, STEPS + 1)), (key, steps)
    ref_run = client.search_runs([client.get_experiment_by_name("reference").experiment_id])[0]
    assert loss_curve(client, run.info.run_id) == loss_curve(client, ref_run.info.run_id)
    history = json.loads((out / "training_viz" / "metrics_history.json").read_text())
    assert [row["step"] for row in history] == list(range(1, STEPS + 1))
