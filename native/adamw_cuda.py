"""Fused AdamW on CUDA: one numba kernel launch for all the parameters of a device.

The same multi-tensor tables as the CPU kernel (layout in adamw_cpu.py): per tensor
the four addresses and the seven float32 scalars, and a cached table of work chunks.
Each block takes chunks in a grid-stride loop; its threads stride over the chunk's
elements. The kernel reads and writes torch's memory in place through the addresses
(no copies), on torch's current stream, and nothing here waits for the GPU: the
per-step tables go up through pinned memory with non_blocking copies.

Why pointers and not one launch per tensor: numba's launch path has a fixed host
cost per call (argument boxing, ``as_cuda_array``) of the same order as the memory
traffic of a small model's whole AdamW update, so one launch per tensor of a GPT
(dozens of tensors) would be launch-bound.

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
from numba import types as nbt

from .adamw_cpu import (BETA2, DECAY, EPS, EXP_AVG, EXP_AVG_SQ, GRAD, INV_BC2_SQRT, N_PTRS,
                        N_SCALARS, ONE_MINUS_BETA1, ONE_MINUS_BETA2, PARAM, STEP_SIZE,
                        chunk_table)
from .cuda_launch import CudaKernel, torch_stream

# 8 Ki elements per chunk and 256 threads per block: a 10M-parameter model gives over a
# thousand chunks (10M / 8 Ki), several per SM even on a large GPU.
CUDA_CHUNK = 1 << 13
THREADS = 256
ILP = 4  # elements in flight per thread: 16 independent loads before the first store

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
            base = builder.inttoptr(args[0], _GLOBAL_F32_PTR)
            return builder.load(builder.gep(base, [args[1]]))

        return sig, codegen

    @intrinsic
    def _store_f32(typingctx, addr, index, value):
        """Store float32 ``value`` at ``addr + 4 * index``."""
        sig = types.void(types.int64, types.int64, types.float32)

        def codegen(context, builder, signature, args):
            base = builder.inttoptr(args[0], _GLOBAL_F32_PTR)
            builder.store(args[2], builder.gep(base, [args[1]]))
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
        # Block-stride over the chunk, ILP elements per thread per trip (coalesced). All
        # loads of a trip come before its stores: through raw addresses the compiler
        # must assume a store may alias a later load, so it would not batch them itself.
        p = cuda.local.array(ILP, np.float32)
        g = cuda.local.array(ILP, np.float32)
        m = cuda.local.array(ILP, np.float32)
        v = cuda.local.array(ILP, np.float32)
        for base in range(cuda.threadIdx.x, n, ILP * cuda.blockDim.x):
            for k in range(ILP):
                i = base + k * cuda.blockDim.x
                if i < n:
                    g[k] = _load_f32(grad, i)
                    m[k] = _load_f32(exp_avg, i)
                    v[k] = _load_f32(exp_avg_sq, i)
                    p[k] = _load_f32(param, i)
            for k in range(ILP):
                i = base + k * cuda.blockDim.x
                if i < n:
                    mk = m[k] + one_minus_beta1 * (g[k] - m[k])
                    vk = v[k] * beta2 + one_minus_beta2 * g[k] * g[k]
                    denom = _sqrt_f32(vk) * inv_bc2_sqrt + eps
                    _store_f32(exp_avg, i, mk)
                    _store_f32(exp_avg_sq, i, vk)
                    _store_f32(param, i, p[k] * decay - step_size * (mk / denom))


# (n_tensors, 8) int64, (n_tensors, 7) float32 view of the same rows, (n_chunks, 3) int64
_SIGNATURE = (nbt.Array(nbt.int64, 2, "C"), nbt.Array(nbt.float32, 2, "A"), nbt.Array(nbt.int64, 2, "C"))
_kernel = CudaKernel(adamw_multi_tensor_cuda, _SIGNATURE)


def launch(ptrs, scalars, chunks, blocks: int, threads: int = THREADS, stream=0) -> None:
    """Launch the kernel on torch CUDA tensors or numba device arrays (the simulator test)."""
    _kernel(blocks, threads, stream, ptrs, scalars, chunks)


# A small model has fewer chunks than the occupancy heuristic likes; that is expected.
# (numba wraps the message in terminal colour codes, hence the leading ".*")
warnings.filterwarnings("ignore",
                        message=r".*Grid size .* will likely result in GPU under-utilization")


class _Launcher:
    """Device-side tables for one model on one stream, made once and reused every step.

    The chunk table never changes; the per-step table (addresses and scalars) is
    rewritten in place by a copy on the same stream, so it cannot overtake the
    previous step's kernel.
    """

    def __init__(self, numels: tuple[int, ...], n_tensors: int, device) -> None:
        import torch

        chunks = torch.from_numpy(chunk_table(numels, CUDA_CHUNK).copy())
        self.chunks = chunks.to(device)  # once per model: a blocking copy is fine
        self.n_chunks = chunks.shape[0]
        # int64 columns 0-3: addresses; columns 4-7 read as float32 8-15: the 7 scalars.
        self.meta = torch.empty((n_tensors, 8), dtype=torch.int64, device=device)
        self.scalars = self.meta.view(torch.float32)[:, 8:]  # (n_tensors, 8) f32, strided
        sm_count = torch.cuda.get_device_properties(device).multi_processor_count
        self.blocks = min(self.n_chunks, 32 * sm_count)
        self.stream = torch_stream(device)


_launchers: dict[tuple[int, tuple[int, ...], int], _Launcher] = {}


def adamw_step_cuda(ptrs: np.ndarray, scalars: np.ndarray, numels: tuple[int, ...],
                    device) -> None:
    """Run the fused step on ``device`` over the tensors ``ptrs`` points at (no host sync)."""
    import torch

    index = device.index if device.index is not None else torch.cuda.current_device()
    handle = torch.cuda.current_stream(index).cuda_stream
    key = (index, numels, handle)
    with cuda.gpus[index]:
        launcher = _launchers.get(key)
        if launcher is None:
            if len(_launchers) >= 64:  # e.g. a new stream per step: don't grow forever
                _launchers.clear()
            launcher = _launchers[key] = _Launcher(numels, ptrs.shape[0],
                                                   torch.device("cuda", index))
        if launcher.n_chunks == 0:  # only empty tensors
            return
        host = torch.empty((ptrs.shape[0], 8), dtype=torch.int64, pin_memory=True)
        host_np = host.numpy()
        host_np[:, :N_PTRS] = ptrs
        host_np.view(np.float32)[:, 8:8 + N_SCALARS] = scalars
        # Async from pinned memory on the current stream (torch's caching host
        # allocator keeps the pinned block until the copy has run): no host sync.
        launcher.meta.copy_(host, non_blocking=True)
        launch(launcher.meta, launcher.scalars, launcher.chunks, launcher.blocks, THREADS,
               launcher.stream)
