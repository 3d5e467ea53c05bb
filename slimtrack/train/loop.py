"""SlimPajamaTrainer: one optimizer step per ``grad_accum`` chunks, and the loop around it.

``train_on_chunk`` is the step (for each micro-batch chunk: forward, loss + accuracy,
backward; then clip and optimizer). ``fit`` is the loop, and the one place where side
effects are ordered: record -> tracker (returns at once) -> viz (renders off-thread) ->
checkpoint (flush the tracker first). ``run_training`` in ``session.py`` sets all of it
up from a Config.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterable, Sequence

import psutil
import torch
import torch.nn.functional as F

from slimtrack.config import Config, TrainConfig
from slimtrack.train.distributed import ReducedStep, World, reduce_step
from slimtrack.train.flops import model_flops_per_token, model_flops_utilization
from slimtrack.train.samples import token_byte_lengths
from slimtrack.metrics import TrainingMetrics

IGNORE_INDEX = -100


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
    loss: float  # mean over all micro-batches' target tokens
    accuracy: float  # likewise
    grad_norm: float  # of the accumulated gradient, before clipping
    by_source: dict[str, tuple[float, int]]  # set -> (loss sum, tokens)


class SlimPajamaTrainer:
    """The optimizer step (``train_on_chunk``), evaluation, the step's record and the loop (``fit``)."""

    def __init__(self, config: Config, model: torch.nn.Module, tokenizer: Any, device: torch.device,
                 source_names: Callable[[], list[str]], world: World = World(), peak_flops: float = 0.0) -> None:
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
        self.flops_per_token = model_flops_per_token(self.module, config.data.seq_len)
        self.peak_flops = peak_flops  # one device's peak FLOP/s (flops.resolve_peak); 0: mfu is 0
        self.token_bytes: torch.Tensor | None = None  # [V] UTF-8 bytes per token (val_bpb), at the first evaluate
        self._process = psutil.Process()

    # ---- one step ------------------------------------------------------------------------------
    def _autocast(self):
        # bf16 autocast on CUDA; CPU stays fp32 (deterministic, and bf16 matmuls are slow there).
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda")

    def train_on_chunk(self, chunk: Any | Sequence[Any]) -> StepResult:
        """One optimizer step on one chunk ([B, T+1] tokens) or on a list of chunks (the
        step's grad_accum micro-batches): forward, loss and backward of each, then clip and update.

        Each micro-batch's loss is scaled by 1/N before its backward, so the summed gradient
        is the gradient of the mean over all N micro-batches' tokens (every micro-batch has
        B x T targets and none is ignored: chunk targets are token ids, never IGNORE_INDEX).
        The native loss kernel scales the gradient it wrote into the logits in place by that
        upstream 1/N. Under DDP only the last micro-batch all-reduces the gradients."""
        micro = list(chunk) if isinstance(chunk, (list, tuple)) else [chunk]
        n = len(micro)
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        losses, accuracies, row_losses = [], [], []
        for i, part in enumerate(micro):
            with self._gradient_sync(i == n - 1):
                loss, accuracy, row_loss = self._forward_backward(part, n)
            losses.append(loss)
            accuracies.append(accuracy)
            row_losses.append(row_loss)
        clip = self.config.train.grad_clip
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip if clip > 0 else float("inf"))
        self.in_update = True  # the weights move from step N to N+1 until fit counts the step
        self.optimizer.step()
        sources = torch.cat([part.sources[:, 1:].reshape(-1) for part in micro])
        by_source = loss_sums_by_source(torch.cat(row_losses).cpu(), sources, self.source_names())
        # Equal token counts: the mean of the micro-batches' means is the token-weighted mean.
        return StepResult(float(torch.stack(losses).mean()), float(torch.stack(accuracies).mean()),
                          float(grad_norm), by_source)

    def _forward_backward(self, chunk: Any, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Forward, loss and backward of one micro-batch whose loss counts 1/n of the step's.
        Returns its detached loss, accuracy and row losses."""
        tokens = chunk.tokens.to(self.device, non_blocking=True)
        inputs, targets = tokens[:, :-1], tokens[:, 1:]  # [B, T] each
        with self._autocast():
            logits = self.model(inputs)  # [B, T, V]
        B, T, V = logits.shape
        loss, accuracy, row_loss = compute_loss(logits.view(B * T, V), targets.reshape(-1),
                                                self.config.train.kernels)
        (loss / n).backward()
        return loss.detach(), accuracy, row_loss

    def _gradient_sync(self, sync: bool) -> ContextManager[Any]:
        """DDP's ``no_sync`` on micro-batches that only accumulate: their gradients stay local
        until the last micro-batch's backward all-reduces the sum."""
        if sync or not hasattr(self.model, "no_sync"):
            return contextlib.nullcontext()
        return self.model.no_sync()

    @torch.no_grad()
    def evaluate(self, chunks: list[Any]) -> tuple[float, float, float]:
        """Mean loss, accuracy and bits per byte (val_bpb) over held-out chunks (torch ops:
        nothing is written in place). Bits per byte: the summed token losses in bits over
        the UTF-8 bytes of the target tokens' text (samples.token_byte_lengths: EOS counts
        no bytes, its loss counts), so runs with different tokenizers compare."""
        if not chunks:
            return math.nan, math.nan, math.nan
        self.module.eval()
        if self.token_bytes is None:
            self.token_bytes = token_byte_lengths(self.tokenizer).to(self.device)
        total_loss = total_correct = total = total_bytes = 0.0
        for chunk in chunks:
            tokens = chunk.tokens.to(self.device)
            inputs, targets = tokens[:, :-1], tokens[:, 1:].reshape(-1)
            with self._autocast():
                logits = self.module(inputs)
            logits = logits.reshape(targets.numel(), -1).float()
            total_loss += float(F.cross_entropy(logits, targets, reduction="sum"))
            total_correct += float((logits.argmax(-1) == targets).sum())
            total += targets.numel()
            total_bytes += float(self.token_bytes[targets].sum())
        bpb = total_loss / math.log(2) / total_bytes if total_bytes else math.nan
        return total_loss / total, total_correct / total, bpb

    # ---- the record of a step ------------------------------------------------------------------
    def make_record(self, step: ReducedStep, grad_norm: float, lr: float, seconds: float) -> TrainingMetrics:
        gpu_mb = torch.cuda.max_memory_allocated() / 2**20 if self.device.type == "cuda" else 0.0
        return TrainingMetrics(
            step=self.step, loss=step.loss, accuracy=step.accuracy, tokens_per_sec=step.tokens_per_sec,
            learning_rate=lr, timestamp=time.time(), gpu_memory_mb=gpu_mb,
            rss_mb=self._process.memory_info().rss / 2**20, grad_norm=grad_norm,
            step_time_ms=seconds * 1000.0, tokens_seen=self.tokens_seen, loss_by_source=step.by_source,
            extra=step.per_rank,
            mfu=model_flops_utilization(self.flops_per_token, step.tokens_per_sec, self.peak_flops,
                                        self.world.world_size),
        )

    # ---- the loop --------------------------------------------------------------------------------
    def fit(self, chunks: Iterable[Any], val_chunks: list[Any], hooks: "LoopHooks") -> None:
        """Train until max_chunks optimizer steps are done or the chunks run out.

        Each step takes the next grad_accum chunks (its micro-batches); a last step the data
        cannot fill is not taken. Raises KeyboardInterrupt at a step boundary when a stop was
        requested (on any rank), NonFiniteLossError when the loss is NaN or Inf."""
        cfg = self.config.train
        batches = iter(chunks)
        while self.step < cfg.max_chunks:
            wait_started = time.perf_counter()
            micro = list(itertools.islice(batches, cfg.grad_accum))
            data_wait = time.perf_counter() - wait_started
            if len(micro) < cfg.grad_accum:
                break
            lr = learning_rate(self.step + 1, cfg)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            started = time.perf_counter()
            result = self.train_on_chunk(micro)
            seconds = time.perf_counter() - started
            tokens = sum(int(part.tokens[:, 1:].numel()) for part in micro)
            reduced = reduce_step(self.world, result.loss, result.accuracy, tokens, seconds, result.by_source,
                                  hooks.stop_requested())
            self.step += 1
            self.in_update = False
            self.tokens_seen += reduced.tokens
            record = self.make_record(reduced, result.grad_norm, lr, seconds)
            record.data_wait_ms = data_wait * 1000.0
            if not math.isfinite(record.loss):
                hooks.on_step(record)
                raise NonFiniteLossError(self.step, record.loss)
            if self.world.is_main and val_chunks and (self.step % cfg.eval_interval == 0
                                                      or self.step == cfg.max_chunks):
                record.val_loss, record.val_accuracy, record.val_bpb = self.evaluate(val_chunks)
            hooks.on_step(record)
            if self.step % cfg.checkpoint_interval == 0:
                hooks.on_checkpoint(self.step)
            if reduced.stop:
                raise KeyboardInterrupt  # at a step boundary: the state is consistent


class LoopHooks:
    """What ``fit`` calls after each step; ``hooks.py`` supplies the real ones."""

    def on_step(self, record: TrainingMetrics) -> None: ...
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
