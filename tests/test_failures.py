"""Bad numbers and signals: the run ends with the right status and loses nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from mlflow import MlflowClient

from conftest import run_cli

pytestmark = pytest.mark.slow


def the_run(client: MlflowClient, experiment: str = "slimtrack"):
    return client.search_runs([client.get_experiment_by_name(experiment).experiment_id])[0]


def test_nan_loss_fails_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # A learning rate of 1e9 blows the weights up: the loss becomes NaN within a few steps.
    result = run_cli("train", "--test", "--kernels", "torch", "--lr", "1e9", "--warmup-steps", "0",
                     "--checkpoint-interval", "1", "--output-dir", str(tmp_path / "out"),
                     cwd=tmp_path, env={"MLFLOW_TRACKING_URI": uri})
    assert result.returncode == 1
    line = [l for l in result.stderr.splitlines() if "loss became" in l][0]
    bad_step = int(line.split(" at step ")[1].split(";")[0])
    client = MlflowClient(uri)
    run = the_run(client)
    assert run.info.status == "FAILED"
    checkpoints = sorted(p.name for p in (tmp_path / "out" / "checkpoints").glob("step_*.pt"))
    assert checkpoints[-1] == f"step_{bad_step - 1:06d}.pt"  # the last good one, not the NaN step
    assert (tmp_path / "out" / "training_viz" / f"training_step_{bad_step:06d}.png").is_file()
    steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "loss"))
    assert steps == list(range(1, bad_step + 1))  # the NaN step is recorded too


def test_sigterm_checkpoints_flushes_and_marks_killed(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "slimtrack", "train", "--test", "--max-chunks", "5000",
                             "--kernels", "torch", "--viz-interval", "1000", "--output-dir", str(out)],
                            cwd=tmp_path, env={**os.environ, "MLFLOW_TRACKING_URI": uri},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    history = out / "training_viz"
    deadline = time.monotonic() + 120
    client = MlflowClient(uri)
    while time.monotonic() < deadline:  # wait until training has really started
        time.sleep(0.5)
        exp = client.get_experiment_by_name("slimtrack")
        if exp and (runs := client.search_runs([exp.experiment_id])) and "loss" in runs[0].data.metrics:
            break
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-2000:]
    run = the_run(client)
    assert run.info.status == "KILLED"
    steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "loss"))
    last = steps[-1]
    assert steps == list(range(1, last + 1)) and last < 5000
    assert (out / "checkpoints" / f"step_{last:06d}.pt").is_file()
    assert (history / "metrics_history.json").is_file()
    assert f"interrupted at step {last}" in stderr
