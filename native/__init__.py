"""slimtrack.native: numba kernels for the hot parts of a training step.

Each kernel exists twice, side by side: a CPU version (``@numba.njit``) and a
CUDA version (``@cuda.jit``), with a plain torch reference beside them.
"""
