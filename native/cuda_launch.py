"""Launch numba CUDA kernels on torch tensors with little Python in the way.

numba's dispatcher does a lot of host work per launch (argument typing, a lookup of the
compiled overload), and wrapping each torch tensor as a DeviceNDArray
(``from_cuda_array_interface``: context lookups, shape and stride checks) adds more per
tensor. For the small kernels here (the fused cross-entropy launches two a step) that
host time, not the GPU, sets their speed (docs/benchmarks.md).

``CudaKernel`` compiles its kernel once, for one explicit signature, and launches the
loaded function through ``cuda.core`` (what numba itself calls) with the arguments
flattened straight from the tensors into numba's array ABI:
``meminfo, parent, nitems, itemsize, data, shape..., strides in bytes...``.

That ABI and the ``_codelibrary`` attribute are numba-cuda internals, so the fast path
checks them once and otherwise falls back to the dispatcher, as it does under the
simulator (``NUMBA_ENABLE_CUDASIM=1``) and when the run's ``runtime.cuda_fast_launch`` is
off (``--no-cuda-fast-launch``; the training session calls ``set_fast_launch`` once).
Both paths take torch tensors, numba device arrays and Python scalars alike.
"""

from __future__ import annotations

import ctypes
from typing import Any

import torch
from numba import config, cuda
from numba import types as nbt

_TYPESTR = {torch.float32: "<f4", torch.float16: "<f2", torch.int16: "<i2", torch.int64: "<i8"}
_CTYPES = {nbt.int64: ctypes.c_int64, nbt.int32: ctypes.c_int32, nbt.float32: ctypes.c_float,
           nbt.float64: ctypes.c_double}
_STREAMS: dict[int, Any] = {}  # torch stream handle -> numba Stream
_CORE_STREAMS: dict[int, Any] = {}  # stream handle -> cuda.core Stream

# Whether launches may skip numba's dispatcher. Read per launch, so a benchmark can
# compare both paths in one process; set from the config by set_fast_launch.
FAST_LAUNCH = True


def set_fast_launch(enabled: bool) -> None:
    """Launch through cuda.core (True) or always through numba's dispatcher (False)."""
    global FAST_LAUNCH
    FAST_LAUNCH = enabled


def device_array(t: torch.Tensor):
    """A numba device array over a CUDA tensor, strided or not (no copy, no sync)."""
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)  # numba has no bf16: the kernels convert the bits
    strides = None if t.is_contiguous() else tuple(s * t.element_size() for s in t.stride())
    desc = {"shape": tuple(t.shape), "strides": strides, "data": (t.data_ptr(), False),
            "typestr": _TYPESTR[t.dtype], "version": 3}
    return cuda.from_cuda_array_interface(desc, owner=t, sync=False)


def torch_stream(device: torch.device):
    """numba's wrapper of torch's current stream on ``device``, made once per stream."""
    handle = torch.cuda.current_stream(device).cuda_stream
    stream = _STREAMS.get(handle)
    if stream is None:
        stream = _STREAMS[handle] = cuda.external_stream(handle)
    return stream


def _array_abi(t: torch.Tensor) -> list:
    """numba's kernel-argument layout of an array (see numba's Dispatcher._prepare_args)."""
    size = t.element_size()
    return [0, 0, t.numel(), size, t.data_ptr(), *t.shape, *(s * size for s in t.stride())]


def _core_stream(stream: Any):
    """cuda.core's view of a numba stream (or 0), made once per handle: numba makes a new
    one on every launch."""
    handle = 0 if isinstance(stream, int) else int(stream.handle or 0)
    core = _CORE_STREAMS.get(handle)
    if core is None:
        from cuda.core import Stream

        core = _CORE_STREAMS[handle] = Stream.from_handle(handle)
    return core


class CudaKernel:
    """A ``cuda.jit`` kernel for one signature: ``kernel(grid, block, stream, *args)``."""

    def __init__(self, dispatcher: Any, argtypes: tuple) -> None:
        self.dispatcher = dispatcher
        self.argtypes = argtypes
        self._functions: dict[int, Any] = {}  # device id -> cuda.core Kernel
        self._configs: dict[tuple[int, int], Any] = {}
        self._fast = not config.ENABLE_CUDASIM and all(
            isinstance(t, nbt.Array) or t in _CTYPES or t == nbt.boolean for t in argtypes)

    def __call__(self, grid: int, block: int, stream: Any, *args: Any) -> None:
        if FAST_LAUNCH and self._fast and all(not isinstance(a, torch.Tensor) or a.is_cuda
                                              for a in args):
            function = self._function()
            if function is not None:
                self._launch_fast(function, grid, block, stream, args)
                return
        args = tuple(device_array(a) if isinstance(a, torch.Tensor) else a for a in args)
        self.dispatcher[grid, block, stream](*args)

    @property
    def fast(self) -> bool:
        """Whether launches on this device skip numba's dispatcher (call after one launch)."""
        return FAST_LAUNCH and self._fast and bool(self._functions)

    def _function(self):
        """The loaded kernel on the current device, compiled on first use; None if unusable."""
        device_id = cuda.get_current_device().id
        function = self._functions.get(device_id)
        if function is None and self._fast:
            try:
                from cuda.core import LaunchConfig, launch  # numba-cuda's own launcher

                self._launch, self._launch_config_type = launch, LaunchConfig
                compiled = self.dispatcher.compile(self.argtypes)
                function = self._functions[device_id] = compiled._codelibrary.get_cufunc().kernel
            except (ImportError, AttributeError):  # another numba-cuda: use its dispatcher
                self._fast = False
        return function

    def _launch_fast(self, function: Any, grid: int, block: int, stream: Any,
                     args: tuple) -> None:
        launch_config = self._configs.get((grid, block))
        if launch_config is None:
            launch_config = self._configs[(grid, block)] = self._launch_config_type(grid=grid, block=block)
        flat: list = []
        for ty, value in zip(self.argtypes, args):
            if isinstance(ty, nbt.Array):
                if not isinstance(value, torch.Tensor):
                    value = torch.as_tensor(value, device="cuda")  # a numba device array
                if ty.layout == "C" and not value.is_contiguous():
                    raise ValueError(f"{self.dispatcher.__name__}: a C-contiguous argument "
                                     f"got strides {value.stride()}")
                flat += _array_abi(value)
            elif ty == nbt.boolean:
                flat.append(bool(value))
            else:
                flat.append(_CTYPES[ty](value))
        self._launch(_core_stream(stream), launch_config, function, *flat)
