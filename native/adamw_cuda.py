"""Fused AdamW on CUDA: one numba kernel launch for all the parameters of a device.

The same multi-tensor tables as the CPU kernel (layout in adamw_cpu.py): per tensor
the four addresses and the seven float32 scalars, and a cached table of work chunks.
Each block takes chunks in a grid-stride loop; its threads stride over the chunk's
elements. The kernel reads and writes torch's memory in place through the addresses
(no copies), on torch's current stream, and nothing here waits for the GPU: the
per-step tables go up through pinned memory with non_blocking copies.

Why pointers and not one launch per tensor: numba's launch path costs tens of
microseconds per call (argument boxing, ``as_cuda_array``), while the whole AdamW
update of a 10M-parameter model is ~0.1 ms of HBM traffic; one launch per tensor of
a GPT (~50 tensors) would be launch-bound.

Under NUMBA_ENABLE_CUDASIM=1 the loads and stores become ctypes accesses to host
memory, so the same kernel runs in the simulator on numpy arrays' addresses.

Imported lazily (by FusedAdamW on the first CUDA step): importing slimtrack.native
never touches CUDA.
"""

from __future__ import annotations

import ctypes
import math
import warnings

import numpy as np
from numba import config, cuda

from .adamw_cpu import (BETA2, DECAY, EPS, EXP_AVG, EXP_AVG_SQ, GRAD, INV_BC2_SQRT, N_PTRS,
                        N_SCALARS, ONE_MINUS_BETA1, ONE_MINUS_BETA2, PARAM, STEP_SIZE,
                        chunk_table)

# 8 Ki elements per chunk and 256 threads per block: a 10M-parameter model gives
# ~1.3K blocks, enough to keep every SM of an H100/H200 streaming.
CUDA_CHUNK = 1 << 13
THREADS = 256

if config.ENABLE_CUDASIM:

    def _load_f32(addr, index):  # noqa: D103 - simulator: host memory via ctypes
        return np.float32(ctypes.c_float.from_address(int(addr) + 4 * int(index)).value)

    def _store_f32(addr, index, value):  # noqa: D103
        ctypes.c_float.from_address(int(addr) + 4 * int(index)).value = float(value)

    _sqrt_f32 = np.sqrt  # keeps the simulated arithmetic in float32, like the device

else:
    from llvmlite import ir
    try:
        from numba.cuda import types
        from numba.cuda.extending import intrinsic
    except ImportError:  # older numba-cuda, still sharing numba.core's typing
        from numba.core import types
        from numba.core.extending import intrinsic

    _sqrt_f32 = math.sqrt  # on float32 this lowers to sqrt.rn.f32

    # addrspace(1) = global memory: NVVM emits ld.global/st.global, not generic loads.
    _GLOBAL_F32_PTR = ir.PointerType(ir.FloatType(), addrspace=1)

    @intrinsic
    def _load_f32(typingctx, addr, index):
        """float32 at ``addr + 4 * index`` (addr: a device address as int64)."""
        sig = types.float32(types.int64, types.int64)

        def codegen(context, builder, signature, args):
            return builder.load(builder.gep(builder.inttoptr(args[0], _GLOBAL_F32_PTR), [args[1]]))

        return sig, codegen

    @intrinsic
    def _store_f32(typingctx, addr, index, value):
        """Store float32 ``value`` at ``addr + 4 * index``."""
        sig = types.void(types.int64, types.int64, types.float32)

        def codegen(context, builder, signature, args):
            builder.store(args[2], builder.gep(builder.inttoptr(args[0], _GLOBAL_F32_PTR), [args[1]]))
            return context.get_dummy_value()

        return sig, codegen


@cuda.jit
def adamw_multi_tensor_cuda(ptrs, scalars, chunks):
    # ptrs:    (n_tensors, >=4) int64   param, exp_avg, exp_avg_sq (updated), grad (read)
    # scalars: (n_tensors, >=7) float32 per-tensor step scalars (adamw_cpu's columns)
    # chunks:  (n_chunks, 3)    int64   (tensor index, first element, length)
    for c in range(cuda.blockIdx.x, chunks.shape[0], cuda.gridDim.x):  # grid-stride
        t = chunks[c, 0]
        offset = chunks[c, 1] * 4  # bytes: float32
        n = chunks[c, 2]
        param = ptrs[t, PARAM] + offset
        exp_avg = ptrs[t, EXP_AVG] + offset
        exp_avg_sq = ptrs[t, EXP_AVG_SQ] + offset
        grad = ptrs[t, GRAD] + offset
        decay = scalars[t, DECAY]
        one_minus_beta1 = scalars[t, ONE_MINUS_BETA1]
        beta2 = scalars[t, BETA2]
        one_minus_beta2 = scalars[t, ONE_MINUS_BETA2]
        step_size = scalars[t, STEP_SIZE]
        inv_bc2_sqrt = scalars[t, INV_BC2_SQRT]
        eps = scalars[t, EPS]
        for i in range(cuda.threadIdx.x, n, cuda.blockDim.x):  # block-stride, coalesced
            g = _load_f32(grad, i)
            m = _load_f32(exp_avg, i)
            v = _load_f32(exp_avg_sq, i)
            m = m + one_minus_beta1 * (g - m)
            v = v * beta2 + one_minus_beta2 * g * g
            _store_f32(exp_avg, i, m)
            _store_f32(exp_avg_sq, i, v)
            denom = _sqrt_f32(v) * inv_bc2_sqrt + eps
            p = _load_f32(param, i) * decay - step_size * (m / denom)
            _store_f32(param, i, p)


def launch(ptrs, scalars, chunks, blocks: int, threads: int = THREADS, stream=0) -> None:
    """Launch the kernel on device arrays (the simulator test calls this directly)."""
    adamw_multi_tensor_cuda[blocks, threads, stream](ptrs, scalars, chunks)


# A small model has fewer chunks than the occupancy heuristic likes; that is expected.
warnings.filterwarnings("ignore", message=r"Grid size .* will likely result in GPU under-utilization")

_device_chunks: dict[tuple[tuple[int, ...], int], tuple[object, object]] = {}
_sm_counts: dict[int, int] = {}


def adamw_step_cuda(ptrs: np.ndarray, scalars: np.ndarray, numels: tuple[int, ...],
                    device) -> None:
    """Run the fused step on ``device`` over the tensors ``ptrs`` points at (no host sync)."""
    import torch

    index = device.index if device.index is not None else torch.cuda.current_device()
    device = torch.device("cuda", index)
    with torch.cuda.device(index), cuda.gpus[index]:
        chunks_d, n_chunks = _chunks_on(numels, device)
        if n_chunks == 0:  # only empty tensors
            return
        # One pinned upload for both per-step tables: int64 columns 0-3 hold the
        # addresses, columns 4-7 reinterpreted as float32 hold the 7 scalars.
        meta = torch.empty((ptrs.shape[0], 8), dtype=torch.int64, pin_memory=True)
        meta_np = meta.numpy()
        meta_np[:, :N_PTRS] = ptrs
        meta_np.view(np.float32)[:, 8:8 + N_SCALARS] = scalars
        # Ordered before the kernel on the current stream; torch's caching host
        # allocator keeps the pinned block alive until the copy has run.
        meta_dev = meta.to(device, non_blocking=True)
        ptrs_d = cuda.as_cuda_array(meta_dev, sync=False)
        scalars_d = cuda.as_cuda_array(meta_dev.view(torch.float32)[:, 8:], sync=False)
        if index not in _sm_counts:
            _sm_counts[index] = torch.cuda.get_device_properties(index).multi_processor_count
        blocks = min(n_chunks, 32 * _sm_counts[index])
        stream = cuda.external_stream(torch.cuda.current_stream(index).cuda_stream)
        launch(ptrs_d, scalars_d, chunks_d, blocks, THREADS, stream)


def _chunks_on(numels: tuple[int, ...], device):
    """The chunk table on ``device`` (uploaded once per model), and its length."""
    import torch

    key = (numels, device.index)
    if key not in _device_chunks:
        table = torch.from_numpy(chunk_table(numels, CUDA_CHUNK).copy())
        dev = table.pin_memory().to(device, non_blocking=True)
        _device_chunks[key] = (dev, cuda.as_cuda_array(dev, sync=False))
    dev, arr = _device_chunks[key]
    return arr, dev.shape[0]
