"""Fused GELU (native/gelu.py) vs torch's GELU: forward + backward, CPU float32.

    python benchmarks/kernels_gelu.py [--quick] [--threads 2]

Shapes are the MLP activations of the presets: small [B*T, 4C] = [2048, 1024] and
medium [16384, 2048]. As in the model, the input is an activation (the fc output) and
the fused GELU writes over it (``inplace=True``); each repetition times forward +
backward (to the activation's input) of both, interleaved. The table
shows medians and the largest difference from torch's values and gradients. A second
table times the MLP's whole fc + bias + GELU as the model runs it: nn.Linear (addmm, which
copies the bias into its output first) + torch's GELU, against a bias-free product +
``fused_bias_gelu`` (the bias joins the GELU's pass; its gradient is summed in the
backward's), forward + backward to the input, the weight and the bias.
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F
from common import kernel_bench_cli

from slimtrack.native import fused_bias_gelu, fused_gelu
from slimtrack.native.gelu import gelu_reference
from slimtrack.native.threads import configure_threads

SHAPES = {"small MLP": (2048, 1024), "medium MLP": (16384, 2048)}


def fused_inplace(h: torch.Tensor) -> torch.Tensor:
    return fused_gelu(h, inplace=True)


def forward_backward(fn, x: torch.Tensor, grad: torch.Tensor) -> tuple[float, torch.Tensor, torch.Tensor]:
    x = x.clone().requires_grad_()
    h = x * 1.0  # a non-leaf activation, made outside the timed part
    started = time.perf_counter()
    y = fn(h)
    (dx,) = torch.autograd.grad(y, x, grad)  # through GELU, then x * 1.0 (the same for both)
    return time.perf_counter() - started, y.detach(), dx


def fc_gelu(fused: bool, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return fused_bias_gelu(F.linear(x, w), b) if fused else gelu_reference(F.linear(x, w, b))


def fc_gelu_table(reps: int, rows: int = 2048, width: int = 256) -> list[str]:
    """fc + bias + GELU at the small preset's shape, forward + backward, both ways."""
    g = torch.Generator().manual_seed(0)
    inputs = (torch.randn(rows, width, generator=g), torch.randn(4 * width, width, generator=g) / 16,
              torch.randn(4 * width, generator=g))
    grad = torch.randn(rows, 4 * width, generator=g)
    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(reps + 1):  # the first round warms up
        for fused in (False, True):
            x, w, b = (t.clone().requires_grad_() for t in inputs)
            started = time.perf_counter()
            torch.autograd.grad(fc_gelu(fused, x, w, b), (x, w, b), grad)
            times[fused].append(time.perf_counter() - started)
    t, f = (statistics.median(times[k][1:]) * 1e3 for k in (False, True))
    return ["", f"fc + bias + GELU, forward + backward (x, weight, bias), [{rows}, {width}] -> [{rows}, {4 * width}]",
            "", "| torch: addmm + GELU ms | fused: mm + bias GELU ms | torch / fused |", "|---|---|---|",
            f"| {t:.2f} | {f:.2f} | **{t / f:.2f}x** |"]


def main(quick: bool = False, threads: int = 2) -> str:
    configure_threads(threads)
    reps = 3 if quick else 7
    lines = [f"Fused GELU (tanh), forward + backward, float32 CPU, {threads} threads, median of {reps} interleaved",
             "", "| activation | shape | torch ms | fused ms | torch / fused | max abs diff (value, grad) |",
             "|---|---|---|---|---|---|"]
    for name, shape in SHAPES.items():
        x, grad = torch.randn(shape) * 2, torch.randn(shape)
        times: dict[str, list[float]] = {"torch": [], "fused": []}
        for _ in range(reps + 1):  # the first round warms up (compile, allocator)
            for label, fn in (("torch", gelu_reference), ("fused", fused_inplace)):
                seconds, y, dx = forward_backward(fn, x, grad)
                times[label].append(seconds)
                if label == "torch":
                    y_ref, dx_ref = y, dx
        diff = f"{(y - y_ref).abs().max():.1e}, {(dx - dx_ref).abs().max():.1e}"
        t, f = (statistics.median(times[k][1:]) * 1e3 for k in ("torch", "fused"))
        lines.append(f"| {name} | {shape[0]}x{shape[1]} | {t:.2f} | {f:.2f} | **{t / f:.2f}x** | {diff} |")
    return "\n".join(lines + fc_gelu_table(reps * 3))


if __name__ == "__main__":
    kernel_bench_cli(main, __doc__)
