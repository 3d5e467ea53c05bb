"""Host time of the CUDA kernels' launches: cuda_launch.CudaKernel vs numba's dispatcher.

    python benchmarks/cuda_launch.py            # needs a CUDA device

At small V the fused cross-entropy is bound by host work, not by the GPU, so this
measures what the fast launch path saves: the fused loss with and without a gradient
(alternated, several repetitions, medians), next to torch's F.cross_entropy. Both paths
run in one process; ``cuda_launch.FAST_LAUNCH`` switches between them.
"""

from __future__ import annotations

import datetime
import statistics
import time

import torch
import torch.nn.functional as F

N_ROWS = 4096
CALLS = 200
REPEATS = 5


def _per_call_us(fn) -> float:
    """Mean wall time of one call over CALLS calls, synced once at the end."""
    for _ in range(10):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(CALLS):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / CALLS * 1e6


def bench(V: int) -> list[str]:
    from slimtrack.native import cuda_launch
    from slimtrack.native.cross_entropy import fused_cross_entropy

    base = torch.randn(N_ROWS, V, device="cuda")
    targets = torch.randint(0, V, (N_ROWS,), device="cuda")

    def torch_loss():
        x = base.clone().requires_grad_(True)
        F.cross_entropy(x, targets).backward()

    def fused_train():
        x = base.clone().requires_grad_(True)
        fused_cross_entropy(x, targets)[0].backward()

    def fused_eval():
        with torch.no_grad():
            fused_cross_entropy(base, targets)

    samples: dict[str, list[float]] = {}
    for _ in range(REPEATS):  # alternate the paths so drift hits both alike
        samples.setdefault("torch", []).append(_per_call_us(torch_loss))
        for fast in (True, False):
            cuda_launch.FAST_LAUNCH = fast
            for name, fn in (("train", fused_train), ("eval", fused_eval)):
                samples.setdefault(f"{name}/{fast}", []).append(_per_call_us(fn))
    cuda_launch.FAST_LAUNCH = True
    med = {k: statistics.median(v) for k, v in samples.items()}
    return [f"| {V} | {med['torch']:.0f} | {med['train/False']:.0f} | {med['train/True']:.0f} | "
            f"**{med['train/False'] / med['train/True']:.2f}x** | {med['eval/False']:.0f} | "
            f"{med['eval/True']:.0f} | **{med['eval/False'] / med['eval/True']:.2f}x** |"]


def gpu_line() -> str:
    """Date, GPU and versions (common.machine_line needs mlflow, which GPU images may lack)."""
    import numba_cuda

    return (f"{datetime.datetime.now():%Y-%m-%d %H:%M}; GPU {torch.cuda.get_device_name()}; "
            f"torch {torch.__version__}; numba-cuda {numba_cuda.__version__}")


def main() -> str:
    if not torch.cuda.is_available():
        return "(CUDA launch benchmark not run: no CUDA device)"
    lines = [f"Fused cross-entropy per call, N={N_ROWS}, fp32: fast launch vs numba's dispatcher "
             f"(us, median of {REPEATS} alternated repetitions of {CALLS} calls)",
             gpu_line(), "",
             "| V | torch F.cross_entropy fwd+bwd | dispatcher fwd+bwd | fast fwd+bwd | "
             "dispatcher / fast | dispatcher no-grad | fast no-grad | dispatcher / fast |",
             "|---|---|---|---|---|---|---|---|"]
    for V in (256, 8192, 50304):
        lines += bench(V)
    return "\n".join(lines)


if __name__ == "__main__":
    print(main(), flush=True)
