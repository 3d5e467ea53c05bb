"""Model FLOPs utilisation (MFU): the model's training FLOPs per token and the device's peak.

``mfu = flops_per_token * tokens_per_sec / (peak FLOP/s * world_size)``: the FLOP/s the
model's arithmetic needs at the measured throughput, over what the devices could do. The
peak is per device and ``tokens_per_sec`` is the sum over ranks, hence the world size.

The peak comes, in this order, from ``--peak-tflops`` (``flag``), from a table of known
GPUs' dense bf16 tensor-core peaks (``table``; training runs under bf16 autocast on
CUDA), or from a short matrix-product probe on the device itself (``probe``): on CPU,
float32 for the process's threads (the CPU trains in float32), on an unknown GPU, bf16.
The probe's best achieved FLOP/s is the peak, so a CPU run's ``mfu`` says how close the
step comes to the best dense product this process's threads can run (``probe_peak_flops``
says how it stays robust on a shared machine); ``--peak-tflops`` fixes the figure for
runs that must compare across machines.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

PROBE_SECONDS = 0.5  # how long the start-up matmul probe runs
CPU_PROBE_SIZE = 512  # one thread reaches its peak product rate at this size, in short products
CUDA_PROBE_SIZE = 8192

# Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s, as the vendors' datasheets give
# them. The device name is split into lower-case words ("NVIDIA A100-SXM4-80GB" -> nvidia,
# a100, sxm4, 80gb), so "a10" does not match an A100 nor "a40" an RTX A4000; the first
# entry whose words all occur wins, so a variant (h100 + pcie) comes before its family.
GPU_PEAK_TFLOPS: tuple[tuple[tuple[str, ...], float], ...] = (
    (("gb200",), 2500.0),
    (("b200",), 2250.0),
    (("b100",), 1800.0),
    (("h200", "nvl"), 836.0),
    (("h200", "pcie"), 836.0),
    (("h200",), 989.0),
    (("h100", "nvl"), 835.0),
    (("h100", "pcie"), 756.0),
    (("h100",), 989.0),  # SXM ("NVIDIA H100 80GB HBM3")
    (("gh200",), 989.0),
    (("a100",), 312.0),  # SXM and PCIe
    (("a800",), 312.0),
    (("a10g",), 125.0),
    (("a10",), 125.0),
    (("a40",), 149.7),
    (("a30",), 165.0),
    (("l40s",), 362.0),
    (("l40",), 181.0),
    (("l4",), 121.0),
    (("5090",), 209.5),  # GeForce RTX
    (("4090",), 165.2),
    (("3090",), 71.0),
)


@dataclass(frozen=True)
class Peak:
    """One device's peak FLOP/s and where the figure came from."""

    flops: float  # FLOP/s of one device
    source: str  # flag | table | probe

    @property
    def tflops(self) -> float:
        return self.flops / 1e12

    def as_params(self) -> dict[str, str]:
        return {"mfu.peak_tflops": f"{self.tflops:.6g}", "mfu.peak_source": self.source}


def counted_parameters(model: torch.nn.Module) -> int:
    """N of the 6N term, counted as nanoGPT counts it: every parameter except the position
    embedding. The token embedding counts once: it is tied to the output layer, whose
    product costs FLOPs per token like any other weight matrix."""
    total = sum(p.numel() for p in model.parameters())
    position = getattr(model, "wpe", None)
    return total - (position.weight.numel() if position is not None else 0)


def flops_per_token(n_params: int, n_layer: int, n_embd: int, seq_len: int) -> int:
    """Training FLOPs (forward and backward) per token: ``6N + 12 * n_layer * n_embd * seq_len``.

    6N: each weight is used in one multiply-add (2 FLOPs) forward and two backward. The
    second term is attention's two products (QK^T and AV), 2 * 2 * n_embd * seq_len per
    layer forward, times three for forward and backward, counted over the full (not the
    causal half) score matrix as nanoGPT and the PaLM paper's appendix B do."""
    return 6 * n_params + 12 * n_layer * n_embd * seq_len


def model_flops_per_token(model: torch.nn.Module, seq_len: int) -> int:
    """``flops_per_token`` of a GPT (its ``config`` gives n_layer and n_embd) at ``seq_len``."""
    config = model.config
    return flops_per_token(counted_parameters(model), config.n_layer, config.n_embd, seq_len)


def table_peak_tflops(device_name: str) -> float | None:
    """The dense bf16 peak of a known GPU by its name (``torch.cuda.get_device_name``), else None."""
    name_words = set(re.split(r"[^a-z0-9]+", device_name.lower()))
    for words, tflops in GPU_PEAK_TFLOPS:
        if all(word in name_words for word in words):
            return tflops
    return None


def probe_peak_flops(device: torch.device, seconds: float = PROBE_SECONDS, size: int | None = None) -> float:
    """The best FLOP/s of a repeated square matrix product on ``device`` over about ``seconds``:
    bf16 on CUDA; float32 on CPU, where it is one thread's best times the process's torch
    threads.

    One thread, because a product on several threads runs at the pace of its slowest one:
    another process busy on one core slows every product, so a shared machine's probe would
    come out low (and mfu high). One thread needs one free core at a time, which a best of
    many short products finds; a dense product's throughput grows with the threads (cores),
    so the product stands for all of them, or slightly above (mfu errs low). Both float32
    products a step can run are timed, ``torch.mm`` (MKL) and oneDNN's
    (``slimtrack.native.onednn_linear``, which the native kernels' linear layers use), and
    the faster counts: a peak below what the step reaches would make mfu exceed 1. Uses
    its own random generator, so the run's seeded random streams are untouched."""
    cuda = device.type == "cuda"
    n = size or (CUDA_PROBE_SIZE if cuda else CPU_PROBE_SIZE)
    dtype = torch.bfloat16 if cuda else torch.float32
    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.rand(n, n, generator=generator, device=device, dtype=dtype)
    b = torch.rand(n, n, generator=generator, device=device, dtype=dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    products: list[Callable[[], Any]] = [lambda: torch.mm(a, b, out=out)]
    if cuda:  # one timing covers several launches
        return 2.0 * n ** 3 / max(_best_seconds(products[0], device, 10, seconds), 1e-12)
    from slimtrack.native.linear import onednn_available, onednn_linear

    if onednn_available():
        products.append(lambda: onednn_linear(a, b))  # a @ b^T: the same 2 n^3 FLOPs
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        best = min(_best_seconds(product, device, 1, seconds / len(products)) for product in products)
    finally:
        torch.set_num_threads(threads)
    return threads * 2.0 * n ** 3 / max(best, 1e-12)


def _best_seconds(product: Callable[[], Any], device: torch.device, calls: int, seconds: float) -> float:
    """The shortest time of one ``product()`` (averaged over ``calls`` in a row) within ``seconds``."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda *args: None)
    with torch.no_grad():
        product()  # warm-up: library dispatch, thread pool, caches
        sync(device)
        best = float("inf")
        deadline = time.perf_counter() + seconds
        while True:
            started = time.perf_counter()
            for _ in range(calls):
                product()
            sync(device)
            finished = time.perf_counter()
            best = min(best, (finished - started) / calls)
            if finished >= deadline:
                return best


def resolve_peak(peak_tflops: float, device: torch.device) -> Peak:
    """The peak MFU is measured against: the flag, else the GPU table, else the probe."""
    if peak_tflops > 0:
        return Peak(peak_tflops * 1e12, "flag")
    if device.type == "cuda":
        tflops = table_peak_tflops(torch.cuda.get_device_name(device))
        if tflops is not None:
            return Peak(tflops * 1e12, "table")
    return Peak(probe_peak_flops(device), "probe")


def model_flops_utilization(flops_per_token: float, tokens_per_sec: float, peak_flops: float,
                            world_size: int = 1) -> float:
    """Achieved model FLOP/s over the peak of ``world_size`` devices (0 without a peak)."""
    if peak_flops <= 0:
        return 0.0
    return flops_per_token * tokens_per_sec / (peak_flops * world_size)
