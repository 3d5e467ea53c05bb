"""Fused GELU (native/gelu.py) vs torch's GELU: forward + backward, CPU float32.

    python benchmarks/kernels_gelu.py [--quick] [--threads 2]

Shapes are the MLP activations of the presets: small [B*T, 4C] = [2048, 1024] and
medium [16384, 2048]. As in the model, the input is an activation (the fc output) and
the fused GELU writes over it (``inplace=True``); each repetition times forward +
backward (to the activation's input) of both, interleaved. The table
shows medians and the largest difference from torch's values and gradients.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from slimtrack.native import fused_gelu
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
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    print(main(args.quick, args.threads))
