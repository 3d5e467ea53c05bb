"""Client: the MlflowClient the tracker delivers with, and the MLflow process's main.

``python -m slimtrack.mlflow_process``'s child runs :func:`main`: it imports MLflow and opens
the store as soon as it starts (~3 s of CPU here, while the training process imports torch
and sets up), then answers the tracker's calls (mlflow_process.py).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from typing import Any, Iterator

import mlflow
from mlflow import MlflowClient


class Client(MlflowClient):
    """``MlflowClient`` and the few things the tracker adds (the same in either process)."""

    def __init__(self, tracking_uri: str | None = None, registry_uri: str | None = None) -> None:
        # MlflowClient opens its tracking store here; for sqlite that creates the tables of a
        # new file, which the MLflow process may be doing at the same moment (see below).
        with store_creation_lock(tracking_uri or mlflow.get_tracking_uri()):
            super().__init__(tracking_uri, registry_uri)

    def ready(self, tracking_uri: str | None = None, registry_uri: str | None = None) -> None:
        """Nothing to wait for in this process."""

    def cpu_seconds(self) -> float:
        return 0.0  # counted with the calling thread's CPU

    def close(self) -> None:
        """Nothing to close in this process."""

    def log_png(self, run_id: str, path: str, key: str, step: int) -> None:
        """A PNG file as a step-indexed image (the UI's step slider), stored as it is."""
        with open_encoded_png(path) as image:
            self.log_image(run_id, image, key=key, step=step, synchronous=True)


@contextlib.contextmanager
def store_creation_lock(tracking_uri: str) -> Iterator[None]:
    """Held while a sqlite store is opened: one process at a time creates a new file's tables.

    ``slimtrack train`` opens the store twice at about the same time: the MLflow process
    as soon as it starts, the training process when it opens the run. On a new sqlite file
    both ran MLflow's table creation and one failed ("table latest_metrics already exists",
    "duplicate column name"): two processes on a fresh file failed 3 times in 3. An
    exclusive ``flock`` on the database file itself serialises the two; sqlite's own locks
    are ``fcntl`` byte-range locks, which ``flock`` does not touch. Other stores, files
    that cannot be opened (MLflow then reports the problem) and file systems without
    ``flock`` run without it."""
    path = tracking_uri[len("sqlite:///"):].split("?")[0] if tracking_uri.startswith("sqlite:///") else None
    with contextlib.ExitStack() as held:
        try:
            import fcntl

            if path:
                handle = held.enter_context(open(path, "ab"))  # "ab": creates it, never truncates
                fcntl.flock(handle, fcntl.LOCK_EX)  # released when the handle closes
        except (ImportError, OSError):
            pass
        yield


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
    from slimtrack.child import serve
    from slimtrack.priority import lower_this_thread_priority

    # The store named by the environment we were started with: the usual case. The
    # tracker's ("ready", uris) says which store it resolved; a different one is opened then.
    uris = (mlflow.get_tracking_uri(), mlflow.get_registry_uri())
    client = Client(*uris)
    lower_this_thread_priority()  # deliveries wait a little rather than preempt the step

    def answer(request: tuple) -> Any:
        nonlocal client, uris
        name, args, kwargs = request
        if name == "ready" and tuple(args) != uris:
            uris = tuple(args)
            client = Client(*uris)
        return getattr(client, name)(*args, **kwargs)

    serve(answer)


if __name__ == "__main__":
    main()
