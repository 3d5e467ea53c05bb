"""One place that sizes numba's and torch's thread pools.

numba (its parallel=True kernels) and torch (intra-op parallelism) each keep a
pool of worker threads. Left alone, both size themselves to every core, and on a
small machine the two pools then fight for the same cores: each kernel call
spins up threads that preempt the other library's threads. slimtrack sets both
pools to the same count (by default the cores this process may use, divided by
the number of local processes under torchrun) once, before training starts.

numba's pool is its own "workqueue" layer (``slimtrack/__init__.py`` sets
``NUMBA_THREADING_LAYER`` before numba loads), not a second OpenMP runtime: two OpenMP
pools with spinning idle threads starve each other, and making all OpenMP threads sleep
when idle instead (``OMP_WAIT_POLICY=PASSIVE``) costs torch ~10 % of a step in wake-ups.
"""

from __future__ import annotations

import os


def available_cores() -> int:
    """Cores this process may run on (respects taskset / cgroup affinity)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def configure_threads(num_threads: int | None = None) -> int:
    """Size torch's and numba's pools to ``num_threads`` (default: this process's share).

    Returns the count used. Safe to call more than once.
    """
    import numba
    import torch

    if num_threads is None:
        local_procs = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        num_threads = max(1, available_cores() // max(1, local_procs))
    num_threads = max(1, min(num_threads, numba.config.NUMBA_NUM_THREADS))
    torch.set_num_threads(num_threads)
    numba.set_num_threads(num_threads)
    return num_threads
