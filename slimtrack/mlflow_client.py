"""Client: the MlflowClient the tracker delivers with, and the MLflow process's main.

``python -m slimtrack.mlflow_process``'s child runs :func:`main`: it imports MLflow and opens
the store as soon as it starts (~3 s of CPU here, while the training process imports torch
and sets up), then answers the tracker's calls (mlflow_process.py).
"""

from __future__ import annotations

import os
import shutil
from typing import Any

import mlflow
from mlflow import MlflowClient


class Client(MlflowClient):
    """``MlflowClient`` and the few things the tracker adds (the same in either process)."""

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
