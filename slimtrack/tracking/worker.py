"""DeliveryWorker: the one thread that takes queued operations to the delivery.

The training thread only puts operations on a queue (``put`` returns at once). The worker
moves them into the batcher, hands what is due to the delivery, and, while the delivery
is offline, tries a replay of the spool every ``replay_interval`` seconds. It runs at the
background priority, so a delivery waits a little rather than preempt the step.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any, Callable

from slimtrack.runtime.priority import lower_this_thread_priority
from slimtrack.tracking.batching import Batcher
from slimtrack.tracking.delivery import Delivery
from slimtrack.tracking.operations import Operation

log = logging.getLogger(__name__)

_FLUSH, _STOP = object(), object()  # queue markers: deliver what lingers now; stop after it


class DeliveryWorker:
    def __init__(self, delivery: Delivery, *, linger: float, replay_interval: float, background_nice: int,
                 before_first: Callable[[], None] = lambda: None) -> None:
        self.delivery = delivery
        self.replay_interval = replay_interval
        self.background_nice = background_nice
        self.before_first = before_first  # run on the worker before any delivery (the MLflow process's start)
        self.cpu_seconds = 0.0  # the worker thread's CPU time so far
        self._queue: queue.Queue[Any] = queue.Queue()
        self._batcher = Batcher(linger)
        self._pending = 0  # operations put and not yet delivered or spooled
        self._pending_lock = threading.Condition()
        self._ready = threading.Event()
        self._last_replay = 0.0
        self._thread = threading.Thread(target=self._work, name="slimtrack-mlflow", daemon=True)
        self._thread.start()

    def put(self, op: Operation) -> None:
        with self._pending_lock:
            self._pending += 1
        self._queue.put(op)

    def wait_ready(self, timeout: float) -> bool:
        return self._ready.wait(timeout)

    def flush(self, timeout: float) -> bool:
        """Wait until everything put so far is delivered or spooled; False on timeout."""
        deadline = time.monotonic() + timeout
        self._queue.put(_FLUSH)
        with self._pending_lock:
            while self._pending > 0:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._pending_lock.wait(min(remaining, 0.5))
        return True

    def stop(self, timeout: float = 60.0) -> None:
        """Deliver what waits, then end the thread."""
        self._queue.put(_STOP)
        self._thread.join(timeout)

    # ---- on the worker thread ------------------------------------------------------------------
    def _work(self) -> None:
        lower_this_thread_priority(self.background_nice)
        try:
            self.before_first()
        except Exception as exc:  # noqa: BLE001 — the first delivery meets it again, with retries
            log.warning("mlflow: the MLflow process is not ready: %s", exc)
        self._ready.set()
        stop = False
        while not stop:
            stop = self._take_from_queue(self._next_wait())
            now = time.monotonic()
            if self.delivery.offline and now - self._last_replay >= self.replay_interval:
                self._last_replay = now
                self.delivery.replay()
            if stop or self._batcher.wait(now) == 0:
                ops, count = self._batcher.take(now)
                self.delivery.send(ops)
                self.cpu_seconds = time.thread_time()
                self._done(count)

    def _next_wait(self) -> float | None:
        now = time.monotonic()
        waits = [self._batcher.wait(now)]
        if self.delivery.offline:
            waits.append(max(0.0, self._last_replay + self.replay_interval - now))
        known = [w for w in waits if w is not None]
        return min(known) if known else None

    def _take_from_queue(self, timeout: float | None) -> bool:
        """Move what the queue holds into the batcher, waiting up to ``timeout`` for the first
        item; True once the stop marker came."""
        try:
            item = self._queue.get(timeout=timeout) if timeout is None or timeout > 0 else self._queue.get_nowait()
        except queue.Empty:
            return False
        while True:
            if item is _STOP:
                return True
            if item is _FLUSH:
                self._batcher.flush()
            else:
                self._batcher.add(item)
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return False

    def _done(self, count: int) -> None:
        if count:
            with self._pending_lock:
                self._pending -= count
                self._pending_lock.notify_all()
