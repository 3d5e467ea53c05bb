"""Fused softmax cross-entropy + accuracy: the CUDA kernels (numba.cuda).

Imported lazily by ``cross_entropy.py`` the first time a CUDA tensor comes in, so
``import slimtrack.native`` never touches CUDA.

One block per row. Pass 1: each thread walks its strided columns keeping an online
(max, first argmax, sum of exp(x - max)); the block combines those triples with a
shared-memory tree reduction. Pass 2 writes ``(softmax - onehot) / n_valid`` over
the row in place. Only shared memory, ``syncthreads`` and plain arithmetic are used,
so the same code runs under the CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``).

Logits may be float32, float16 or bfloat16; the math is float32 throughout. numba
has no bfloat16 array type, so bf16 storage is viewed as int16 and converted with
bit shifts (a bf16 is the top half of a float32), rounding to nearest-even on store.
The torch side (torch's current stream, no host sync) lives in cross_entropy.py; the
launchers here take torch tensors or numba device arrays (cuda_launch.CudaKernel).
"""

from __future__ import annotations

import functools
import math

import numpy as np
from numba import config, cuda
from numba import types as nbt

from .cuda_launch import CudaKernel

DEFAULT_BLOCK = 512
SMALL_V_BLOCK = 128  # rows this short would leave most of a 512-thread block idle
SMALL_V = 2048
KINDS = ("float32", "bfloat16", "float16")
UNROLL = 4  # columns per thread per loop iteration: independent loads in flight

_NEG_INF = np.float32(-math.inf)
_NAN = np.float32(math.nan)

# float32 <-> int32 bit reinterpretation and exp: libdevice on the GPU, numpy/math in
# the simulator (which has no libdevice).
if config.ENABLE_CUDASIM:

    @cuda.jit(device=True, inline="always")
    def _i32_as_f32(bits):
        return np.int32(bits).view(np.float32)

    @cuda.jit(device=True, inline="always")
    def _f32_as_i32(x):
        return np.float32(x).view(np.int32)

    @cuda.jit(device=True, inline="always")
    def _exp(x):
        return math.exp(x)

else:
    from numba.cuda import libdevice

    @cuda.jit(device=True, inline="always")
    def _i32_as_f32(bits):
        return libdevice.int_as_float(bits)

    @cuda.jit(device=True, inline="always")
    def _f32_as_i32(x):
        return libdevice.float_as_int(x)

    @cuda.jit(device=True, inline="always")
    def _exp(x):
        # __expf (ex2.approx): a few ulp for the x <= 0 of softmax (~1e-6 relative at
        # x = -10), far inside the loss/gradient tolerances, and several times fewer
        # instructions than the accurate expf: the kernel is latency/issue-bound.
        return libdevice.fast_expf(x)


# Element access per storage kind: a[r, i] as float32, and the store back.
@cuda.jit(device=True, inline="always")
def _load_f32(a, r, i):
    return a[r, i]


@cuda.jit(device=True, inline="always")
def _store_f32(a, r, i, v):
    a[r, i] = v


@cuda.jit(device=True, inline="always")
def _load_f16(a, r, i):
    return np.float32(a[r, i])


@cuda.jit(device=True, inline="always")
def _store_f16(a, r, i, v):
    a[r, i] = np.float16(v)


@cuda.jit(device=True, inline="always")
def _load_bf16(a, r, i):
    # a: int16 view of bf16 storage; the 16 bits are the top half of a float32.
    return _i32_as_f32(np.int32(np.int32(a[r, i]) << np.int32(16)))


@cuda.jit(device=True, inline="always")
def _store_bf16(a, r, i, v):
    # Round float32 -> bf16 to nearest-even on the bit pattern (int64 avoids overflow).
    u = np.int64(_f32_as_i32(v)) & np.int64(0xFFFFFFFF)
    h = (u + np.int64(0x7FFF) + ((u >> np.int64(16)) & np.int64(1))) >> np.int64(16)
    if v != v:
        h = np.int64(0x7FC0)  # canonical quiet NaN
    if h >= np.int64(0x8000):
        h -= np.int64(0x10000)  # as a signed int16
    a[r, i] = h


_ACCESS = {
    "float32": (_load_f32, _store_f32),
    "float16": (_load_f16, _store_f16),
    "bfloat16": (_load_bf16, _store_bf16),
}


@cuda.jit(device=True, inline="always")
def _combine(s_max, s_sum, s_idx, a, b):
    # Merge slot b's (max, sum of exp(x - max), first argmax) into slot a.
    ma = s_max[a]
    mb = s_max[b]
    if mb > ma or (mb == ma and s_idx[b] < s_idx[a]):
        s_idx[a] = s_idx[b]
    m = mb if mb > ma else ma
    # `== m` rather than exp(ma - m): exp(-inf - -inf) would be NaN for empty slots.
    sa = s_sum[a] if ma == m else s_sum[a] * _exp(ma - m)
    sb = s_sum[b] if mb == m else s_sum[b] * _exp(mb - m)
    s_max[a] = m
    s_sum[a] = sa + sb


@cuda.jit(device=True, inline="always")
def _reduce_block(s_max, s_sum, s_idx, tid, block):
    # Tree-combine the block's slots into slot 0 (block: a power of two); all threads call it.
    stride = block // 2
    while stride > 0:
        if tid < stride:
            _combine(s_max, s_sum, s_idx, tid, tid + stride)
        cuda.syncthreads()
        stride //= 2


@cuda.jit(device=True, inline="always")
def _write_row(out, row, ignored, valid, m, s, x_t, hit):
    # out[0, row] = the row's loss logsumexp - x_t, out[1, row] = 1.0 where argmax == target.
    if ignored:
        out[0, row] = np.float32(0.0)
        out[1, row] = np.float32(0.0)
    else:  # an out-of-range target gives NaN loss (no host-side check: no sync)
        out[0, row] = math.log(s) + (m - x_t)
        out[1, row] = np.float32(1.0) if valid and hit else np.float32(0.0)


@cuda.jit(device=True, inline="always")
def _online(m, s, arg, x, i):
    # One column into a thread's running (max, sum of exp(x - max), first argmax).
    if x > m:  # strict: the first maximum (in this thread's order) wins
        return x, s * _exp(m - x) + np.float32(1.0), i
    if x == m:
        return m, s + np.float32(1.0), arg
    return m, s + _exp(x - m), arg  # NaN x makes s NaN, so the loss shows it


@cuda.jit(device=True, inline="always")
def _grad(x, i, m, c, t, scale):
    # (softmax - onehot) * scale, with c = scale / sum.
    g = _exp(x - m) * c
    return g - scale if i == t else g


def _make_ce_kernel(load, store, block):
    def ce_kernel(out, logits, targets, count, ignore_index, write_grad):
        # out:      [2, N] f32: out[0] row loss, out[1] 1.0 where argmax == target
        # logits:   [N, V] f32 | f16 | bf16-as-int16; overwritten with the gradient
        # targets:  [N] int64; count: [1] int64, rows whose target != ignore_index
        # grid = N blocks (one per row), block threads; ignore_index: int64
        row = cuda.blockIdx.x
        tid = cuda.threadIdx.x
        V = logits.shape[1]
        t = targets[row]
        ignored = t == ignore_index
        valid = (not ignored) and t >= 0 and t < V
        s_max = cuda.shared.array(block, np.float32)
        s_sum = cuda.shared.array(block, np.float32)
        s_idx = cuda.shared.array(block, np.int32)

        # Pass 1: online max / first argmax / sum over columns tid, tid+block, ...
        # UNROLL columns per iteration, all loads issued before any use (ILP).
        xs = cuda.local.array(UNROLL, np.float32)  # registers once unrolled
        m = _NEG_INF
        s = np.float32(0.0)
        arg = V
        for i0 in range(tid, V, UNROLL * block):
            for u in range(UNROLL):
                i = i0 + u * block
                xs[u] = load(logits, row, i) if i < V else _NEG_INF
            for u in range(UNROLL):
                i = i0 + u * block
                if i < V:
                    m, s, arg = _online(m, s, arg, xs[u], i)
        x_t = _NAN
        if tid == 0 and valid:
            x_t = load(logits, row, t)  # before anyone overwrites the row
        s_max[tid] = m
        s_sum[tid] = s
        s_idx[tid] = arg
        cuda.syncthreads()
        _reduce_block(s_max, s_sum, s_idx, tid, block)
        m = s_max[0]
        s = s_sum[0]
        if tid == 0:
            _write_row(out, row, ignored, valid, m, s, x_t, s_idx[0] == t)

        # Pass 2: gradient (softmax - onehot) * scale, written over the logits
        # (zero on ignored rows, whatever they hold, NaN included).
        if write_grad:
            scale = np.float32(1.0) / np.float32(max(count[0], 1))
            c = scale / s
            zero = np.float32(0.0)
            for i0 in range(tid, V, UNROLL * block):
                for u in range(UNROLL):
                    i = i0 + u * block
                    xs[u] = load(logits, row, i) if i < V and not ignored else zero
                for u in range(UNROLL):
                    i = i0 + u * block
                    if i < V:
                        store(logits, row, i, zero if ignored else _grad(xs[u], i, m, c, t, scale))

    return ce_kernel


def _make_scale_kernel(load, store, block):
    def scale_kernel(grad, grad_output):
        # grad: [N, V] in/out; grad_output: [1] f32, d(final loss)/d(loss).
        # Reading the scalar here (not on the host) keeps backward sync-free; the
        # usual grad_output == 1 costs one read per block and no pass over grad.
        g = grad_output[0]
        if g == np.float32(1.0):
            return
        row = cuda.blockIdx.x
        for i in range(cuda.threadIdx.x, grad.shape[1], block):
            store(grad, row, i, load(grad, row, i) * g)

    return scale_kernel


def signatures(kind: str) -> dict:
    """numba signatures of the two kernels for one storage kind (for compile_ptx)."""
    elem = {"float32": nbt.float32, "float16": nbt.float16, "bfloat16": nbt.int16}[kind]
    logits = nbt.Array(elem, 2, "C")
    vec_f32 = nbt.Array(nbt.float32, 1, "C")
    vec_i64 = nbt.Array(nbt.int64, 1, "C")
    out = nbt.Array(nbt.float32, 2, "C")
    return {
        "ce_kernel": (out, logits, vec_i64, vec_i64, nbt.int64, nbt.boolean),
        "scale_kernel": (logits, vec_f32),
    }


def python_kernels(kind: str, block: int = DEFAULT_BLOCK) -> dict:
    """The undecorated kernel functions (what ``cuda.compile_ptx`` takes)."""
    load, store = _ACCESS[kind]
    return {
        "ce_kernel": _make_ce_kernel(load, store, block),
        "scale_kernel": _make_scale_kernel(load, store, block),
    }


@functools.lru_cache(maxsize=None)
def get_kernels(kind: str, block: int = DEFAULT_BLOCK) -> tuple[CudaKernel, CudaKernel]:
    """(ce_kernel, scale_kernel), each ``kernel(grid, block, stream, *args)``; compiled on first launch."""
    fns, sigs = python_kernels(kind, block), signatures(kind)
    return (CudaKernel(cuda.jit(fns["ce_kernel"]), sigs["ce_kernel"]),
            CudaKernel(cuda.jit(fns["scale_kernel"]), sigs["scale_kernel"]))


def block_for(V: int) -> int:
    return SMALL_V_BLOCK if V <= SMALL_V else DEFAULT_BLOCK


def launch_cross_entropy(out, logits, targets, count, ignore_index: int, write_grad: bool,
                         kind: str, stream=0, block: int | None = None) -> None:
    """Launch the fused kernel on torch CUDA tensors or numba device arrays.

    out [2, N] f32 receives row losses and correct flags; see ce_kernel for the rest.
    """
    N, V = logits.shape
    if N == 0:
        return
    block = block or block_for(V)
    ce, _ = get_kernels(kind, block)
    ce(N, block, stream, out, logits, targets, count, int(ignore_index), bool(write_grad))


def launch_scale(grad, grad_output, kind: str, stream=0, block: int | None = None) -> None:
    """grad *= grad_output[0] in place, skipped on the device when it is 1."""
    N, V = grad.shape
    if N == 0:
        return
    block = block or block_for(V)
    _, sc = get_kernels(kind, block)
    sc(N, block, stream, grad, grad_output)
