"""Fused softmax cross-entropy + accuracy: the CPU kernel (numba, parallel over rows).

One call does, for every row of ``logits: [N, V]``: max, argmax, log-sum-exp, the
row's loss, the correct flag, and writes ``(softmax - onehot) * scale`` over the row
in place. Per row it makes three passes over data that is already in cache:

1. max (IEEE maxNum, vectorised without fast-math, so comparisons keep their
   IEEE meaning),
2. ``e = exp(x - max)`` stored into the row, the sum of ``e``, and the first index
   where ``x == max`` (the argmax, first maximum wins as ``torch.argmax``),
3. ``row *= scale / sum`` and ``row[target] -= scale``.

``exp`` is computed exactly once per element by ``float32_math.exp_nonpos``, a float32
polynomial (Cephes ``expf``, max relative error ~1e-7) written in plain arithmetic
so that LLVM vectorises it; numba's ``np.exp`` calls scalar libm ``expf``, which
would be the kernel's bottleneck (see float32_math.py).

Everything in the inner loops is float32: numba types ``0.0`` and Python floats as
float64, so every constant is wrapped in ``np.float32``.
"""

from __future__ import annotations

import numba
import numpy as np

from .float32_math import FM_SUM, exp_nonpos, row_max

_F = np.float32
_I32 = np.int32

# Rows handled by one prange task: enough work per task that numba's scheduling
# overhead stays small for small V, while a task's rows are still processed one at
# a time so that each row stays in L1/L2 across its three passes.
ROWS_PER_TASK = 16
# Fast-math flags: max/argmax comparisons get none (nnan/ninf would let LLVM assume there
# are no NaN/inf, changing the comparisons); the sums get FM_SUM.


@numba.njit(fastmath=FM_SUM, cache=True)
def _row_exp_sum_argmax(row, m, store):
    # row: [V] float32. Returns (sum of exp(x - m), first index with x == m).
    # With store, row[i] becomes exp(x - m): the only exp this element gets.
    # The argmax is an int32 min-reduction so it vectorises 8-wide with the sum.
    V = row.shape[0]
    not_found = _I32(V)
    first = not_found
    s = _F(0.0)
    if store:
        for i in range(V):
            x = row[i]
            e = exp_nonpos(x - m)
            row[i] = e
            s += e
            first = min(first, _I32(i) if x == m else not_found)
    else:
        for i in range(V):
            x = row[i]
            s += exp_nonpos(x - m)
            first = min(first, _I32(i) if x == m else not_found)
    return s, first


@numba.njit(fastmath={"contract"}, cache=True)
def _row_finish_grad(row, c):
    # row: [V] float32 holding exp(x - m); becomes softmax * scale (c = scale / sum).
    for i in range(row.shape[0]):
        row[i] *= c


@numba.njit(parallel=True, cache=True)
def cross_entropy_fwd_bwd(row_loss, correct, logits, targets, ignore_index, write_grad):
    """Fused cross-entropy over rows; outputs first.

    row_loss: [N] float32 out, 0 for ignored rows
    correct:  [N] float32 out, 1.0 where argmax == target (0 for ignored rows)
    logits:   [N, V] float32, C-contiguous; with write_grad it is OVERWRITTEN with
              (softmax - onehot) / n_valid (zero rows where the target is ignored)
    targets:  [N] int64, each in [0, V) or == ignore_index (checked by the caller)
    Returns n_valid, the number of rows whose target is not ignore_index.
    """
    N, V = logits.shape
    n_valid = 0
    for i in range(N):
        if targets[i] != ignore_index:
            n_valid += 1
    scale = _F(1.0) / _F(max(n_valid, 1))
    n_tasks = (N + ROWS_PER_TASK - 1) // ROWS_PER_TASK
    for task in numba.prange(n_tasks):
        for i in range(task * ROWS_PER_TASK, min(N, (task + 1) * ROWS_PER_TASK)):
            row = logits[i]
            t = targets[i]
            if t == ignore_index:
                row_loss[i] = _F(0.0)
                correct[i] = _F(0.0)
                if write_grad:
                    row[:] = _F(0.0)
                continue
            m = row_max(row)
            x_t = row[t]  # read before pass 2 overwrites the row
            s, first = _row_exp_sum_argmax(row, m, write_grad)
            row_loss[i] = np.log(s) + (m - x_t)
            correct[i] = _F(1.0) if first == t else _F(0.0)
            if write_grad:
                _row_finish_grad(row, scale / s)
                row[t] -= scale
    return n_valid
