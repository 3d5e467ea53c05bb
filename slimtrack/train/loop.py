"""SlimPajamaTrainer: one optimizer step per chunk, and the loop around it.

``train_on_chunk`` is the step (forward, loss + accuracy, backward, clip,
optimizer). ``fit`` is the loop, and the one place where side effects are
ordered: record -> tracker (returns at once) -> viz (renders off-thread) ->
checkpoint (flush the tracker first). ``run_training`` in ``session.py`` sets
all of it up from a Config.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import psutil
import torch
import torch.nn.functional as F

from slimtrack.config import Config, TrainConfig
from slimtrack.train.distributed import ReducedStep, World, reduce_step
from slimtrack.metrics import TrainingMetrics

IGNORE_INDEX = -100
SAMPLE_CHARS = 96  # tokens of the sample row shown as input/output text


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or Inf: training stops; the checkpoints written before it stay."""

    def __init__(self, step: int, loss: float) -> None:
        super().__init__(f"loss became {loss} at step {step}; training stops")
        self.step = step


def learning_rate(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to cfg.lr, then cosine decay to cfg.lr * cfg.min_lr_ratio at max_chunks."""
    if cfg.warmup_steps > 0 and step <= cfg.warmup_steps:
        return cfg.lr * step / cfg.warmup_steps
    span = max(1, cfg.max_chunks - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    min_lr = cfg.lr * cfg.min_lr_ratio
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - min_lr)


def compute_loss(logits: torch.Tensor, targets: torch.Tensor, kernels: str
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """logits [N, V], targets [N] -> (loss scalar, accuracy scalar, row_loss [N]).

    With ``kernels="native"`` the fused numba kernel writes the gradient into
    ``logits`` in place: the caller must not read ``logits`` afterwards.
    """
    if kernels == "native":
        from slimtrack.native import fused_cross_entropy
        return fused_cross_entropy(logits, targets, ignore_index=IGNORE_INDEX)
    row_loss = F.cross_entropy(logits.float(), targets, reduction="none", ignore_index=IGNORE_INDEX)
    valid = targets != IGNORE_INDEX
    count = valid.sum().clamp(min=1)
    loss = row_loss.sum() / count
    accuracy = ((logits.argmax(dim=-1) == targets) & valid).sum().float() / count
    return loss, accuracy.detach(), row_loss.detach()


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig, kernels: str) -> torch.optim.Optimizer:
    groups = model.param_groups(cfg.weight_decay)
    betas = (cfg.beta1, cfg.beta2)
    if kernels == "native":
        from slimtrack.native import FusedAdamW
        return FusedAdamW(groups, lr=cfg.lr, betas=betas, eps=1e-8)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=betas, eps=1e-8)


def loss_sums_by_source(row_loss: torch.Tensor, sources: torch.Tensor, names: list[str]
                        ) -> dict[str, tuple[float, int]]:
    """(loss sum, token count) per source set. row_loss [N], sources [N] (ids into names).

    Sums, not means, so ranks can be combined exactly (distributed.reduce_step)."""
    n = len(names)
    if n == 0:
        return {}
    sums = torch.bincount(sources, weights=row_loss.double(), minlength=n)
    counts = torch.bincount(sources, minlength=n)
    return {names[i]: (float(sums[i]), int(counts[i])) for i in range(n) if counts[i] > 0}


@dataclass
class StepResult:
    loss: float
    accuracy: float
    grad_norm: float
    by_source: dict[str, tuple[float, int]]  # set -> (loss sum, tokens)
    sample: dict[str, Any] | None


class SlimPajamaTrainer:
    """The optimizer step (``train_on_chunk``), evaluation, the step's record and the loop (``fit``)."""

    def __init__(self, config: Config, model: torch.nn.Module, tokenizer: Any, device: torch.device,
                 source_names: Callable[[], list[str]], world: World = World()) -> None:
        self.config = config
        self.model = model  # what trains: the GPT, or DistributedDataParallel(GPT)
        self.module = getattr(model, "module", model)  # the GPT itself (eval, checkpoints)
        self.tokenizer = tokenizer
        self.device = device
        self.source_names = source_names
        self.world = world
        self.optimizer = build_optimizer(self.module, config.train, config.train.kernels)
        self.step = 0  # optimizer steps done
        self.in_update = False  # True while an optimizer step is applied and not yet counted
        self.tokens_seen = 0
        self._process = psutil.Process()

    # ---- one step ------------------------------------------------------------------------------
    def _autocast(self):
        # bf16 autocast on CUDA; CPU stays fp32 (deterministic, and bf16 matmuls are slow there).
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda")

    def train_on_chunk(self, chunk: Any, want_sample: bool = False) -> StepResult:
        """Forward, loss, backward, clip, update on one chunk ([B, T+1] tokens)."""
        self.model.train()
        tokens = chunk.tokens.to(self.device, non_blocking=True)
        inputs, targets = tokens[:, :-1], tokens[:, 1:]  # [B, T] each
        with self._autocast():
            logits = self.model(inputs)  # [B, T, V]
        sample = self._sample(inputs[0], targets[0], logits[0]) if want_sample else None
        B, T, V = logits.shape
        loss, accuracy, row_loss = compute_loss(logits.view(B * T, V), targets.reshape(-1),
                                                self.config.train.kernels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip = self.config.train.grad_clip
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip if clip > 0 else float("inf"))
        self.in_update = True  # the weights move from step N to N+1 until fit counts the step
        self.optimizer.step()
        by_source = loss_sums_by_source(row_loss.cpu(), chunk.sources[:, 1:].reshape(-1), self.source_names())
        return StepResult(float(loss.detach()), float(accuracy), float(grad_norm), by_source, sample)

    def _sample(self, inputs: torch.Tensor, targets: torch.Tensor, logits: torch.Tensor) -> dict[str, Any]:
        """Decoded input and the model's next-token predictions for one row (before the loss
        kernel overwrites the logits with their gradient)."""
        predicted = logits.detach().argmax(dim=-1)  # [T]
        accuracy = float((predicted == targets).float().mean())
        n = SAMPLE_CHARS
        return {
            "input": self.tokenizer.decode(inputs[:n].tolist()),
            "output": self.tokenizer.decode(predicted[:n].tolist()),
            "accuracy": accuracy,
        }

    @torch.no_grad()
    def evaluate(self, chunks: list[Any]) -> tuple[float, float]:
        """Mean loss and accuracy over held-out chunks (torch ops: nothing is written in place)."""
        if not chunks:
            return math.nan, math.nan
        self.module.eval()
        total_loss = total_correct = total = 0.0
        for chunk in chunks:
            tokens = chunk.tokens.to(self.device)
            inputs, targets = tokens[:, :-1], tokens[:, 1:].reshape(-1)
            with self._autocast():
                logits = self.module(inputs)
            logits = logits.reshape(targets.numel(), -1).float()
            total_loss += float(F.cross_entropy(logits, targets, reduction="sum"))
            total_correct += float((logits.argmax(-1) == targets).sum())
            total += targets.numel()
        return total_loss / total, total_correct / total

    # ---- the record of a step ------------------------------------------------------------------
    def make_record(self, step: ReducedStep, grad_norm: float, lr: float, seconds: float) -> TrainingMetrics:
        gpu_mb = torch.cuda.max_memory_allocated() / 2**20 if self.device.type == "cuda" else 0.0
        return TrainingMetrics(
            step=self.step, loss=step.loss, accuracy=step.accuracy, tokens_per_sec=step.tokens_per_sec,
            learning_rate=lr, timestamp=time.time(), gpu_memory_mb=gpu_mb,
            rss_mb=self._process.memory_info().rss / 2**20, grad_norm=grad_norm,
            step_time_ms=seconds * 1000.0, tokens_seen=self.tokens_seen, loss_by_source=step.by_source,
            extra=step.per_rank,
        )

    # ---- the loop --------------------------------------------------------------------------------
    def fit(self, chunks: Iterable[Any], val_chunks: list[Any], hooks: "LoopHooks") -> None:
        """Train until max_chunks steps are done or the chunks run out.

        Raises KeyboardInterrupt at a step boundary when a stop was requested (on any rank),
        NonFiniteLossError when the loss is NaN or Inf."""
        cfg = self.config.train
        sample_every = max(1, cfg.viz_interval // 5)
        batches = iter(chunks)
        while self.step < cfg.max_chunks:
            wait_started = time.perf_counter()
            chunk = next(batches, None)
            data_wait = time.perf_counter() - wait_started
            if chunk is None:
                break
            lr = learning_rate(self.step + 1, cfg)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            want_sample = (self.step + 1) % sample_every == 0 or self.step + 1 == cfg.max_chunks
            started = time.perf_counter()
            result = self.train_on_chunk(chunk, want_sample)
            seconds = time.perf_counter() - started
            tokens = int(chunk.tokens[:, 1:].numel())
            reduced = reduce_step(self.world, result.loss, result.accuracy, tokens, seconds, result.by_source,
                                  hooks.stop_requested())
            self.step += 1
            self.in_update = False
            self.tokens_seen += reduced.tokens
            record = self.make_record(reduced, result.grad_norm, lr, seconds)
            record.data_wait_ms = data_wait * 1000.0
            if not math.isfinite(record.loss):
                hooks.on_step(record, None)
                raise NonFiniteLossError(self.step, record.loss)
            if self.world.is_main and val_chunks and (self.step % cfg.eval_interval == 0
                                                      or self.step == cfg.max_chunks):
                record.val_loss, record.val_accuracy = self.evaluate(val_chunks)
            if result.sample is not None:
                result.sample["step"] = self.step
            hooks.on_step(record, result.sample)
            if self.step % cfg.checkpoint_interval == 0:
                hooks.on_checkpoint(self.step)
            if reduced.stop:
                raise KeyboardInterrupt  # at a step boundary: the state is consistent


class LoopHooks:
    """What ``fit`` calls after each step; ``session.py`` supplies the real ones."""

    def on_step(self, record: TrainingMetrics, sample: dict[str, Any] | None) -> None: ...
    def on_checkpoint(self, step: int) -> None: ...
    def stop_requested(self) -> bool: return False
    def close(self) -> None: ...


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        from slimtrack.errors import UserError
        raise UserError("--device cuda asked for, but torch sees no CUDA device")
    return torch.device(name)


def default_output_dir(run_name: str) -> Path:
    """$SLIMTRACK_OUTPUT_ROOT (default ./outputs)/<timestamp>-<run name>[-N]: two runs never
    share a folder."""
    root = Path(os.environ.get("SLIMTRACK_OUTPUT_ROOT", "outputs"))
    base = root / f"{time.strftime('%Y%m%d-%H%M%S')}-{run_name}"
    candidate, n = base, 1
    while candidate.exists():
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate
