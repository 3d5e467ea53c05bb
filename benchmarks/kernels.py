"""Fused cross-entropy vs torch, side by side in one invocation.

    python benchmarks/kernels.py [--device cpu|cuda] [--quick] [--threads N]

N = 4096 rows, V in (256, 8192, 50304). Each side does forward + backward + accuracy:
torch is ``F.cross_entropy`` + ``backward()`` + an argmax hit rate; fused is
``fused_cross_entropy`` + ``backward()`` (its accuracy comes from the same pass).
The two take turns, repetition after repetition, so a neighbour's load on a shared
machine hits both alike; the table shows medians, min-max spreads and the ratio
torch time / fused time. Peak memory is the extra memory each side needs above its
inputs: on CPU the resident-set high-water mark in a fresh subprocess per
measurement (torch's CPU allocator is invisible to tracemalloc), on CUDA
``torch.cuda.max_memory_allocated``. On CUDA the fused kernel's bandwidth counts
one read of the logits and one write of the gradient, against the card's peak.
The AdamW benchmark (kernels_adamw.py) runs after, when it is there; on CPU also the GELU,
attention and linear-layer benchmarks (kernels_gelu.py, kernels_attention.py, kernels_linear.py).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from slimtrack.native.cross_entropy import fused_cross_entropy, warmup
from slimtrack.native.threads import available_cores, configure_threads, cpu_description, threading_layer_note

# Rows of logits: on CPU the small preset's tokens per step (16 x 128); a GPU batch is larger.
N_ROWS = {"cpu": 2048, "cuda": 4096}
VOCABS = (256, 8192, 50304)
PEAK_BYTES_PER_S = {"H200": 4.8e12, "H100": 3.35e12}  # HBM peak by device name


def torch_step(x: torch.Tensor, t: torch.Tensor) -> None:
    loss = F.cross_entropy(x, t)
    loss.backward()
    valid = t != -100
    ((x.detach().argmax(dim=1) == t) & valid).sum() / valid.sum().clamp(min=1)


def fused_step(x: torch.Tensor, t: torch.Tensor) -> None:
    loss, _accuracy, _row_loss = fused_cross_entropy(x, t)
    loss.backward()


STEPS = {"torch": torch_step, "fused": fused_step}


def make_inputs(v: int, device: str, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(v)
    rows = N_ROWS[device]
    logits = (torch.randn(rows, v, generator=g) * 2).to(device=device, dtype=dtype)
    targets = torch.randint(0, v, (rows,), generator=g)
    targets[::16] = -100  # a few ignored rows, as padding would give
    return logits, targets.to(device)


def time_once(name: str, base: torch.Tensor, t: torch.Tensor, inner: int) -> float:
    """Seconds per step; a fresh copy of the logits (outside the timer) per repetition."""
    x = base.clone().requires_grad_(True)
    sync = torch.cuda.synchronize if base.is_cuda else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(inner):  # on CUDA several steps per sample: launch-bound at small V
        STEPS[name](x, t)
        x.grad = None
    sync()
    return (time.perf_counter() - start) / inner


def rss_peak_delta(name: str, v: int) -> float:
    """Extra resident bytes of one step, measured in a fresh subprocess."""
    out = subprocess.run([sys.executable, __file__, "--measure-memory", name, str(v)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["bytes"]


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def measure_memory_here(name: str, v: int) -> None:
    """(Subprocess side) print the RSS high-water delta of one step as JSON."""
    configure_threads(2)
    warmup()
    small, small_t = make_inputs(64, "cpu", torch.float32)
    STEPS[name](small.requires_grad_(True), small_t)  # lazy init outside the measurement
    base, t = make_inputs(v, "cpu", torch.float32)
    x = base.clone().requires_grad_(True)
    del base
    try:  # reset VmHWM to the current RSS (Linux >= 4.0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = _status_kb("VmRSS")
    except OSError:
        import resource

        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    STEPS[name](x, t)
    print(json.dumps({"bytes": (_status_kb("VmHWM") - before) * 1024}))


def machine_line(device: str, threads: int) -> str:
    import numba

    parts = [f"{datetime.datetime.now():%Y-%m-%d %H:%M}", f"CPU {cpu_description()}",
             f"{available_cores()} cores ({threads} threads used)",
             f"torch {torch.__version__}", f"numba {numba.__version__}",
             f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}; "
             f"numba threading layer {threading_layer_note()}"]
    if device == "cuda":
        parts.insert(2, f"GPU {torch.cuda.get_device_name()}")
    return "; ".join(parts)


def bench(device: str, dtype: torch.dtype, quick: bool) -> list[str]:
    reps = 3 if quick else 7
    inner = 20 if device == "cuda" else 1
    peak = None
    if device == "cuda":
        peak = next((b for k, b in PEAK_BYTES_PER_S.items() if k in torch.cuda.get_device_name()), None)
    rows = []
    for v in VOCABS:
        base, t = make_inputs(v, device, dtype)
        for name in STEPS:  # warm-up: compile, allocator, caches
            time_once(name, base[:64], t[:64], 1)
        times = {name: [] for name in STEPS}
        for _ in range(reps):
            for name in STEPS:
                times[name].append(time_once(name, base, t, inner))
        med = {k: float(np.median(s)) for k, s in times.items()}
        mem = {}
        for name in STEPS:
            if device == "cuda":
                x = base.clone().requires_grad_(True)
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                before = torch.cuda.memory_allocated()
                STEPS[name](x, t)
                torch.cuda.synchronize()
                mem[name] = torch.cuda.max_memory_allocated() - before
                del x
            else:
                mem[name] = rss_peak_delta(name, v)
        cells = [str(v), str(dtype).replace("torch.", "")]
        for k in STEPS:
            cells.append(f"{med[k] * 1e3:.3f} ({min(times[k]) * 1e3:.3f}-{max(times[k]) * 1e3:.3f})")
        cells.append(f"**{med['torch'] / med['fused']:.2f}x**")
        cells += [f"{mem[k] / 2**20:.1f}" for k in STEPS]
        if device == "cuda":
            moved = 2 * base.numel() * base.element_size()  # read logits, write gradient
            gbps = moved / med["fused"]
            cells += [f"{gbps / 1e9:.0f}", f"{gbps / peak:.0%}" if peak else "n/a"]
        rows.append("| " + " | ".join(cells) + " |")
        del base, t
    return rows


def main(device: str = "cpu", quick: bool = False, threads: int = 2) -> str:
    configure_threads(threads)
    warmup()
    head = ["V", "dtype", "torch ms (min-max)", "fused ms (min-max)", "torch / fused",
            "torch peak MiB", "fused peak MiB"]
    if device == "cuda":
        head += ["fused GB/s", "of peak"]
    lines = [f"Fused cross-entropy, N={N_ROWS[device]} rows, forward + backward + accuracy, "
             f"median of {3 if quick else 7} interleaved repetitions",
             machine_line(device, threads), "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    dtypes = [torch.float32, torch.bfloat16] if device == "cuda" else [torch.float32]
    for dtype in dtypes:
        lines += bench(device, dtype, quick)
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--measure-memory":
        measure_memory_here(sys.argv[2], int(sys.argv[3]))
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for torch and numba")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    print(main(args.device, args.quick, args.threads), flush=True)

    # ---- hook: the AdamW kernel benchmark (benchmarks/kernels_adamw.py, a sibling script) ----
    try:
        from kernels_adamw import main as adamw_main
    except ImportError as exc:
        print(f"\n(AdamW benchmark not run: {exc})")
    else:
        print("\n" + adamw_main(args.device, args.quick))

    # ---- on CUDA, the launch path's host time (benchmarks/cuda_launch.py) ----
    if args.device == "cuda":
        from cuda_launch import main as launch_main
        print("\n" + launch_main(), flush=True)

    # ---- and the GELU kernel (benchmarks/kernels_gelu.py): CPU only, CUDA runs torch's GELU ----
    if args.device == "cpu":
        from kernels_gelu import main as gelu_main
        print("\n" + gelu_main(args.quick, args.threads), flush=True)

    # ---- and causal attention (benchmarks/kernels_attention.py): CPU only, CUDA runs SDPA ----
    if args.device == "cpu":
        from kernels_attention import main as attention_main
        print("\n" + attention_main(args.quick, args.threads), flush=True)

    # ---- and the linear layers on oneDNN (benchmarks/kernels_linear.py): CPU only, CUDA runs cuBLAS ----
    if args.device == "cpu":
        from kernels_linear import main as linear_main
        print("\n" + linear_main(args.quick, args.threads), flush=True)
