"""Batcher: when the waiting operations are delivered, and as how many store calls.

Pure (the caller passes the clock): the tracker's worker thread adds operations as they
arrive and asks :meth:`Batcher.wait` how long it may still wait for more. An operation
that arrives ``linger`` seconds or more after the last delivery goes out at once; one
that arrives sooner waits until ``linger`` seconds after that delivery, and everything
that arrived meanwhile goes with it. Consecutive metric operations merge into one
(``operations.merge_metrics``): into a sqlite store one ``log_batch`` of many records
costs far less CPU than one call per record, and that CPU is taken from the training
step's cores. ``flush`` ends the current wait.
"""

from __future__ import annotations

import math

from slimtrack.tracking.operations import Operation, merge_metrics


class Batcher:
    def __init__(self, linger: float) -> None:
        self.linger = linger  # seconds an operation may wait for others after a delivery
        self._ops: list[Operation] = []
        self._last_delivery = -math.inf
        self._flushing = False

    def __len__(self) -> int:
        return len(self._ops)

    def add(self, op: Operation) -> None:
        self._ops.append(op)

    def flush(self) -> None:
        """Deliver what waits now at the next :meth:`take`, without lingering."""
        self._flushing = bool(self._ops)

    def wait(self, now: float) -> float | None:
        """Seconds until the waiting operations are due: 0 = now, None = nothing waits."""
        if not self._ops:
            return None
        if self._flushing:
            return 0.0
        return max(0.0, self._last_delivery + self.linger - now)

    def take(self, now: float) -> tuple[list[Operation], int]:
        """The due operations, merged, and how many operations they were added as."""
        taken, self._ops = self._ops, []
        self._flushing = False
        if taken:
            self._last_delivery = now
        return merge_metrics(taken), len(taken)
