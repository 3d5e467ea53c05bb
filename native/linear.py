"""Linear layers whose products run on oneDNN instead of torch's default (MKL) on CPU.

    y = onednn_linear(x, weight, bias)   # = F.linear(x, weight, bias); x: [..., in], weight: [out, in]
    y.backward(grad)                     # dx, dweight, dbias as F.linear's

On CPU, ``F.linear`` on float32 runs MKL's sgemm (and ``addmm`` first copies the bias
into every output row). torch's CPU wheels also carry oneDNN, whose fp32 products are
faster at the small preset's shapes for the forward pass (``x w^T``, bias folded in) and
for the input gradient (``g w``). For the weight gradient (``g^T x``, both operands
transposed) MKL is faster except where the layer narrows (in > out), so elsewhere that
product keeps torch's ``mm`` (docs/benchmarks.md has the figures). torch reaches
oneDNN's fp32 matmul only with reduced precision (``torch.backends.mkldnn`` bf16/tf32
settings); here it runs at full float32 through ``torch.ops.mkldnn._linear_pointwise``,
the op torch's own compiler (Inductor) emits for CPU linear layers. The values match
F.linear's within float32 rounding (different summation order).

Everything else runs ``F.linear``: CUDA (cuBLAS), other dtypes (autocast), 1-D or empty
inputs, and a torch built without oneDNN. Whether the model calls ``onednn_linear`` at
all is the run's ``runtime.onednn_linear`` setting (``--no-onednn-linear`` keeps MKL,
for CPUs that favour it; ``benchmarks/kernels_linear.py`` compares the two), passed to
``GPT`` by the training session. ``torch.ops.mkldnn`` is a private namespace: a torch
release that drops the op falls back the same way (``onednn_available``), and
tests/test_native_linear.py checks values and gradients against float64.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def onednn_available() -> bool:
    """Whether this torch has oneDNN's linear op (CPU wheels do)."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


_ONEDNN = onednn_available()  # a property of this torch build, fixed for the process


def uses_onednn(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether ``onednn_linear`` runs this input's products on oneDNN (else F.linear)."""
    return (_ONEDNN and x.device.type == "cpu" and x.dtype == torch.float32
            and weight.dtype == torch.float32 and x.dim() >= 2
            and x.numel() > 0 and weight.numel() > 0)  # oneDNN has no empty products


def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``: x [..., in], weight [out, in], bias [out] or None."""
    if not uses_onednn(x, weight):
        return F.linear(x, weight, bias)
    return _OneDNNLinear.apply(x, weight, bias)


def _product(a: torch.Tensor, b_t: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """a @ b_t^T (+ bias) on oneDNN. a: [N, K] (contiguous), b_t: [M, K] (any strides), -> [N, M]."""
    return torch.ops.mkldnn._linear_pointwise(a, b_t, bias, "none", [], "")


class _OneDNNLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        x2 = x.reshape(-1, x.shape[-1]).contiguous()  # [N, in]
        ctx.save_for_backward(x2, weight)
        ctx.input_shape = x.shape
        y = _product(x2, weight, None if bias is None else bias.contiguous())  # [N, out]
        # A 2-D input gets y itself, not a view of it: in-place ops on the output (the MLP's
        # fused bias + GELU) need a tensor of its own.
        return y if x.dim() == 2 else y.view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        x2, weight = ctx.saved_tensors
        g2 = grad.reshape(-1, grad.shape[-1]).contiguous()  # [N, out]
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = _product(g2, weight.t(), None).view(ctx.input_shape)  # g w: [N, in]
        if ctx.needs_input_grad[1]:  # g^T x: [out, in]
            # Both operands are transposed views. MKL is faster for them at most shapes;
            # where in > out (the MLP's proj, 4C -> C) oneDNN is (docs/benchmarks.md).
            grad_w = _product(g2.t(), x2.t(), None) if x2.shape[1] > g2.shape[1] else g2.t().mm(x2)
        if ctx.needs_input_grad[2]:  # False when there is no bias
            grad_b = g2.sum(dim=0)
        return grad_x, grad_w, grad_b
