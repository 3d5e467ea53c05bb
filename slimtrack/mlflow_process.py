"""MLflow's client calls, made in a child process: the tracker's deliveries off our GIL.

A ``log_batch`` of a second's records is ~0.1 s of SQLAlchemy Python in MLflow's client
(~60-125 us per metric point). Made on a thread of the training process, that thread holds
the GIL in 5 ms slices, and the training thread waits for it after each torch op: on an
H200 (a ~10 ms step of kernel launches) tracking slowed every step by ~15 % that way. The
child (``python -m slimtrack.mlflow_client``, see child.py) makes the calls with its own
interpreter and GIL, at the background priority; the training process only pickles them.

The child is started first thing by ``slimtrack train`` (:func:`prestart`), so its MLflow
import runs beside the training process's own imports instead of into the first steps.
``ClientProcess`` forwards any ``Client`` method to it. If the child cannot start, or dies,
calls are made in this process from then on (the call that found it dead raises, so the
tracker's retry decides about it, as for a network error). ``SLIMTRACK_MLFLOW_PROCESS=0``
makes every call in this process. This module imports no MLflow itself.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable

from slimtrack.child import ChildGone, ChildProcess

log = logging.getLogger(__name__)

CHILD_MODULE = "slimtrack.mlflow_client"
_prestarted: ChildProcess | None = None


def enabled() -> bool:
    return os.environ.get("SLIMTRACK_MLFLOW_PROCESS", "1") != "0"


def prestart() -> None:
    """Start the MLflow process now (before torch and MLflow load here); the run's tracker
    takes it over. Nothing happens when it is switched off or cannot start."""
    global _prestarted
    if enabled() and _prestarted is None:
        try:
            _prestarted = ChildProcess(CHILD_MODULE)
        except ChildGone as exc:
            log.warning("MLflow process unavailable (%s)", exc)


class ClientProcess:
    """``Client``'s methods, called in a child process (or here, once that is gone)."""

    def __init__(self, child: ChildProcess | None = None) -> None:
        self._local: Any = None  # a Client in this process, once the child is gone
        self._cpu_at_ready: float | None = None  # the child's CPU once it had opened the store
        if child is None:
            try:
                child = ChildProcess(CHILD_MODULE)
            except ChildGone as exc:
                log.warning("MLflow process unavailable (%s); deliveries go from this process", exc)
        self._child = child

    @property
    def in_process(self) -> bool:
        return self._child is None or not self._child.alive

    def ready(self) -> None:
        """Wait until the child has imported MLflow and opened this process's store (~3 s of
        CPU here, ~8 s on an H200's host, once; left out of ``cpu_seconds``)."""
        import mlflow

        # The child must talk to the same store, however this process was pointed at it.
        self._call("ready", mlflow.get_tracking_uri(), mlflow.get_registry_uri())
        if self._child is not None:
            self._cpu_at_ready = self._child.cpu_seconds()

    def cpu_seconds(self) -> float:
        """The child's CPU time since it was ready: what the deliveries cost it (0 before)."""
        if self._child is None or self._cpu_at_ready is None:
            return 0.0
        return max(0.0, self._child.cpu_seconds() - self._cpu_at_ready)

    def close(self) -> None:
        if self._child is not None:
            self._child.close()

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name.startswith("_"):
            raise AttributeError(name)
        return lambda *args, **kwargs: self._call(name, *args, **kwargs)

    def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        if not self.in_process:
            try:
                return self._child.ask((name, args, kwargs))
            except ChildGone as exc:
                log.warning("MLflow process died (%s); deliveries go from this process from now on", exc)
                raise
        if self._local is None:
            from slimtrack.mlflow_client import Client

            self._local = Client()
        return getattr(self._local, name)(*args, **kwargs)


def open_client() -> Any:
    """The client the tracker delivers with: the MLflow process (the prestarted one if there
    is one) unless SLIMTRACK_MLFLOW_PROCESS=0, then a ``Client`` in this process."""
    global _prestarted
    if not enabled():
        from slimtrack.mlflow_client import Client

        return Client()
    child, _prestarted = _prestarted, None
    return ClientProcess(child if child is not None and child.alive else None)
