"""float32 math that LLVM vectorises, shared by the CPU kernels.

numba's ``np.exp`` / ``math.tanh`` call scalar libm functions (numba's PyPI build has
no SVML), which LLVM cannot vectorise, so a loop over them runs one element at a time;
the plain-arithmetic versions below vectorise, several times faster per element
(docs/benchmarks.md). Everything is float32: numba types Python floats as float64, so
every constant is wrapped in ``np.float32``.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

_F = np.float32
_I32 = np.int32

# Only contraction (fused multiply-add): "reassoc" would fold exp's rounding trick away.
FM_POLY = {"contract"}
# For sums: may also reassociate (needed to vectorise a reduction; the float32 lanes then
# act like a pairwise sum). Never for max/argmax: see maxnum.
FM_SUM = {"reassoc", "contract"}

# exp(x) is clamped below this (exp(-87) is still a normal float32).
EXP_CUTOFF = _F(-87.0)


@intrinsic
def bits_to_f32(typingctx, bits):
    """Reinterpret an int32 bit pattern as float32 (a bitcast LLVM can vectorise)."""
    if bits != types.int32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.int32), codegen


@intrinsic
def f32_to_bits(typingctx, x):
    """Reinterpret a float32 as its int32 bit pattern."""
    if x != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.int32(types.float32), codegen


@numba.njit(fastmath=FM_POLY, cache=True)
def exp_nonpos(d):
    """exp(d) for float32 d <= 0 (d = x - rowmax); NaN stays NaN.

    Below -87 the input is clamped: the result is then ~1.6e-38 instead of the
    true value (0 after rounding the gradient), which no loss or gradient can see.
    """
    dc = EXP_CUTOFF if d < EXP_CUTOFF else d
    # n = round(d / ln2) by the 1.5 * 2**23 trick: the float addition rounds, and
    # the low mantissa bits of t then hold n. Safe only because this function is
    # compiled without "reassoc" (which would fold (t + C) - C to t).
    t = dc * _F(1.44269504088896341) + _F(12582912.0)
    n = t - _F(12582912.0)
    # r = d - n*ln2 with ln2 split in two (Cody-Waite), |r| <= ln2/2.
    r = dc - n * _F(0.693359375)
    r = r - n * _F(-2.12194440e-4)
    p = _F(1.9875691500e-4)
    p = p * r + _F(1.3981999507e-3)
    p = p * r + _F(8.3334519073e-3)
    p = p * r + _F(4.1665795894e-2)
    p = p * r + _F(1.6666665459e-1)
    p = p * r + _F(5.0000001201e-1)
    y = p * r * r + r + _F(1.0)
    # 2**n from its exponent bits (n in [-126, 0]): low bits of t are n + 0x400000.
    two_n = bits_to_f32(_I32((f32_to_bits(t) + _I32(127)) << _I32(23)))
    return y * two_n


# inline="always" (numba's own inlining): called through an ordinary function, the loop
# around it stays scalar.
@numba.njit(fastmath=FM_POLY, inline="always")
def tanh(u):
    """tanh(u) for float32 u, from exp(-2|u|): absolute error ~1e-7 (NaN stays NaN)."""
    e = exp_nonpos(_F(-2.0) * abs(u))  # in (0, 1]
    t = (_F(1.0) - e) / (_F(1.0) + e)
    return t if u >= _F(0.0) else -t


@intrinsic
def maxnum(typingctx, a, b):
    """IEEE maxNum (llvm.maxnum.f32): exact, no fast-math; NaN operands are skipped.

    Unlike ``a if a > b else b`` LLVM vectorises a maxnum reduction without being
    allowed to assume "no NaNs".
    """
    if a != types.float32 or b != types.float32:
        return None

    def codegen(context, builder, signature, args):
        fnty = ir.FunctionType(ir.FloatType(), [ir.FloatType(), ir.FloatType()])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.maxnum.f32")
        return builder.call(fn, args)

    return types.float32(types.float32, types.float32), codegen


@numba.njit(cache=True)
def row_max(row):
    """row: [n] float32, n >= 1. Max over the non-NaN entries (NaN if all are NaN)."""
    m = row[0]
    for i in range(1, row.shape[0]):
        m = maxnum(m, row[i])
    return m
