"""A real `mlflow server` that goes away mid-run and comes back: nothing lost, nothing twice."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from conftest import run_cli
from mlflow_server import free_port, mlflow_server

pytestmark = pytest.mark.slow
KEYS = ("loss", "accuracy", "tokens_per_sec", "learning_rate", "gpu_memory_mb")


def wait_for(predicate, timeout: float = 180.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def assert_every_step_once(client: MlflowClient, run_id: str, steps: int) -> None:
    for key in KEYS:
        logged = sorted(m.step for m in client.get_metric_history(run_id, key))
        assert logged == list(range(1, steps + 1)), (key, logged)


def test_server_stops_mid_run_and_comes_back(tmp_path: Path):
    port = free_port()
    store = dict(backend_store_uri=f"sqlite:///{tmp_path / 'server.db'}",
                 artifacts_destination=tmp_path / "artifacts", port=port)
    out = tmp_path / "out"
    steps = 60
    # The run may end before the server is back: it then keeps retrying for up to this long.
    env = dict(os.environ)
    with mlflow_server(tmp_path / "srv1", **store) as url:
        env["MLFLOW_TRACKING_URI"] = url
        proc = subprocess.Popen([sys.executable, "-m", "slimtrack", "train", "--test", "--kernels", "torch",
                                 "--max-chunks", str(steps), "--viz-interval", "10", "--output-dir", str(out),
                                 "--replay-interval", "1", "--final-replay-timeout", "300"],
                                cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        history = out / "training_viz" / "metrics_history.json"
        wait_for(history.is_file, what="the first dashboard")  # step 10 is done and delivered
    # The server is gone now; training must go on and spool.
    spool = out / "tracking_spool.jsonl"
    wait_for(spool.is_file, what="the spool")
    time.sleep(3)
    with mlflow_server(tmp_path / "srv2", **store):
        stdout, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, stderr[-3000:]
        assert "tracking server unreachable" in stderr and "tracking server is back" in stderr, stderr
        client = MlflowClient(url)
        run = client.search_runs([client.get_experiment_by_name("slimtrack").experiment_id])[0]
        assert run.info.status == "FINISHED"
        assert_every_step_once(client, run.info.run_id, steps)
        assert not spool.exists() or spool.stat().st_size == 0


def test_sync_delivers_a_spool_whose_server_never_came_back(tmp_path: Path):
    out = tmp_path / "out"
    # nobody listens here; the credentials must never show up anywhere
    dead = f"http://alice:s3cret-pw@127.0.0.1:{free_port()}"
    # Checkpoints every 2 steps, 3 kept: the spool names step_000002.pt, which is gone by the sync.
    started = time.monotonic()
    result = run_cli("train", "--test", "--kernels", "torch", "--max-chunks", "8", "--viz-interval", "4",
                     "--checkpoint-interval", "2", "--output-dir", str(out), "--final-replay-timeout", "1",
                     cwd=tmp_path, env={"MLFLOW_TRACKING_URI": dead, "MLFLOW_TRACKING_PASSWORD": "hunter2-pw"})
    assert result.returncode == 0, result.stderr[-3000:]
    # An unreachable server costs retries of seconds, not MLflow's own minutes of them per call.
    assert time.monotonic() - started < 180, result.stderr[-3000:]
    assert not (out / "checkpoints" / "step_000002.pt").exists()
    assert "slimtrack sync" in result.stderr
    for secret in ("s3cret-pw", "hunter2-pw"):
        assert secret not in result.stdout + result.stderr
        for path in out.rglob("*"):
            if path.is_file():
                assert secret.encode() not in path.read_bytes(), path
    with mlflow_server(tmp_path / "srv") as url:
        synced = run_cli("sync", str(out), cwd=tmp_path, env={"MLFLOW_TRACKING_URI": url})
        assert synced.returncode == 0, synced.stderr[-3000:]
        again = run_cli("sync", str(out), cwd=tmp_path, env={"MLFLOW_TRACKING_URI": url})
        assert again.returncode == 2  # nothing left: replay happened once
        client = MlflowClient(url)
        run = client.search_runs([client.get_experiment_by_name("slimtrack").experiment_id])[0]
        assert run.info.status == "FINISHED"
        assert_every_step_once(client, run.info.run_id, 8)
        names = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "training_viz")}
        assert {"training_step_000004.png", "training_step_000008.png", "metrics_history.json"} <= names
        images = [a.path for a in client.list_artifacts(run.info.run_id, "images")]
        assert any("+step+8+" in p for p in images)
        everything = json.dumps([run.data.params, run.data.tags])
        assert "s3cret-pw" not in everything and "hunter2-pw" not in everything
