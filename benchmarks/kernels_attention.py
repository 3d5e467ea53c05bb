"""Causal attention (native/attention.py) vs torch's SDPA: forward + backward, CPU float32.

    python benchmarks/kernels_attention.py [--quick] [--threads 2]

Input is the q/k/v projection's output [B, T, 3C] and the result [B, T, C], as in the
model; each repetition times forward + backward (to qkv) of both, interleaved. Shapes:
the small preset's (16 x 128 tokens, 4 heads of 64), the same at T = 256, and a long
one (T = 512) where the weights (B*H*T*T floats) pass native/attention.py's
MAX_SCORES_BYTES, so both columns run SDPA: the row shows the fallback costs nothing.
The table shows medians, the memory the native path keeps for backward (the attention
weights), and the largest difference from SDPA's values and gradients. glibc's malloc is
tuned as ``slimtrack train`` tunes it (slimtrack/allocator.py: freed buffers are reused,
not faulted in again), for both columns.
"""

from __future__ import annotations

import statistics
import time

import torch
from common import kernel_bench_cli

from slimtrack.runtime.allocator import keep_freed_memory
from slimtrack.native.attention import attention_reference, causal_attention, uses_fused_kernel
from slimtrack.native.threads import configure_threads

# name: (B, T, H, D)
SHAPES = {"small preset": (16, 128, 4, 64), "small, T=256": (8, 256, 4, 64), "T=512 (falls back)": (10, 512, 8, 64)}


def forward_backward(fn, qkv: torch.Tensor, n_head: int, grad: torch.Tensor
                     ) -> tuple[float, torch.Tensor, torch.Tensor]:
    qkv = qkv.clone().requires_grad_()
    started = time.perf_counter()
    y = fn(qkv, n_head)
    (dqkv,) = torch.autograd.grad(y, qkv, grad)
    return time.perf_counter() - started, y.detach(), dqkv


def main(quick: bool = False, threads: int = 2) -> str:
    configure_threads(threads)
    keep_freed_memory()  # as in training; this benchmark runs last in kernels.py, after which it stays on
    reps = 5 if quick else 8
    lines = [f"Causal attention, forward + backward, float32 CPU, {threads} threads, median of {reps} interleaved",
             "", "| shape | B, T, H, D | SDPA ms | native ms | SDPA / native | weights kept | max abs diff (value, grad) |",
             "|---|---|---|---|---|---|---|"]
    for name, (B, T, H, D) in SHAPES.items():
        g = torch.Generator().manual_seed(T)
        qkv, grad = torch.randn(B, T, 3 * H * D, generator=g), torch.randn(B, T, H * D, generator=g)
        times: dict[str, list[float]] = {"sdpa": [], "native": []}
        for _ in range(reps + 1):  # the first round warms up (compile, allocator)
            for label, fn in (("sdpa", attention_reference), ("native", causal_attention)):
                seconds, y, dq = forward_backward(fn, qkv, H, grad)
                times[label].append(seconds)
                if label == "sdpa":
                    y_ref, dq_ref = y, dq
        diff = f"{(y - y_ref).abs().max():.1e}, {(dq - dq_ref).abs().max():.1e}"
        kept = f"{B * H * T * T * 4 / 2**20:.0f} MiB" if uses_fused_kernel(qkv, H) else "- (SDPA)"
        s, n = (statistics.median(times[k][1:]) * 1e3 for k in ("sdpa", "native"))
        lines.append(f"| {name} | {B}, {T}, {H}, {D} | {s:.2f} | {n:.2f} | **{s / n:.2f}x** | {kept} | {diff} |")
    return "\n".join(lines)


if __name__ == "__main__":
    kernel_bench_cli(main, __doc__)
