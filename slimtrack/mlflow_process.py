"""MLflow's client calls, made in a child process: the tracker's deliveries off our GIL.

A ``log_batch`` of a second's records is ~0.1 s of SQLAlchemy Python in MLflow's client
(~60-125 us per metric point). Made on a thread of the training process, that thread holds
the GIL in 5 ms slices, and the training thread waits for it after each torch op: on an
H200 (a ~10 ms step of kernel launches) tracking slowed every step by ~15 % that way. The
child (``python -m slimtrack.mlflow_process``, see child.py) makes the calls with its own
interpreter and GIL, at the background priority; the training process only pickles them.

``ClientProcess`` forwards any ``MlflowClient`` method to the child's :class:`Client`. If the
child cannot start, or dies, calls are made in this process from then on (the call that
found it dead raises, so the tracker's retry decides about it, as for a network error).
``SLIMTRACK_MLFLOW_PROCESS=0`` makes every call in this process.
"""

from __future__ import annotations

import logging
import os
import shutil
from typing import Any, Callable

import mlflow
from mlflow import MlflowClient

from slimtrack.child import ChildGone, ChildProcess, serve

log = logging.getLogger(__name__)


class Client(MlflowClient):
    """``MlflowClient`` and the few things the tracker adds (the same in either process)."""

    def ready(self) -> None:
        """Nothing to wait for in this process."""

    def cpu_seconds(self) -> float:
        return 0.0  # counted with the calling thread's CPU

    def close(self) -> None:
        """Nothing to close in this process."""

    def log_png(self, run_id: str, path: str, key: str, step: int) -> None:
        """A PNG file as a step-indexed image (the UI's step slider), stored as it is."""
        with open_encoded_png(path) as image:
            self.log_image(run_id, image, key=key, step=step, synchronous=True)


class ClientProcess:
    """``Client``'s methods, called in a child process (or here, once that is gone)."""

    def __init__(self) -> None:
        self._local: Client | None = None
        self._cpu_at_ready: float | None = None  # the child's CPU once it had imported MLflow
        # The child must talk to the same store, however this process was pointed at it.
        env = {"MLFLOW_TRACKING_URI": mlflow.get_tracking_uri(), "MLFLOW_REGISTRY_URI": mlflow.get_registry_uri()}
        try:
            self._child: ChildProcess | None = ChildProcess("slimtrack.mlflow_process", env=env)
        except ChildGone as exc:
            log.warning("MLflow process unavailable (%s); deliveries go from this process", exc)
            self._child = None

    @property
    def in_process(self) -> bool:
        return self._child is None or not self._child.alive

    def ready(self) -> None:
        """Wait until the child has imported MLflow and opened the store (~3 s of CPU here,
        ~8 s on an H200's host, once, while the run sets up; left out of ``cpu_seconds``)."""
        self._call("ready")
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
            self._local = Client()
        return getattr(self._local, name)(*args, **kwargs)


def open_client() -> Client | ClientProcess:
    """The client the tracker delivers with: a child process unless SLIMTRACK_MLFLOW_PROCESS=0."""
    if os.environ.get("SLIMTRACK_MLFLOW_PROCESS", "1") == "0":
        return Client()
    return ClientProcess()


def open_encoded_png(path: str) -> Any:
    """The PNG at ``path`` as a PIL image that ``log_image`` can take without re-encoding it.

    ``log_image`` saves the image it is given as PNG, plus a small WebP thumbnail. Decoding
    our dashboard PNG and encoding it again cost ~0.15 s of CPU per dashboard (the largest
    part of what tracking cost per dashboard, docs/benchmarks.md), to write the same pixels.
    This image is opened lazily (the header only): saving it as PNG copies the file's bytes,
    and anything else (the thumbnail's resize, another format) decodes it as usual.
    ``tests/test_tracking.py`` checks that MLflow still stores the bytes as they are."""
    from PIL import PngImagePlugin

    class EncodedPng(PngImagePlugin.PngImageFile):
        def save(self, fp: Any, format: str | None = None, **params: Any) -> None:
            as_is = not params and format in (None, "PNG", "png") and isinstance(fp, (str, os.PathLike)) \
                and str(fp).lower().endswith(".png")
            if not as_is:
                return super().save(fp, format, **params)
            shutil.copyfile(path, fp)

    return EncodedPng(path)


# ---- in the child ------------------------------------------------------------------------------
def main() -> None:
    from slimtrack.priority import lower_this_thread_priority

    client = Client()
    lower_this_thread_priority()  # deliveries wait a little rather than preempt the step
    serve(lambda request: getattr(client, request[0])(*request[1], **request[2]))


if __name__ == "__main__":
    main()
