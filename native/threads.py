"""One place that sizes numba's and torch's thread pools, and makes them one pool.

numba (its parallel=True kernels) and torch (intra-op parallelism) each keep a pool of
worker threads. Left alone, both size themselves to every core, and on a small machine
the two pools fight for the same cores: a numba kernel that runs right after a matmul
shares the cores with torch's OpenMP workers, which spin for a while after each parallel
region before they sleep. slimtrack sets both pools to the same count (by default the
cores this process may use, divided by the number of local processes under torchrun)
once, before training starts, and where it can it makes them the same threads:

- torch's CPU wheels run on GNU OpenMP (``libgomp``), loaded into the process's global
  symbol scope. numba's "omp" threading layer, launched after that, binds its
  ``GOMP_parallel`` calls to that same runtime (global scope comes first), so a numba
  kernel runs on torch's own team of threads: nothing spins against it, which makes the
  numba kernels inside a training step faster (docs/benchmarks.md).
- Where that cannot be checked (no GNU OpenMP in the global scope, or more than one copy
  loaded, e.g. a torch built on Intel OpenMP), numba keeps its own "workqueue" pool, the
  layer ``slimtrack.native`` sets on import (``start_on_numbas_own_pool``): never a second
  OpenMP runtime, whose idle threads would spin against torch's (``OMP_WAIT_POLICY=PASSIVE``
  against that costs torch wake-ups on every parallel region).

A ``NUMBA_THREADING_LAYER`` the user set is always kept. It is read when a choice is made,
not at import: slimtrack never writes it, and a child process (a benchmark's
`slimtrack train`, a torchrun worker) makes its own choice instead of inheriting ours.

``cpu_description`` names the CPU these pools run on, for run tags and benchmark tables.
"""

from __future__ import annotations

import ctypes
import os


def available_cores() -> int:
    """Cores this process may run on (respects taskset / cgroup affinity)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def cpu_description() -> str:
    """The CPU as throughput comparisons need it: its name, its microarchitecture as LLVM
    (numba's compiler) sees it, and the level of torch's CPU kernels, e.g.
    "AMD EPYC (znver4; torch AVX512)". A VM's model name can hide the host, so the
    microarchitecture and torch's kernel level are named too."""
    import platform

    import llvmlite.binding
    import torch

    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        name = platform.processor() or platform.machine()
    return f"{name} ({llvmlite.binding.get_host_cpu_name()}; torch {torch.backends.cpu.get_cpu_capability()})"


def _loaded_libraries(fragment: str) -> set[str]:
    """Paths of the shared libraries mapped into this process whose file name has ``fragment``."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if line.rstrip().endswith(".so") or ".so." in line}
    except OSError:  # not Linux
        return set()
    return {path for path in paths if fragment in os.path.basename(path)}


def torch_openmp_is_shareable() -> bool:
    """Whether numba's "omp" layer, launched now, would run on torch's own OpenMP threads.

    True when exactly one GNU OpenMP runtime is loaded (torch's: importing torch loads it)
    and ``GOMP_parallel`` resolves from the global scope, which is where numba's pool
    looks first.
    """
    import torch

    if "OpenMP" not in torch.__config__.parallel_info() or len(_loaded_libraries("libgomp")) != 1:
        return False
    try:
        ctypes.CDLL(None).GOMP_parallel  # dlsym(RTLD_DEFAULT): the global scope only
    except AttributeError:
        return False
    return True


def user_threading_layer() -> str:
    """The ``NUMBA_THREADING_LAYER`` the user set ("" if none), read now."""
    return os.environ.get("NUMBA_THREADING_LAYER", "")


def _layer_is_ours_to_choose() -> bool:
    from numba.np.ufunc import parallel

    return not parallel._is_initialized and not user_threading_layer()


def start_on_numbas_own_pool() -> None:
    """Until configure_threads() chooses, kernels run on numba's "workqueue" pool (numba's
    own default would take the first of tbb / omp / workqueue that loads)."""
    import numba

    if _layer_is_ours_to_choose():
        numba.config.THREADING_LAYER = "workqueue"


def _layer_to_pick() -> str:
    return "omp" if torch_openmp_is_shareable() else "workqueue"


def choose_threading_layer() -> str:
    """Set numba's threading layer before its pool starts; returns the layer in use."""
    import numba

    if _layer_is_ours_to_choose():
        numba.config.THREADING_LAYER = _layer_to_pick()
    return str(numba.config.THREADING_LAYER)


def threading_layer_note() -> str:
    """numba's layer for a benchmark table: the one running, else the one slimtrack would pick."""
    import numba
    from numba.np.ufunc import parallel

    from_user = user_threading_layer()
    if parallel._is_initialized:
        layer = numba.threading_layer()
    else:
        layer = from_user or _layer_to_pick()
    return f"{layer}, on torch's threads" if layer == "omp" and not from_user else layer


def configure_threads(num_threads: int | None = None) -> int:
    """Size torch's and numba's pools to ``num_threads`` (default: this process's share),
    sharing torch's OpenMP threads where possible (choose_threading_layer).

    Returns the count used. Safe to call more than once.
    """
    import numba
    import torch

    choose_threading_layer()

    if num_threads is None:
        local_procs = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        num_threads = max(1, available_cores() // max(1, local_procs))
    num_threads = max(1, min(num_threads, numba.config.NUMBA_NUM_THREADS))
    torch.set_num_threads(num_threads)
    numba.set_num_threads(num_threads)
    return num_threads
