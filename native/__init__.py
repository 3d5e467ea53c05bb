"""slimtrack.native: numba kernels for the hot parts of a training step.

Each kernel exists twice, side by side: a CPU version (``@numba.njit``) and a
CUDA version (``@cuda.jit``), with a plain torch reference beside them:

- ``fused_cross_entropy(logits, targets)``: loss, accuracy and per-row loss from one
  pass over the logits; the gradient is written into the logits buffer in place.
- ``FusedAdamW``: a ``torch.optim.Optimizer`` whose step is one pass per parameter.
- ``fused_gelu(x)``: GELU (tanh) whose forward pass also writes its derivative, so the
  backward pass is one multiply. CPU only: on CUDA it runs torch's GELU, already one
  fused kernel, which a numba launch could only slow down. ``fused_bias_gelu(h, b)``
  also adds a bias (the MLP's fc: a bias-free matmul, then bias + GELU in one pass).
- ``causal_attention(qkv, n_head)``: causal self-attention whose softmax (and its
  backward pass) is a numba kernel between torch's batched matmuls. CPU float32 and
  short sequences only; elsewhere it runs torch's SDPA (flash attention).
- ``onednn_linear(x, w, b)``: F.linear whose forward and input-gradient products run on oneDNN
  (torch's bundled library, not numba), which on some CPUs beats MKL's fp32 products for
  these shapes (docs/benchmarks.md); elsewhere F.linear.

CUDA modules are imported lazily: importing this package never needs a GPU.
"""

from .adamw import FusedAdamW
from .attention import causal_attention
from .cross_entropy import fused_cross_entropy
from .gelu import fused_bias_gelu, fused_gelu
from .linear import onednn_linear
from .threads import start_on_numbas_own_pool

start_on_numbas_own_pool()  # before any kernel runs; configure_threads() may move it onto torch's threads

__all__ = ["FusedAdamW", "causal_attention", "fused_bias_gelu", "fused_cross_entropy", "fused_gelu", "onednn_linear", "warmup"]


def warmup() -> None:
    """Compile every CPU kernel into numba's on-disk cache (``slimtrack warmup``)."""
    from . import adamw, attention, cross_entropy, gelu

    cross_entropy.warmup()
    adamw.warmup()
    gelu.warmup()
    attention.warmup()
