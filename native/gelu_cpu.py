"""GELU (tanh approximation) and its derivative in one pass: the CPU kernel (numba).

    y = x * s,  s = (1 + tanh(u)) / 2,  u = sqrt(2/pi) * (x + 0.044715 x^3)
    dy/dx = s + x * (1 - tanh(u)^2) / 2 * sqrt(2/pi) * (1 + 3 * 0.044715 x^2)

torch evaluates tanh twice per element (in gelu and again in gelu_backward) and reads
x twice; this kernel evaluates it once, writes y and dy/dx, and the backward pass is a
single multiply ``grad * dy/dx``. tanh is ``float32_math.tanh``, which LLVM vectorises
(numba's ``math.tanh`` is a scalar libm call; see float32_math.py).
"""

from __future__ import annotations

import math

import numba
import numpy as np

from .float32_math import FM_POLY, tanh

_F = np.float32
_SQRT_2_OVER_PI = _F(math.sqrt(2.0 / math.pi))
_CUBIC = _F(0.044715)
_CUBIC_DERIVATIVE = _F(3.0 * 0.044715)


# Rows of the bias gradient summed by one task: a fixed split, so the sum's rounding does
# not depend on the thread count.
BIAS_GRAD_PARTS = 16


@numba.njit(fastmath=FM_POLY, inline="always")
def _gelu_and_derivative(v):
    """(gelu(v), gelu'(v)) for float32 v: one tanh for both."""
    t = tanh(_SQRT_2_OVER_PI * (v + _CUBIC * v * v * v))
    s = _F(0.5) * (_F(1.0) + t)
    return v * s, s + _F(0.5) * v * (_F(1.0) - t * t) * _SQRT_2_OVER_PI * (_F(1.0) + _CUBIC_DERIVATIVE * v * v)


@numba.njit(parallel=True, fastmath=FM_POLY, cache=True)
def gelu_forward(x, y, dydx):
    """x, y, dydx: [n] float32, contiguous. Writes y = gelu(x) and dydx = gelu'(x)."""
    for i in numba.prange(x.shape[0]):  # numba gives each thread one contiguous range
        y[i], dydx[i] = _gelu_and_derivative(x[i])


@numba.njit(parallel=True, fastmath=FM_POLY, cache=True)
def bias_gelu_forward(h, bias, dydx):
    """h: [N, F] float32, overwritten with gelu(h + bias); bias: [F]; dydx: [N, F], written
    with gelu'(h + bias). All C-contiguous."""
    N, F = h.shape
    for i in numba.prange(N):
        for j in range(F):
            h[i, j], dydx[i, j] = _gelu_and_derivative(h[i, j] + bias[j])


@numba.njit(parallel=True, fastmath=FM_POLY, cache=True)
def bias_gelu_backward(grad, dydx, grad_h, bias_grad_parts):
    """grad, dydx: [N, F] float32 in; grad_h: [N, F] out, grad * dydx; bias_grad_parts:
    [BIAS_GRAD_PARTS, F] out, part p = the column sums of grad_h over part p's rows (the
    bias gradient is their sum). All C-contiguous."""
    N, F = grad.shape
    parts = bias_grad_parts.shape[0]
    rows = (N + parts - 1) // parts
    for p in numba.prange(parts):
        acc = bias_grad_parts[p]
        acc[:] = _F(0.0)
        for i in range(p * rows, min(N, (p + 1) * rows)):
            for j in range(F):  # independent lanes: vectorises without reassociation
                g = grad[i, j] * dydx[i, j]
                grad_h[i, j] = g
                acc[j] += g
