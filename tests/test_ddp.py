"""Two processes with gloo on CPU under torchrun: one MLflow run, reduced metrics."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from mlflow import MlflowClient

from conftest import run_cli
from mlflow_server import free_port

pytestmark = pytest.mark.slow
STEPS = 6


def torchrun(*args: str, cwd, env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                           "--master-port", str(free_port()), "-m", "slimtrack", *args],
                          cwd=cwd, env={**os.environ, **env}, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("kernels", ["native"])
def test_two_ranks_log_one_run_with_reduced_metrics(tmp_path, kernels):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "out"
    result = torchrun("train", "--test", "--max-chunks", str(STEPS), "--kernels", kernels, "--output-dir",
                      str(out), cwd=tmp_path, env={"MLFLOW_TRACKING_URI": uri})
    assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("slimtrack").experiment_id])
    assert len(runs) == 1  # rank 1 never opened a run
    run = runs[0]
    assert run.data.params["world_size"] == "2"
    history = {key: {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}
               for key in ("loss", "rank/0/loss", "rank/1/loss", "tokens_per_sec",
                           "rank/0/tokens_per_sec", "rank/1/tokens_per_sec", "accuracy")}
    for key, points in history.items():
        assert sorted(points) == list(range(1, STEPS + 1)), key
    for step in range(1, STEPS + 1):
        # every rank trains the same number of tokens, so the weighted mean is the plain mean
        mean = (history["rank/0/loss"][step] + history["rank/1/loss"][step]) / 2
        assert history["loss"][step] == pytest.approx(mean, rel=1e-9)
        assert history["rank/0/loss"][step] != history["rank/1/loss"][step]  # disjoint data
        summed = history["rank/0/tokens_per_sec"][step] + history["rank/1/tokens_per_sec"][step]
        assert history["tokens_per_sec"][step] == pytest.approx(summed, rel=1e-9)
    assert [p.name for p in (out / "checkpoints").iterdir()] == [f"step_{STEPS:06d}.pt"]

    # A checkpoint saved under DDP resumes in a single process (same run, steps continue).
    resumed = run_cli("train", "--resume", str(out), "--max-chunks", str(STEPS + 2), cwd=tmp_path,
                      env={"MLFLOW_TRACKING_URI": uri})
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "loss"))
    assert steps == list(range(1, STEPS + 3))


def test_each_torchrun_restart_has_keys_of_its_own(monkeypatch):
    """Under torchrun's agent store, the process group's keys go under the restart's prefix:
    a restarted group never reads the addresses or counters a killed one left there."""
    import datetime

    import torch.distributed as dist

    from mlflow_server import free_port
    from slimtrack.train.distributed import World, restart_store

    port = free_port()
    agent = dist.TCPStore("127.0.0.1", port, 1, is_master=True, timeout=datetime.timedelta(seconds=10))
    assert restart_store(World(0, 2, 0)) is None  # not under torchrun: env:// as usual
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(port))
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")
    for restart in ("0", "1"):
        monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", restart)
        restart_store(World(0, 2, 0)).set("rank_0", f"address {restart}")
    assert agent.get("slimtrack/restart_0/rank_0") == b"address 0"
    assert agent.get("slimtrack/restart_1/rank_0") == b"address 1"
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "False")  # rank 0 hosts a store per restart then
    assert restart_store(World(0, 2, 0)) is None
