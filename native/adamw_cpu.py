"""Fused AdamW on the CPU: one numba pass over every parameter of a step.

Multi-tensor design. A GPT has a few big matrices and many small vectors (LayerNorm
weights, biases). Calling a parallel kernel once per tensor pays a fixed dispatch
cost per call (numpy views, argument unboxing, waking the thread pool), which is more
than the work on a small bias. So the host gathers, for all tensors of a step:

    ptrs     (n_tensors, 4) int64    addresses of param, exp_avg, exp_avg_sq, grad
    scalars  (n_tensors, 7) float32  the step's scalars (columns below)
    chunks   (n_chunks, 3)  int64    (tensor, first element, length) work items

and one ``prange`` over the chunks does the whole step. Big tensors are cut into
chunks so all threads share them; small tensors are one chunk each. The tables are
what the CUDA kernel (adamw_cuda.py) reads too, so the layout lives here.

The addresses are raw pointers into torch's memory (no copies): the caller
(adamw.FusedAdamW) checks that every tensor is a contiguous float32 CPU tensor of
the right size and keeps it alive during the call.
"""

from __future__ import annotations

from functools import lru_cache

import numba
import numpy as np
from numba import njit, prange, types
from numba.core.extending import intrinsic

# Columns of ``ptrs``: outputs first (updated in place), then the input.
PARAM, EXP_AVG, EXP_AVG_SQ, GRAD = range(4)
N_PTRS = 4

# Columns of ``scalars``: computed on the host in float64 from Python numbers, exactly
# as torch.optim.AdamW does, then rounded once to float32.
DECAY = 0  # 1 - lr * weight_decay       (decoupled weight decay: p *= DECAY)
ONE_MINUS_BETA1 = 1  # 1 - beta1          (exp_avg.lerp_(grad, 1 - beta1))
BETA2 = 2  # beta2
ONE_MINUS_BETA2 = 3  # 1 - beta2
STEP_SIZE = 4  # lr / (1 - beta1 ** step)
INV_BC2_SQRT = 5  # 1 / sqrt(1 - beta2 ** step)  (a multiply; torch divides, see adamw.py)
EPS = 6  # eps
N_SCALARS = 7

# Elements per work item: 32 Ki floats = 128 KiB per stream, so the four streams of a
# chunk fit a 1 MiB L2 cache.
CPU_CHUNK = 1 << 15


@intrinsic
def _f32_ptr(typingctx, addr):
    """int64 address -> float32* (so numba.carray can view torch's memory)."""
    sig = types.CPointer(types.float32)(types.int64)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(signature.return_type))

    return sig, codegen


# error_model="numpy": no ZeroDivisionError checks in the loop (they block vectorising).
@njit(parallel=True, cache=True, error_model="numpy")
def adamw_multi_tensor_cpu(ptrs, scalars, chunks):
    # ptrs:    (n_tensors, 4) int64   param, exp_avg, exp_avg_sq (updated), grad (read)
    # scalars: (n_tensors, 7) float32 per-tensor step scalars (columns above)
    # chunks:  (n_chunks, 3)  int64   (tensor index, first element, length)
    for c in prange(chunks.shape[0]):
        t = chunks[c, 0]
        offset = chunks[c, 1] * 4  # bytes: float32
        n = chunks[c, 2]
        # Views that start at the chunk, so the loop index runs from 0: with a
        # non-negative index numba drops its wraparound select and LLVM vectorises.
        param = numba.carray(_f32_ptr(ptrs[t, PARAM] + offset), n)  # (n,)
        exp_avg = numba.carray(_f32_ptr(ptrs[t, EXP_AVG] + offset), n)  # (n,)
        exp_avg_sq = numba.carray(_f32_ptr(ptrs[t, EXP_AVG_SQ] + offset), n)  # (n,)
        grad = numba.carray(_f32_ptr(ptrs[t, GRAD] + offset), n)  # (n,)
        # All float32: numba's Python float literals would promote the loop to float64.
        decay = scalars[t, DECAY]
        one_minus_beta1 = scalars[t, ONE_MINUS_BETA1]
        beta2 = scalars[t, BETA2]
        one_minus_beta2 = scalars[t, ONE_MINUS_BETA2]
        step_size = scalars[t, STEP_SIZE]
        inv_bc2_sqrt = scalars[t, INV_BC2_SQRT]
        eps = scalars[t, EPS]
        for i in range(n):
            g = grad[i]
            m = exp_avg[i] + one_minus_beta1 * (g - exp_avg[i])  # lerp, torch's form
            v = exp_avg_sq[i] * beta2 + one_minus_beta2 * g * g
            exp_avg[i] = m
            exp_avg_sq[i] = v
            denom = np.sqrt(v) * inv_bc2_sqrt + eps
            param[i] = param[i] * decay - step_size * (m / denom)


@njit(cache=True)
def write_steps(step_ptrs, steps):
    # step_ptrs: (n_tensors,) int64   addresses of the state["step"] tensors (float32, 0-dim, CPU)
    # steps:     (n_tensors,) float32 their new values
    # One call instead of a torch op per tensor (or a _foreach_add_, whose dispatch
    # costs more than these few writes).
    for t in range(step_ptrs.shape[0]):
        numba.carray(_f32_ptr(step_ptrs[t]), 1)[0] = steps[t]


@lru_cache(maxsize=64)
def chunk_table(numels: tuple[int, ...], chunk: int) -> np.ndarray:
    """(n_chunks, 3) int64 work items (tensor, start, length) covering every element once.

    Depends only on the tensor sizes, so it is built once per model and cached.
    Empty tensors get no chunk. Callers must not modify the returned array.
    """
    rows = [
        (t, start, min(chunk, numel - start))
        for t, numel in enumerate(numels)
        for start in range(0, numel, chunk)
    ]
    table = np.array(rows, dtype=np.int64).reshape(len(rows), 3)
    table.setflags(write=False)
    return table


def adamw_step_cpu(ptrs: np.ndarray, scalars: np.ndarray, numels: tuple[int, ...]) -> None:
    """Run the fused step over the tensors that ``ptrs`` points at (see module doc)."""
    adamw_multi_tensor_cpu(ptrs, scalars, chunk_table(numels, CPU_CHUNK))


def warmup() -> None:
    """Compile (or load from numba's on-disk cache) the CPU kernel on tiny arrays."""
    arrays = [np.zeros((4, 3), dtype=np.float32) for _ in range(N_PTRS)]
    ptrs = np.array([[a[r].ctypes.data for a in arrays] for r in range(4)], dtype=np.int64)
    scalars = np.ones((4, N_SCALARS), dtype=np.float32)
    adamw_step_cpu(ptrs, scalars, (3, 3, 3, 3))
    step = np.zeros(1, dtype=np.float32)
    write_steps(np.array([step.ctypes.data], dtype=np.int64), np.ones(1, dtype=np.float32))
