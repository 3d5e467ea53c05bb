"""FusedAdamW: torch.optim.AdamW semantics, one numba kernel pass per step.

The update for each parameter p with gradient g at step t (torch.optim.AdamW's, with
amsgrad=False, maximize=False):

    p  *= 1 - lr * weight_decay                     (decoupled weight decay)
    m   = m + (1 - beta1) * (g - m)                 (exp_avg.lerp_(g, 1 - beta1))
    v   = v * beta2 + (1 - beta2) * g * g           (exp_avg_sq)
    p  -= lr / (1 - beta1**t) * m / (sqrt(v) / sqrt(1 - beta2**t) + eps)

State per parameter is torch's: ``step`` (float32 0-dim CPU tensor), ``exp_avg``,
``exp_avg_sq``; state dicts load into and from torch.optim.AdamW. The host keeps a
Python int beside each ``step`` tensor, so bias corrections never read a tensor
(no .item(), no device sync) in the steady state.

CPU params run the kernel in adamw_cpu.py, CUDA params the one in adamw_cuda.py,
imported only when a CUDA parameter is first stepped.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch

from . import adamw_cpu

Scalars = tuple[float, float, float, float, float, float, float]


def adamw_scalars(lr: float, beta1: float, beta2: float, eps: float, weight_decay: float,
                  step: int) -> Scalars:
    """The per-tensor scalar row (adamw_cpu's column order) for ``step`` (1-based), in float64."""
    bias_correction1 = 1 - beta1**step
    bias_correction2 = 1 - beta2**step
    return (1 - lr * weight_decay, 1 - beta1, beta2, 1 - beta2,
            lr / bias_correction1, math.sqrt(bias_correction2), eps)


def adamw_reference_step(param: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor,
                         exp_avg_sq: torch.Tensor, *, step: int, lr: float, beta1: float,
                         beta2: float, eps: float, weight_decay: float) -> None:
    """One AdamW update in plain float32 torch ops, in place (``step`` is the new, 1-based count).

    The same ops, in the same order, as torch.optim.AdamW's single-tensor path.
    """
    param.mul_(1 - lr * weight_decay)
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    step_size = lr / (1 - beta1**step)
    denom = (exp_avg_sq.sqrt() / math.sqrt(1 - beta2**step)).add_(eps)
    param.addcdiv_(exp_avg, denom, value=-step_size)


def warmup() -> None:
    """Compile the CPU kernel now (numba's cache=True then keeps it for later processes)."""
    adamw_cpu.warmup()


class _Batch:
    """The tensors of one device for one step, as the kernels' tables (see adamw_cpu)."""

    def __init__(self) -> None:
        self.ptrs: list[tuple[int, int, int, int]] = []
        self.scalars: list[Scalars] = []
        self.numels: list[int] = []
        self.steps: list[torch.Tensor] = []
        self.keep_alive: list[torch.Tensor] = []  # contiguous copies of odd-layout grads
        self.updates: list[tuple[torch.Tensor, torch.Tensor, int]] = []  # (param, step_t, n)


class FusedAdamW(torch.optim.Optimizer):
    """AdamW (decoupled weight decay) whose step is one fused numba kernel pass.

    Drop-in for ``torch.optim.AdamW(params, lr, betas, eps, weight_decay)`` on float32
    parameters (CPU or CUDA); param groups, ``state_dict``/``load_state_dict`` and
    closures work as in torch. ``amsgrad`` and ``maximize`` are not supported.
    """

    def __init__(self, params: Iterable[Any], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, amsgrad: bool = False, *,
                 maximize: bool = False) -> None:
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                        amsgrad=amsgrad, maximize=maximize)
        # param -> (its state["step"] tensor, that step as a Python int)
        self._host_steps: dict[torch.Tensor, tuple[torch.Tensor, int]] = {}
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        try:
            _check_group(group)
        except Exception:
            self.param_groups.pop()
            raise

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One AdamW update of every parameter that has a gradient; returns closure's loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        batches: dict[torch.device, _Batch] = {}
        for group in self.param_groups:
            _check_supported(group)  # a loaded torch state dict may ask for amsgrad
            lr, (beta1, beta2) = float(group["lr"]), group["betas"]
            eps, weight_decay = group["eps"], group["weight_decay"]
            rows: dict[int, Scalars] = {}  # step -> scalars, shared by the group's tensors
            for p in group["params"]:
                if p.grad is None:
                    continue
                step_t, n = self._state_for(p)
                grad = _checked_grad(p)
                state = self.state[p]
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                _check_state(p, exp_avg, "exp_avg")
                _check_state(p, exp_avg_sq, "exp_avg_sq")
                if n + 1 not in rows:
                    rows[n + 1] = adamw_scalars(lr, beta1, beta2, eps, weight_decay, n + 1)
                batch = batches.setdefault(p.device, _Batch())
                batch.ptrs.append((p.data_ptr(), exp_avg.data_ptr(), exp_avg_sq.data_ptr(),
                                   grad.data_ptr()))
                batch.scalars.append(rows[n + 1])
                batch.numels.append(p.numel())
                batch.steps.append(step_t)
                batch.updates.append((p, step_t, n + 1))
                if grad is not p.grad:
                    batch.keep_alive.append(grad)
        for device, batch in batches.items():
            _launch(device, batch)
            torch._foreach_add_(batch.steps, 1.0)  # one call for all the step tensors
            for p, step_t, n in batch.updates:
                self._host_steps[p] = (step_t, n)
        return loss

    def _state_for(self, p: torch.Tensor) -> tuple[torch.Tensor, int]:
        """(state["step"] tensor, its value as int), creating the state on first use."""
        state = self.state[p]
        if len(state) == 0:
            # torch's layout: step on the CPU (a host scalar), moments shaped like p.
            state["step"] = torch.zeros((), dtype=torch.float32)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        step_t = state["step"]
        cached = self._host_steps.get(p)
        if cached is not None and cached[0] is step_t:
            return cached
        # New or replaced (load_state_dict) step tensor: read it once. It is a CPU
        # tensor unless a torch fused/capturable state dict put it on the device.
        n = int(step_t.item())
        self._host_steps[p] = (step_t, n)
        return step_t, n


def _launch(device: torch.device, batch: _Batch) -> None:
    ptrs = np.array(batch.ptrs, dtype=np.int64).reshape(-1, adamw_cpu.N_PTRS)
    scalars = np.array(batch.scalars, dtype=np.float32).reshape(-1, adamw_cpu.N_SCALARS)
    numels = tuple(batch.numels)
    if device.type == "cpu":
        adamw_cpu.adamw_step_cpu(ptrs, scalars, numels)
    elif device.type == "cuda":
        from . import adamw_cuda  # lazy: CUDA is only touched by CUDA parameters

        adamw_cuda.adamw_step_cuda(ptrs, scalars, numels, device)
    else:
        raise RuntimeError(f"FusedAdamW has no kernel for {device.type} parameters")


def _check_supported(group: dict[str, Any]) -> None:
    for flag in ("amsgrad", "maximize"):
        if group.get(flag, False):
            raise NotImplementedError(f"FusedAdamW does not support {flag}=True")


def _check_group(group: dict[str, Any]) -> None:
    _check_supported(group)
    lr, betas, eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
    if not 0.0 <= lr:
        raise ValueError(f"Invalid learning rate: {lr}")
    if not 0.0 <= eps:
        raise ValueError(f"Invalid epsilon value: {eps}")
    if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
        raise ValueError(f"Invalid beta parameters: {betas} (each must be in [0, 1))")
    if not 0.0 <= wd:
        raise ValueError(f"Invalid weight_decay value: {wd}")
    for p in group["params"]:
        if p.dtype != torch.float32:
            raise TypeError(f"FusedAdamW supports float32 parameters only, got {p.dtype}")


def _checked_grad(p: torch.Tensor) -> torch.Tensor:
    """p.grad as the kernels need it: dense, contiguous, float32 (or a clear error)."""
    grad = p.grad
    if grad.is_sparse:
        raise RuntimeError("FusedAdamW does not support sparse gradients")
    if p.dtype != torch.float32 or not p.is_contiguous():
        raise ValueError(f"FusedAdamW needs contiguous float32 parameters, got {p.dtype} "
                         f"with strides {p.stride()}")
    return grad if grad.is_contiguous() else grad.contiguous()


def _check_state(p: torch.Tensor, t: torch.Tensor, name: str) -> None:
    # The kernels write through raw pointers: a wrong size here would corrupt memory.
    if (t.shape != p.shape or t.dtype != torch.float32 or t.device != p.device
            or not t.is_contiguous()):
        raise ValueError(f"FusedAdamW state {name!r} ({t.dtype}, {tuple(t.shape)}, {t.device}) "
                         f"does not match its parameter ({tuple(p.shape)}, {p.device})")
