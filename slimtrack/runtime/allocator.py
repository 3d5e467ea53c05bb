"""Keep freed memory in the process: the CPU step's buffers are reused, not faulted in again.

A training step allocates the same large tensors every time (activations, gradients,
the GELU derivative) and frees them at the end. glibc's malloc serves such sizes with
mmap and gives them back with munmap (or trims the heap), so every step touches fresh
pages, and each first touch is a page fault. With a high mmap threshold and a high trim
threshold, the step's buffers come from the heap and stay there after ``free``, so the
steps after the first reuse pages that are already mapped. The cost is that the process
keeps its peak footprint, which a training loop reaches on every step anyway.

Linux with glibc only; elsewhere, or with ``runtime.malloc_tuning`` off
(``--no-malloc-tuning``), a no-op. Also settable without slimtrack:
``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_``.
"""

from __future__ import annotations

import ctypes
import sys

# mallopt parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# mallopt takes a C int: both values stay below 2**31.
MMAP_THRESHOLD = 1 << 30  # blocks below 1 GiB come from the heap (a 50k-vocab logits tensor is ~400 MB)
TRIM_THRESHOLD = (1 << 31) - 1  # the heap's free top goes back to the OS only past 2 GiB


def keep_freed_memory(enabled: bool = True) -> bool:
    """Tune glibc's malloc as above when ``enabled``. Returns whether it was applied."""
    if not enabled or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl or another libc: nothing to tune
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
