"""slimtrack.native: numba kernels for the hot parts of a training step.

Each kernel exists twice, side by side: a CPU version (``@numba.njit``) and a
CUDA version (``@cuda.jit``), with a plain torch reference beside them:

- ``fused_cross_entropy(logits, targets)``: loss, accuracy and per-row loss from one
  pass over the logits; the gradient is written into the logits buffer in place.
- ``FusedAdamW``: a ``torch.optim.Optimizer`` whose step is one pass per parameter.

CUDA modules are imported lazily: importing this package never needs a GPU.
"""

from .adamw import FusedAdamW
from .cross_entropy import fused_cross_entropy

__all__ = ["FusedAdamW", "fused_cross_entropy", "warmup"]


def warmup() -> None:
    """Compile every CPU kernel into numba's on-disk cache (``slimtrack warmup``)."""
    from . import adamw, cross_entropy

    cross_entropy.warmup()
    adamw.warmup()
