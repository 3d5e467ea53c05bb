"""Causal softmax over attention scores, and its backward pass: the CPU kernels (numba).

attention.py does the four matrix products of attention with torch's batched matmul
(oneDNN/MKL, blocked kernels no numba loop matches) and hands the part between them to
these kernels, one pass over each score row:

    forward:   P[i, j] = exp(scale * (S[i, j] - m_i)) / sum_j' exp(...)   for j <= i, else 0
    backward:  dS[i, j] = scale * P[i, j] * (dP[i, j] - sum_j' P[i, j'] dP[i, j'])

where S = q k^T (unscaled) and m_i is row i's max over its causal prefix. Only the
prefix j <= i is read; the rest of the row is written as 0 (the masked half), so the
matmuls after the kernel need no mask. exp is ``float32_math.exp_nonpos``, which LLVM
vectorises (numba's ``np.exp`` is a scalar libm call).
"""

from __future__ import annotations

import numba
import numpy as np

from .float32_math import FM_POLY, FM_SUM, exp_nonpos, row_max

_F = np.float32


@numba.njit(fastmath=FM_SUM, cache=True)
def _exp_and_sum(row, m, scale):
    # row: [n] float32 becomes exp(scale * (row - m)); returns their sum (>= 1: the max's exp is 1).
    total = _F(0.0)
    for j in range(row.shape[0]):
        e = exp_nonpos((row[j] - m) * scale)
        row[j] = e
        total += e
    return total


@numba.njit(fastmath=FM_POLY, cache=True)
def _multiply(row, c):
    # row: [n] float32, scaled by c in place.
    for j in range(row.shape[0]):
        row[j] *= c


@numba.njit(parallel=True, cache=True)
def causal_softmax_forward(scores, scale):
    """scores: [R, T, T] float32, C-contiguous (R = batch * heads), q k^T unscaled.

    Overwritten with the causal softmax of scale * scores: row i holds the attention
    weights of query i over keys 0..i, then zeros.
    """
    R, T, _ = scores.shape
    for r in numba.prange(R):  # one (batch, head) per task: a [T, T] block stays in L2
        for i in range(T):
            row = scores[r, i]
            prefix = row[:i + 1]
            m = row_max(prefix)
            _multiply(prefix, _F(1.0) / _exp_and_sum(prefix, m, scale))
            row[i + 1:] = _F(0.0)


@numba.njit(fastmath=FM_SUM, cache=True)
def _dot(a, b):
    # a, b: [n] float32; returns their dot product (float32).
    total = _F(0.0)
    for j in range(a.shape[0]):
        total += a[j] * b[j]
    return total


@numba.njit(fastmath=FM_POLY, cache=True)
def _softmax_grad(p, dp, dot, scale):
    # p, dp: [n] float32 (a row's causal prefix); dp <- scale * p * (dp - dot), elementwise.
    for j in range(p.shape[0]):
        dp[j] = scale * p[j] * (dp[j] - dot)


@numba.njit(parallel=True, cache=True)
def causal_softmax_backward(probs, grad, scale):
    """probs: [R, T, T] float32, the forward's output; grad: [R, T, T] float32, dL/dP.

    ``grad`` is overwritten with dL/dS (S the unscaled scores): the softmax's backward
    pass times ``scale``, zero above the diagonal. Both C-contiguous.
    """
    R, T, _ = probs.shape
    for r in numba.prange(R):
        for i in range(T):
            p = probs[r, i, :i + 1]
            g = grad[r, i]
            _softmax_grad(p, g[:i + 1], _dot(p, g[:i + 1]), scale)
            g[i + 1:] = _F(0.0)
