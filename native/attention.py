"""Causal self-attention from the fused q/k/v projection: public API, autograd glue, reference.

    y = causal_attention(qkv, n_head)     # qkv: [B, T, 3C] (q | k | v), y: [B, T, C]
    y.backward(grad)                      # dqkv: [B, T, 3C], one buffer

The four matrix products run as torch batched matmuls on contiguous [B*H, T, D] blocks;
the causal softmax between them and its backward pass are the numba kernels in
attention_cpu.py. On CPU, torch's own path (``scaled_dot_product_attention``, a
flash-attention kernel) runs many small per-block products, which reach a fraction of
what one big batched matmul gets, and its backward pass recomputes the scores; at the
small preset's shape this path's forward + backward is faster, least where torch has
AVX-512 kernels (docs/benchmarks.md has the figures per host).
The price is memory: it keeps the attention weights, B*H*T*T floats per layer, for the
backward pass, where flash attention keeps one float per row.

So the fused path runs only where that is cheap: CPU float32 tensors whose weights fit
in ``MAX_SCORES_BYTES``. Everything else (CUDA, where flash attention is far ahead;
other dtypes; long sequences) runs ``attention_reference``, the same function through
torch's SDPA.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from . import attention_cpu

# Above this, one layer's saved attention weights cost more memory than the speed is worth.
MAX_SCORES_BYTES = 64 * 2**20


def attention_reference(qkv: torch.Tensor, n_head: int) -> torch.Tensor:
    """What causal_attention computes, through torch's scaled_dot_product_attention."""
    B, T, C3 = qkv.shape
    C = C3 // 3
    q, k, v = (t.view(B, T, n_head, C // n_head).transpose(1, 2) for t in qkv.split(C, dim=2))  # [B, H, T, D]
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # [B, H, T, D]
    return y.transpose(1, 2).reshape(B, T, C)


def uses_fused_kernel(qkv: torch.Tensor, n_head: int) -> bool:
    """Whether causal_attention runs the numba path for this input (else the reference)."""
    B, T, _ = qkv.shape
    return (qkv.device.type == "cpu" and qkv.dtype == torch.float32
            and B * n_head * T * T * 4 <= MAX_SCORES_BYTES)


def causal_attention(qkv: torch.Tensor, n_head: int) -> torch.Tensor:
    """Causal multi-head attention. qkv: [B, T, 3C], q, k and v side by side (the output
    of ``nn.Linear(C, 3C)``); returns [B, T, C], heads concatenated. No dropout."""
    if qkv.dim() != 3 or qkv.shape[2] % (3 * n_head) != 0:
        raise ValueError(f"causal_attention: qkv must be [B, T, 3C] with C divisible by n_head={n_head}, "
                         f"got shape {tuple(qkv.shape)}")
    if not uses_fused_kernel(qkv, n_head):
        return attention_reference(qkv, n_head)
    return _FusedCausalAttention.apply(qkv, n_head)


def _to_heads(x: torch.Tensor, n_head: int, parts: int) -> torch.Tensor:
    """[B, T, parts*C] -> [parts, B*H, T, D], contiguous: one copy (parts = 3 for q|k|v).
    Batched matmul on the strided [B, H, T, D] views instead copies them anyway, and is
    slower than this one copy."""
    B, T, width = x.shape
    D = width // parts // n_head
    return x.reshape(B, T, parts, n_head, D).permute(2, 0, 3, 1, 4).reshape(parts, B * n_head, T, D)


def _from_heads(x: torch.Tensor, batch: int) -> torch.Tensor:
    """[parts, B*H, T, D] -> [B, T, parts*H*D]: the inverse of _to_heads."""
    parts, BH, T, D = x.shape
    H = BH // batch
    return x.view(parts, batch, H, T, D).permute(1, 3, 0, 2, 4).reshape(batch, T, parts * H * D)


class _FusedCausalAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, qkv: torch.Tensor, n_head: int) -> torch.Tensor:
        B = qkv.shape[0]
        heads = _to_heads(qkv.detach(), n_head, 3)  # [3, BH, T, D]
        q, k, v = heads[0], heads[1], heads[2]
        scale = 1.0 / math.sqrt(q.shape[-1])
        probs = torch.bmm(q, k.transpose(1, 2))  # [BH, T, T] scores, then (in place) weights
        attention_cpu.causal_softmax_forward(probs.numpy(), attention_cpu._F(scale))
        ctx.save_for_backward(heads, probs)
        ctx.scale, ctx.n_head = scale, n_head
        return _from_heads(torch.bmm(probs, v).unsqueeze(0), B)  # [B, T, C]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y: torch.Tensor) -> tuple[torch.Tensor, None]:
        heads, probs = ctx.saved_tensors
        q, k, v = heads[0], heads[1], heads[2]
        dy = _to_heads(grad_y, ctx.n_head, 1)[0]  # [BH, T, D]
        grads = torch.empty_like(heads)  # [3, BH, T, D]: dq, dk, dv
        torch.bmm(probs.transpose(1, 2), dy, out=grads[2])  # dv = P^T dy
        dscores = torch.bmm(dy, v.transpose(1, 2))  # dP = dy v^T, [BH, T, T]; becomes dS in place
        attention_cpu.causal_softmax_backward(probs.numpy(), dscores.numpy(), attention_cpu._F(ctx.scale))
        torch.bmm(dscores, k, out=grads[0])  # dq = dS k
        torch.bmm(dscores.transpose(1, 2), q, out=grads[1])  # dk = dS^T q
        return _from_heads(grads, grad_y.shape[0]), None  # [B, T, 3C], the layout of qkv


def warmup() -> None:
    """Compile the CPU kernels (numba caches them on disk)."""
    qkv = torch.randn(1, 4, 3 * 8, requires_grad=True)
    causal_attention(qkv, 2).sum().backward()
