"""MFU: flops per token by hand, the peak (flag, GPU table, CPU probe), and an mfu point at every step."""

from __future__ import annotations

import pytest
import torch
from mlflow import MlflowClient

from slimtrack.config import ModelConfig, build_config
from slimtrack.train import flops
from slimtrack.train.flops import (Peak, counted_parameters, model_flops_per_token, model_flops_utilization,
                                   resolve_peak, table_peak_tflops)
from slimtrack.train.model import GPT
from slimtrack.train.session import run_training


def test_flops_per_token_by_hand():
    L, C, V, block, T = 2, 64, 320, 64, 48
    model = GPT(ModelConfig(n_layer=L, n_head=2, n_embd=C, block_size=block, vocab_size=V))
    # per block: ln_1 and ln_2 (2C each), qkv (3C^2 + 3C), attention proj (C^2 + C),
    # fc (4C^2 + 4C), mlp proj (4C^2 + C); then the token embedding (tied to lm_head) and ln_f.
    per_block = 2 * C + (3 * C * C + 3 * C) + (C * C + C) + 2 * C + (4 * C * C + 4 * C) + (4 * C * C + C)
    n = L * per_block + V * C + 2 * C
    assert counted_parameters(model) == n == model.num_parameters() - block * C  # no position embedding
    assert model_flops_per_token(model, T) == 6 * n + 12 * L * C * T


@pytest.mark.parametrize("name, tflops", [
    ("NVIDIA A100-SXM4-80GB", 312.0), ("NVIDIA A100 80GB PCIe", 312.0),
    ("NVIDIA H100 80GB HBM3", 989.0), ("NVIDIA H100 PCIe", 756.0), ("NVIDIA H100 NVL", 835.0),
    ("NVIDIA H200", 989.0), ("NVIDIA L4", 121.0), ("NVIDIA L40S", 362.0), ("NVIDIA A10G", 125.0),
    ("NVIDIA GeForce RTX 4090", 165.2),
    ("NVIDIA RTX A4000", None), ("Tesla T4", None), ("Tesla V100-SXM2-16GB", None),
])
def test_gpu_peak_table(name, tflops):
    assert table_peak_tflops(name) == tflops


def test_the_flag_wins_then_the_table_then_the_probe(monkeypatch):
    assert resolve_peak(123.0, torch.device("cpu")) == Peak(123e12, "flag")
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 PCIe")
    assert resolve_peak(0.0, torch.device("cuda")) == Peak(756e12, "table")
    assert resolve_peak(50.0, torch.device("cuda")) == Peak(50e12, "flag")
    probed = resolve_peak(0.0, torch.device("cpu"))
    assert probed.source == "probe" and probed.flops > 1e8
    assert probed.as_params() == {"mfu.peak_tflops": f"{probed.tflops:.6g}", "mfu.peak_source": "probe"}


def test_the_probe_measures_a_float32_matmul_on_cpu():
    seconds = 0.05
    rate = flops.probe_peak_flops(torch.device("cpu"), seconds=seconds, size=128)
    assert 1e8 < rate < 1e14
    state, threads = torch.random.get_rng_state(), torch.get_num_threads()
    flops.probe_peak_flops(torch.device("cpu"), seconds=0.0, size=16)
    assert torch.equal(torch.random.get_rng_state(), state)  # the run's seeded stream is untouched
    assert torch.get_num_threads() == threads  # the one-thread probe gives the threads back


def test_mfu_divides_by_the_peak_of_every_rank():
    assert model_flops_utilization(1000.0, 2e9, 4e12) == pytest.approx(0.5)
    assert model_flops_utilization(1000.0, 2e9, 4e12, world_size=2) == pytest.approx(0.25)
    assert model_flops_utilization(1000.0, 2e9, 0.0) == 0.0


def test_a_run_logs_mfu_at_every_step(tmp_path, mlflow_store, capsys):
    steps = 20
    config = build_config("test", kernels="torch", output_dir=str(tmp_path / "out"))
    outcome = run_training(config)
    assert outcome.status == "FINISHED" and outcome.steps == steps
    client = MlflowClient(mlflow_store)
    run = client.get_run(outcome.run_id)
    points = {m.step: m.value for m in client.get_metric_history(outcome.run_id, "mfu")}
    assert sorted(points) == list(range(1, steps + 1))
    assert all(0 < value <= 1 for value in points.values()), points
    params = run.data.params
    model = GPT(config.model)
    assert params["flops_per_token"] == str(model_flops_per_token(model, config.data.seq_len))
    assert params["mfu.peak_source"] == "probe" and float(params["mfu.peak_tflops"]) > 0
    err = capsys.readouterr().err
    assert f"step {steps} | loss" in err and "| mfu " in err
    assert "mfu against" in err and "(probe)" in err
