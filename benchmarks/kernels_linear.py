"""onednn_linear (native/linear.py) vs F.linear: the small preset's linear layers, CPU float32.

    python benchmarks/kernels_linear.py [--quick] [--threads 2]

Each row is one of the model's linear layers at the small preset (B*T = 2048 rows):
forward + backward to the input, the weight and the bias, with F.linear (MKL's sgemm,
addmm's bias copy) and with ``onednn_linear`` (forward and input-gradient products on
oneDNN, the weight gradient on MKL), interleaved, fresh inputs each time as in a step.
The MLP's fc runs without its bias, as the model does (``fused_bias_gelu`` adds it). The
last row is a step's worth: each layer as many times as the model runs it.
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F
from common import kernel_bench_cli

from slimtrack.native import onednn_linear
from slimtrack.native.threads import configure_threads

ROWS, C, LAYERS, BYTE_VOCAB = 2048, 256, 4, 320
# name: (in, out, bias, uses per step)
LAYERS_OF_SMALL = {"attention qkv": (C, 3 * C, True, LAYERS), "attention proj": (C, C, True, LAYERS),
                   "MLP fc (no bias)": (C, 4 * C, False, LAYERS), "MLP proj": (4 * C, C, True, LAYERS),
                   "lm head (byte)": (C, BYTE_VOCAB, False, 1)}


def forward_backward(fn, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None,
                     grad: torch.Tensor) -> tuple[float, list[torch.Tensor]]:
    leaves = [t.clone().requires_grad_() for t in (x, w, b) if t is not None]
    started = time.perf_counter()
    y = fn(*leaves)
    grads = torch.autograd.grad(y, leaves, grad)
    return time.perf_counter() - started, [y.detach(), *grads]


def main(quick: bool = False, threads: int = 2) -> str:
    configure_threads(threads)
    reps = 5 if quick else 25
    g = torch.Generator().manual_seed(0)
    lines = [f"Linear layers, forward + backward (input, weight, bias), float32 CPU, {threads} threads, "
             f"median of {reps} interleaved", "",
             "| layer | shape | F.linear (MKL) ms | onednn_linear ms | F.linear / oneDNN | max abs diff (value, grads) |",
             "|---|---|---|---|---|---|"]
    step = {"torch": 0.0, "onednn": 0.0}
    for name, (n_in, n_out, bias, uses) in LAYERS_OF_SMALL.items():
        w, b = torch.randn(n_out, n_in, generator=g) / n_in**0.5, torch.randn(n_out, generator=g) if bias else None
        times: dict[str, list[float]] = {"torch": [], "onednn": []}
        for _ in range(reps + 1):  # the first round warms up (oneDNN's primitive cache, allocator)
            x, grad = torch.randn(ROWS, n_in, generator=g), torch.randn(ROWS, n_out, generator=g)
            for label, fn in (("torch", F.linear), ("onednn", onednn_linear)):
                seconds, outputs = forward_backward(fn, x, w, b, grad)
                times[label].append(seconds)
                if label == "torch":
                    expected = outputs
        diffs = [(a - e).abs().max().item() for a, e in zip(outputs, expected)]
        t, o = (statistics.median(times[k][1:]) * 1e3 for k in ("torch", "onednn"))
        step["torch"] += uses * t
        step["onednn"] += uses * o
        lines.append(f"| {name} | {ROWS}x{n_in} -> {n_out} | {t:.2f} | {o:.2f} | **{t / o:.2f}x** | "
                     f"{diffs[0]:.1e}, {max(diffs[1:]):.1e} |")
    t, o = step["torch"], step["onednn"]
    lines.append(f"| a step's linear layers | | {t:.1f} | {o:.1f} | **{t / o:.2f}x** | |")
    return "\n".join(lines)


if __name__ == "__main__":
    kernel_bench_cli(main, __doc__)
