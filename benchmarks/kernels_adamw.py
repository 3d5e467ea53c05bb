"""FusedAdamW vs torch.optim.AdamW (foreach and fused), side by side in one process.

    python benchmarks/kernels_adamw.py [--device cpu|cuda] [--quick] [--threads N]

Parameters are split like a small GPT (token/position embeddings, per block: two
LayerNorms, qkv/proj/fc/proj matrices and their biases). Each optimizer steps its own
copy of the same parameters and gradients; the optimizers take turns, step after
step, so a neighbour's load on a shared machine hits all of them alike. Reported:
median time per step, the baseline (the faster torch variant) divided by FusedAdamW,
and on CUDA the achieved bandwidth (28 bytes per parameter per step: read param,
grad, exp_avg, exp_avg_sq; write param, exp_avg, exp_avg_sq) against the card's peak.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from slimtrack.native.adamw import FusedAdamW
from slimtrack.native.threads import configure_threads

BYTES_PER_PARAM = 28
PEAK_BYTES_PER_S = {"H200": 4.8e12, "H100": 3.35e12}  # HBM peak by device name

# name -> (n_embd, n_layer, vocab_size, block_size)
MODELS = {
    "gpt-10M": (384, 4, 8192, 256),  # 10.3M params, 52 tensors (the headline row)
    "gpt-3M": (256, 4, 320, 256),  # slimtrack's "small" preset
    "gpt-0.1M": (64, 2, 320, 64),  # slimtrack's "test" preset: dispatch-bound
}


def gpt_shapes(d: int, n_layer: int, vocab: int, block: int) -> list[tuple[int, ...]]:
    shapes: list[tuple[int, ...]] = [(vocab, d), (block, d)]
    for _ in range(n_layer):
        shapes += [(d,), (d,), (3 * d, d), (3 * d,), (d, d), (d,),  # ln_1, attn
                   (d,), (d,), (4 * d, d), (4 * d,), (d, 4 * d), (d,)]  # ln_2, mlp
    return shapes + [(d,), (d,)]  # ln_f


def make_optimizer(kind: str, shapes: list[tuple[int, ...]], device: str) -> torch.optim.Optimizer:
    """Same seed, same values: two groups like the trainer's (matrices decay, vectors don't)."""
    gen = torch.Generator().manual_seed(0)
    params = []
    for shape in shapes:
        p = torch.nn.Parameter(torch.randn(shape, generator=gen).to(device))
        p.grad = torch.randn(shape, generator=gen).to(device)
        params.append(p)
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    if kind == "fused_adamw":
        return FusedAdamW(groups, lr=1e-3)
    return torch.optim.AdamW(groups, lr=1e-3, **{kind: True})


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_steps(optimizers: dict[str, torch.optim.Optimizer], device: str, reps: int,
               steps_per_sample: int) -> dict[str, list[float]]:
    """Seconds per step, ``reps`` samples each, the optimizers interleaved."""
    times: dict[str, list[float]] = {name: [] for name in optimizers}
    for _ in range(reps):
        for name, opt in optimizers.items():
            _sync(device)
            start = time.perf_counter()
            for _ in range(steps_per_sample):
                opt.step()
            _sync(device)
            times[name].append((time.perf_counter() - start) / steps_per_sample)
    return times


def max_param_diff(a: torch.optim.Optimizer, b: torch.optim.Optimizer) -> float:
    pa = [p for g in a.param_groups for p in g["params"]]
    pb = [p for g in b.param_groups for p in g["params"]]
    return max((x - y).abs().max().item() for x, y in zip(pa, pb))


def kernel_only_seconds(opt: FusedAdamW, launches: int = 20) -> float:
    """CUDA: time of the kernel alone (tables already on the device, launches back to back,
    CUDA events), to separate the kernel's bandwidth from the per-step host work."""
    from slimtrack.native import adamw_cuda
    from slimtrack.native.adamw import adamw_scalars
    from slimtrack.native.cuda_launch import torch_stream

    params = [p for g in opt.param_groups for p in g["params"]]
    rows = [[p.data_ptr(), opt.state[p]["exp_avg"].data_ptr(),
             opt.state[p]["exp_avg_sq"].data_ptr(), p.grad.data_ptr()] for p in params]
    ptrs = torch.tensor(rows, dtype=torch.int64, device="cuda")
    scalars = torch.tensor([adamw_scalars(1e-3, 0.9, 0.999, 1e-8, 0.0, 1000)] * len(params),
                           dtype=torch.float32, device="cuda")
    chunks = torch.from_numpy(adamw_cuda.chunk_table(tuple(p.numel() for p in params),
                                                     adamw_cuda.CUDA_CHUNK).copy()).cuda()
    args = (ptrs, scalars, chunks)
    blocks = min(chunks.shape[0], 32 * torch.cuda.get_device_properties(0).multi_processor_count)
    stream = torch_stream(ptrs.device)
    adamw_cuda.launch(*args, blocks, adamw_cuda.THREADS, stream)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(launches):
        adamw_cuda.launch(*args, blocks, adamw_cuda.THREADS, stream)
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1e3 / launches


def bench_model(name: str, device: str, reps: int) -> tuple[str, str]:
    shapes = gpt_shapes(*MODELS[name])
    optimizers: dict[str, torch.optim.Optimizer] = {}
    for kind in ("foreach", "fused", "fused_adamw"):
        try:
            opt = make_optimizer(kind, shapes, device)
            opt.step()  # first step: state allocation, compilation
        except RuntimeError:  # this torch has no fused AdamW for the device
            continue
        optimizers[kind] = opt
    steps_per_sample = 10 if device == "cuda" else 1
    times = time_steps(optimizers, device, reps, steps_per_sample)
    med = {k: float(np.median(v)) for k, v in times.items()}
    base_kind = min((k for k in med if k != "fused_adamw"), key=med.get)
    # Every optimizer took the same steps on the same gradients: they must still agree.
    check = (f"{name}: max |param diff| FusedAdamW vs torch {base_kind} after "
             f"{1 + reps * steps_per_sample} steps: "
             f"{max_param_diff(optimizers['fused_adamw'], optimizers[base_kind]):.2e}")
    ours = times["fused_adamw"]
    spread = (np.percentile(ours, 90) - np.percentile(ours, 10)) / med["fused_adamw"]
    n_params = sum(int(np.prod(s)) for s in shapes)
    cells = [name, f"{n_params / 1e6:.2f}M", str(len(shapes))]
    cells += [f"{med[k] * 1e3:.3f}" if k in med else "n/a" for k in ("foreach", "fused")]
    cells += [f"{med['fused_adamw'] * 1e3:.3f}", f"{spread:.0%}",
              f"**{med[base_kind] / med['fused_adamw']:.2f}x** (vs {base_kind})"]
    if device == "cuda":
        name_of_card = torch.cuda.get_device_name()
        peak = next((v for k, v in PEAK_BYTES_PER_S.items() if k in name_of_card), None)
        for seconds in (med["fused_adamw"], kernel_only_seconds(optimizers["fused_adamw"])):
            bytes_per_s = n_params * BYTES_PER_PARAM / seconds
            cells.append(f"{bytes_per_s / 1e9:.0f} ({bytes_per_s / peak:.0%})" if peak
                         else f"{bytes_per_s / 1e9:.0f}")
    return "| " + " | ".join(cells) + " |", check


def main(device: str = "cpu", quick: bool = False, threads: int = 2) -> str:
    """Run the comparison on ``device`` and return it as a markdown table."""
    if device == "cpu":
        configure_threads(threads)
    names = ["gpt-0.1M"] if quick else list(MODELS)
    reps = 5 if quick else 15
    head = ["model", "params", "tensors", "torch foreach ms", "torch fused ms",
            "FusedAdamW ms", "FusedAdamW p10-p90 spread", "baseline / FusedAdamW"]
    if device == "cuda":
        head += ["step GB/s (of peak)", "kernel-only GB/s (of peak)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    checks = []
    for name in names:
        row, check = bench_model(name, device, reps)
        lines.append(row)
        checks.append(check)
    where = torch.cuda.get_device_name() if device == "cuda" else f"CPU, {threads} threads"
    footer = [f"\nmedian of {reps} interleaved samples per step time; {where}; "
              f"torch {torch.__version__}"]
    return "\n".join(lines + footer + checks)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--quick", action="store_true", help="one tiny model, few repetitions")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for torch and numba")
    args = parser.parse_args()
    print(main(args.device, args.quick, args.threads))
