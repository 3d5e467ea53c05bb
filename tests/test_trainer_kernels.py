"""The native kernels and the torch ops train the same model the same way."""

from __future__ import annotations

import json

import pytest

from slimtrack.config import build_config
from slimtrack.train.session import run_training

STEPS = 20
# Both paths are fp32 on CPU; they differ in summation order (numba's per-row reductions vs
# torch's), so losses agree to float32 round-off that grows slowly with the steps.
LOSS_RTOL = 2e-4


def losses(tmp_path, kernels: str) -> list[float]:
    out = tmp_path / kernels
    config = build_config("test", max_chunks=STEPS, kernels=kernels, output_dir=str(out),
                          **{"tracking.enabled": False})
    outcome = run_training(config)
    assert outcome.status == "FINISHED" and outcome.steps == STEPS
    history = json.loads((out / "training_viz" / "metrics_history.json").read_text())
    assert [row["step"] for row in history] == list(range(1, STEPS + 1))
    return [row["loss"] for row in history], [row["accuracy"] for row in history]


def test_native_and_torch_kernels_give_the_same_loss_curve(tmp_path):
    native_loss, native_acc = losses(tmp_path, "native")
    torch_loss, torch_acc = losses(tmp_path, "torch")
    assert native_loss == pytest.approx(torch_loss, rel=LOSS_RTOL)
    assert native_acc == pytest.approx(torch_acc, abs=0.01)  # an argmax may flip on a near tie
    assert native_loss[-1] < native_loss[0]
