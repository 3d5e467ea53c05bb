"""FusedAdamW: torch.optim.AdamW semantics, one numba kernel pass per step.

The update for each parameter p with gradient g at step t (torch.optim.AdamW's, with
amsgrad=False, maximize=False):

    p  *= 1 - lr * weight_decay                     (decoupled weight decay)
    m   = m + (1 - beta1) * (g - m)                 (exp_avg.lerp_(g, 1 - beta1))
    v   = v * beta2 + (1 - beta2) * g * g           (exp_avg_sq)
    p  -= lr / (1 - beta1**t) * m / (sqrt(v) / sqrt(1 - beta2**t) + eps)

The kernels read each element of (param, grad, exp_avg, exp_avg_sq) once and write
three of them once; all the parameters of a device go through one kernel call
("multi-tensor": per-call overhead would dominate the many small LayerNorm and bias
tensors of a GPT). They multiply by 1/sqrt(1 - beta2**t) where torch divides, a
last-bit difference that saves a second divide per element: it shows while the tensors
fit in cache, not once the update is memory-bound (docs/benchmarks.md).

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
            lr / bias_correction1, 1 / math.sqrt(bias_correction2), eps)


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


class _Slot:
    """What step() needs of one parameter, checked once and reused while valid.

    The kernels write through raw addresses, so every tensor here was checked to be
    contiguous float32 of the parameter's size on its device. A slot is rebuilt
    when the parameter's storage or any of its state tensors is replaced
    (``p.data = ...``, ``load_state_dict``).
    """

    __slots__ = ("step_t", "exp_avg", "exp_avg_sq", "device", "param_ptr", "numel", "step")

    def __init__(self, p: torch.Tensor, state: dict[str, Any]) -> None:
        if p.dtype != torch.float32 or not p.is_contiguous():
            raise ValueError(f"FusedAdamW needs contiguous float32 parameters, got {p.dtype} "
                             f"with strides {p.stride()}")
        if len(state) == 0:  # torch's layout: moments shaped like p
            state["step"] = torch.zeros((), dtype=torch.float32)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        step_t = state["step"]
        # The host int is the truth for bias corrections; read the tensor once here.
        self.step = int(step_t.item())
        if step_t.dtype != torch.float32 or step_t.device.type != "cpu" or step_t.dim() != 0:
            # e.g. a torch fused/capturable state dict put it on the device: our step
            # lives on the CPU like torch's default AdamW, so updating it never syncs.
            step_t = state["step"] = torch.tensor(float(self.step), dtype=torch.float32)
        for name in ("exp_avg", "exp_avg_sq"):
            t = state[name]
            if (t.shape != p.shape or t.dtype != torch.float32 or t.device != p.device
                    or not t.is_contiguous()):
                raise ValueError(f"FusedAdamW state {name!r} ({t.dtype}, {tuple(t.shape)}, "
                                 f"{t.device}) does not match its parameter "
                                 f"({tuple(p.shape)}, {p.device})")
        self.step_t, self.exp_avg, self.exp_avg_sq = step_t, state["exp_avg"], state["exp_avg_sq"]
        self.device, self.param_ptr, self.numel = p.device, p.data_ptr(), p.numel()

    def valid_for(self, p: torch.Tensor, state: dict[str, Any]) -> bool:
        return (state.get("step") is self.step_t and state.get("exp_avg") is self.exp_avg
                and state.get("exp_avg_sq") is self.exp_avg_sq and p.data_ptr() == self.param_ptr
                and p.numel() == self.numel)


class _Batch:
    """The tensors of one device for one step, as the kernels' tables (see adamw_cpu)."""

    def __init__(self) -> None:
        self.ptrs: list[tuple[int, int, int, int]] = []
        self.scalars: list[Scalars] = []
        self.numels: list[int] = []
        self.slots: list[_Slot] = []
        self.keep_alive: list[torch.Tensor] = []  # contiguous copies of odd-layout grads


class FusedAdamW(torch.optim.Optimizer):
    """AdamW (decoupled weight decay) whose step is one fused numba kernel pass.

    Drop-in for ``torch.optim.AdamW(params, lr, betas, eps, weight_decay)`` on float32
    parameters (CPU or CUDA); param groups, ``state_dict``/``load_state_dict`` and
    closures work as in torch. ``amsgrad`` and ``maximize`` are not supported
    (NotImplementedError). Edit ``state["step"]`` only through ``load_state_dict``: the
    optimizer keeps a host copy of it.
    """

    def __init__(self, params: Iterable[Any], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, amsgrad: bool = False, *,
                 maximize: bool = False) -> None:
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                        amsgrad=amsgrad, maximize=maximize)
        self._slots: dict[torch.Tensor, _Slot] = {}
        super().__init__(params, defaults)

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Unpickling and load_state_dict come through here: drop slots of the old state.
        super().__setstate__(state)
        self._slots = {}

    # torch wraps these four in torch._disable_dynamo, whose first call imports
    # torch._dynamo, a large part of a process's start. FusedAdamW is never traced by
    # torch.compile (its step is a numba kernel), so it calls the methods underneath
    # the wrapper; torch._dynamo stays unimported unless something compiles.
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        _undecorated(torch.optim.Optimizer.add_param_group)(self, param_group)
        try:
            _check_group(self.param_groups[-1])
        except Exception:
            self.param_groups.pop()
            raise

    def zero_grad(self, set_to_none: bool = True) -> None:
        _undecorated(torch.optim.Optimizer.zero_grad)(self, set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return _undecorated(torch.optim.Optimizer.state_dict)(self)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        _undecorated(torch.optim.Optimizer.load_state_dict)(self, state_dict)

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
                grad = p.grad
                if grad is None:
                    continue
                slot = self._slot(p)
                if grad.layout != torch.strided:
                    raise RuntimeError("FusedAdamW does not support sparse gradients")
                if not grad.is_contiguous():
                    grad = grad.contiguous()
                batch = batches.get(slot.device)
                if batch is None:
                    batch = batches[slot.device] = _Batch()
                if grad is not p.grad:
                    batch.keep_alive.append(grad)
                n = slot.step + 1
                if n not in rows:
                    rows[n] = adamw_scalars(lr, beta1, beta2, eps, weight_decay, n)
                batch.ptrs.append((slot.param_ptr, slot.exp_avg.data_ptr(),
                                   slot.exp_avg_sq.data_ptr(), grad.data_ptr()))
                batch.scalars.append(rows[n])
                batch.numels.append(slot.numel)
                batch.slots.append(slot)
        for device, batch in batches.items():
            _launch(device, batch)
            for slot in batch.slots:
                slot.step += 1
            # The step tensors are CPU float32 scalars (see _Slot): one write for all.
            step_ptrs = np.array([s.step_t.data_ptr() for s in batch.slots], dtype=np.int64)
            steps = np.array([s.step for s in batch.slots], dtype=np.float32)
            adamw_cpu.write_steps(step_ptrs, steps)
        return loss

    def _slot(self, p: torch.Tensor) -> _Slot:
        state = self.state[p]
        slot = self._slots.get(p)
        if slot is None or not slot.valid_for(p, state):
            slot = self._slots[p] = _Slot(p, state)
        return slot


def _undecorated(method: Callable[..., Any]) -> Callable[..., Any]:
    """The function under torch's ``_disable_dynamo`` wrapper (functools.wraps keeps it)."""
    return getattr(method, "__wrapped__", method)


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
