"""Gradient accumulation: B=8 in one micro-batch and B=2 in four give the same step (alone and
under DDP), and a grad-accum run resumes exactly."""

from __future__ import annotations

import contextlib
import itertools
import json
import subprocess
import sys

import pytest
import torch

from mlflow_server import free_port
from slimtrack.config import build_config
from slimtrack.data.chunks import make_chunks
from slimtrack.data.tokenizer import load_tokenizer
from slimtrack.train import hooks, session
from slimtrack.train.loop import SlimPajamaTrainer
from slimtrack.train.model import GPT
from slimtrack.train.resume import config_to_resume, find_resume_point

LOSS_TOL = 1e-6
GRAD_RTOL, GRAD_ATOL = 1e-4, 1e-7  # float32 sums in another order (4 partial sums vs one)
WEIGHT_ATOL = 1e-7  # float32 rounding of weights of the init's scale


def first_step(kernels: str, batch_size: int, grad_accum: int):
    """One optimizer step from the seeded initial weights on the first 8 rows of the stream:
    (result, {name: gradient after clipping}, {name: weight after the update})."""
    config = build_config("test", kernels=kernels, batch_size=batch_size, grad_accum=grad_accum,
                          **{"tracking.enabled": False})
    tokenizer = load_tokenizer(config.data.tokenizer)
    config.model.vocab_size = tokenizer.vocab_size
    stream, _ = make_chunks(config.data.dataset, "train", tokenizer, batch_size, config.data.seq_len)
    chunks = list(itertools.islice(stream, grad_accum))
    torch.manual_seed(config.train.seed)
    model = GPT(config.model, kernels)
    trainer = SlimPajamaTrainer(config, model, tokenizer, torch.device("cpu"), lambda: stream.source_names)
    result = trainer.train_on_chunk(chunks)
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters()}
    weights = {name: p.detach().clone() for name, p in model.named_parameters()}
    group = trainer.optimizer.param_groups[0]
    return torch.cat([c.tokens for c in chunks]), result, grads, weights, group["lr"] / group["eps"]


@pytest.mark.parametrize("kernels", ["torch", "native"])
def test_four_micro_batches_of_2_make_the_step_of_one_batch_of_8(kernels):
    tokens_1, whole, grads_1, weights_1, lr_over_eps = first_step(kernels, batch_size=8, grad_accum=1)
    tokens_4, accumulated, grads_4, weights_4, _ = first_step(kernels, batch_size=2, grad_accum=4)
    assert torch.equal(tokens_1, tokens_4)  # the same rows: consecutive chunks continue each other
    assert accumulated.loss == pytest.approx(whole.loss, abs=LOSS_TOL)
    assert accumulated.accuracy == pytest.approx(whole.accuracy, abs=1e-9)
    assert accumulated.grad_norm == pytest.approx(whole.grad_norm, rel=GRAD_RTOL)
    assert accumulated.by_source.keys() == whole.by_source.keys()
    for name, (total, count) in whole.by_source.items():
        assert accumulated.by_source[name][1] == count
        assert accumulated.by_source[name][0] == pytest.approx(total, rel=1e-6)
    for name, grad in grads_1.items():
        torch.testing.assert_close(grads_4[name], grad, rtol=GRAD_RTOL, atol=GRAD_ATOL, msg=name)
    # AdamW's first update is lr * g / (|g| + eps) (plus decay): where |g| is near eps it turns
    # a gradient's rounding difference into up to lr / eps times as much in the weight.
    for name, weight in weights_1.items():
        bound = lr_over_eps * (grads_4[name] - grads_1[name]).abs() + WEIGHT_ATOL
        assert bool(((weights_4[name] - weight).abs() <= bound).all()), name


class RecordingDDP(torch.nn.Module):
    """DistributedDataParallel's surface the trainer uses: ``module`` and ``no_sync``, recorded."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.module = module
        self.events: list[str] = []

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        self.events.append("forward")
        return self.module(idx)

    @contextlib.contextmanager
    def no_sync(self):
        self.events.append("no_sync")
        yield
        self.events.append("end")


def test_only_the_last_micro_batch_all_reduces():
    config = build_config("test", kernels="torch", batch_size=2, grad_accum=4, **{"tracking.enabled": False})
    tokenizer = load_tokenizer(config.data.tokenizer)
    config.model.vocab_size = tokenizer.vocab_size
    stream, _ = make_chunks(config.data.dataset, "train", tokenizer, 2, config.data.seq_len)
    model = RecordingDDP(GPT(config.model))
    trainer = SlimPajamaTrainer(config, model, tokenizer, torch.device("cpu"), lambda: stream.source_names)
    trainer.train_on_chunk(list(itertools.islice(stream, 4)))
    # forward and backward of the first three inside no_sync; the last one synchronises
    assert model.events == ["no_sync", "forward", "end"] * 3 + ["forward"]


def history(out) -> list[dict]:
    return json.loads((out / "training_viz" / "metrics_history.json").read_text())


def test_under_ddp_the_accumulated_step_matches_the_whole_batch(tmp_path):
    """gloo, 2 ranks: the first step's loss (same weights) agrees within 1e-6, and the second
    step's (after the all-reduced, accumulated update) agrees closely."""
    losses = {}
    for batch_size, grad_accum in ((8, 1), (2, 4)):
        out = tmp_path / f"b{batch_size}"
        result = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
             str(free_port()), "-m", "slimtrack", "train", "--test", "--max-chunks", "2", "--no-tracking",
             "--batch-size", str(batch_size), "--grad-accum", str(grad_accum), "--output-dir", str(out)],
            cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        rows = history(out)
        assert [row["step"] for row in rows] == [1, 2]
        assert rows[0]["tokens_seen"] == 2 * 8 * 64  # both ranks, all micro-batches
        losses[grad_accum] = [row["loss"] for row in rows]
    assert losses[4][0] == pytest.approx(losses[1][0], abs=LOSS_TOL)
    assert losses[4][1] == pytest.approx(losses[1][1], rel=1e-4)


def test_a_grad_accum_run_stopped_and_resumed_continues_exactly(tmp_path, monkeypatch):
    steps, stop_at = 8, 3
    common = dict(max_chunks=steps, grad_accum=2, kernels="torch", checkpoint_interval=1000,
                  **{"tracking.enabled": False})
    reference = session.run_training(build_config("test", output_dir=str(tmp_path / "ref"), **common))
    assert reference.status == "FINISHED"

    calls = {"n": 0}

    def stop_at_step(self) -> bool:  # as a SIGTERM after that step would
        calls["n"] += 1
        return calls["n"] == stop_at

    monkeypatch.setattr(hooks.ConsoleAndTrackingHooks, "stop_requested", stop_at_step)
    out = tmp_path / "stopped"
    stopped = session.run_training(build_config("test", output_dir=str(out), **common))
    assert stopped.status == "KILLED" and stopped.steps == stop_at
    point = find_resume_point(str(out))
    assert point.step == stop_at
    resumed = session.run_training(config_to_resume(point), point)
    assert resumed.status == "FINISHED" and resumed.steps == steps

    expected = [(row["step"], row["loss"], row["tokens_seen"]) for row in history(tmp_path / "ref")]
    assert [(row["step"], row["loss"], row["tokens_seen"]) for row in history(out)] == expected
