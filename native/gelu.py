"""GELU (tanh approximation) whose forward pass also yields its derivative.

    y = fused_gelu(x)                 # same values as F.gelu(x, approximate="tanh"), within ~1e-6
    y = fused_gelu(h, inplace=True)   # writes y over h (h: an activation nothing else saved)
    y.backward(grad)                  # grad * dy/dx: one multiply, no second tanh
    y = fused_bias_gelu(x @ w.T, b)   # gelu(x @ w.T + b) over the product, which the bias
                                      # skipped: no broadcast copy of b first (torch's addmm)

CPU float32 tensors run the numba kernel in gelu_cpu.py; it saves dy/dx (instead of x)
for the backward pass, so memory is the same as torch's. With ``inplace`` it also
allocates no more than torch does (dy/dx is its one new tensor, where torch's is y):
a fresh buffer's page faults can cost as much as the arithmetic. autograd
still checks the in-place write: if anything saved ``h`` for its backward pass, that
backward pass raises instead of reading the overwritten values. Everything else (CUDA tensors,
other dtypes) runs torch's GELU: on CUDA it is already one fused kernel per direction,
and a numba launch's host time, even through cuda_launch.CudaKernel, would cost more
than the op itself (docs/benchmarks.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import gelu_cpu


def gelu_reference(x: torch.Tensor) -> torch.Tensor:
    """What fused_gelu computes, in torch ops."""
    return F.gelu(x, approximate="tanh")


def fused_gelu(x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """GELU with the tanh approximation; any shape. ``inplace`` writes the result over
    ``x`` (a contiguous CPU float32 tensor that is not a view; otherwise a new tensor, as
    without it)."""
    if x.device.type != "cpu" or x.dtype != torch.float32:
        return gelu_reference(x)
    if inplace and x.is_contiguous() and not x._is_view():  # on a view autograd would copy its base
        return _FusedGELUInplace.apply(x)
    return _FusedGELU.apply(x)


def fused_bias_gelu(h: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """GELU (tanh) of ``h + bias``, written over ``h``. h: [N, F], the output of a bias-free
    matmul (contiguous CPU float32, not a view, nothing else saved it); bias: [F].

    ``nn.Linear`` with a bias runs addmm, which first copies the bias into every row of its
    output (a full [N, F] write) and then multiplies;
    here the bias joins the GELU's one pass, and the backward pass sums the bias gradient in
    the same pass as ``grad * dy/dx``, where addmm's backward reads the gradient again. Other
    inputs run ``F.gelu(h + bias)``.
    """
    if (h.device.type != "cpu" or h.dtype != torch.float32 or h.dim() != 2 or not h.is_contiguous()
            or h._is_view() or bias.shape != h.shape[1:] or bias.dtype != torch.float32 or bias.device != h.device):
        return gelu_reference(h + bias.to(h.dtype))  # under autocast h may be bf16, the bias float32
    return _FusedBiasGELUInplace.apply(h, bias)


def _forward_into(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Run the kernel over contiguous x -> y (may be x itself); returns dy/dx (new)."""
    dydx = torch.empty_like(x)
    gelu_cpu.gelu_forward(x.detach().view(-1).numpy(), y.detach().view(-1).numpy(), dydx.view(-1).numpy())
    return dydx


class _FusedGELU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous()
        y = torch.empty_like(x)
        ctx.save_for_backward(_forward_into(x, y))
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (dydx,) = ctx.saved_tensors
        return grad * dydx


class _FusedGELUInplace(_FusedGELU):  # the same backward
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(_forward_into(x, x))  # elementwise: reading x[i] before writing it
        ctx.mark_dirty(x)
        return x


class _FusedBiasGELUInplace(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        dydx = torch.empty_like(h)
        gelu_cpu.bias_gelu_forward(h.detach().numpy(), bias.detach().contiguous().numpy(), dydx.numpy())
        ctx.save_for_backward(dydx)
        ctx.mark_dirty(h)
        return h

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        (dydx,) = ctx.saved_tensors
        grad = grad.contiguous()
        grad_h = torch.empty_like(grad)  # not over dydx: a retained graph may run backward again
        parts = grad.new_empty(gelu_cpu.BIAS_GRAD_PARTS, grad.shape[1])
        gelu_cpu.bias_gelu_backward(grad.numpy(), dydx.numpy(), grad_h.numpy(), parts.numpy())
        return grad_h, parts.sum(dim=0)


def warmup() -> None:
    """Compile the CPU kernels (numba caches them on disk)."""
    x = torch.linspace(-4, 4, 64)
    fused_gelu(x.requires_grad_()).sum().backward()
    h = torch.linspace(-4, 4, 64).view(8, 8).requires_grad_()
    fused_bias_gelu(h * 1.0, torch.zeros(8, requires_grad=True)).sum().backward()
