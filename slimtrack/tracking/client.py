"""Client: the MlflowClient the sink uses, in the MLflow process or in this one.

It adds two things to MlflowClient: a sqlite store is opened under a file lock (two
processes open a run's store at about the same time), and ``log_png`` stores a PNG
file as it is.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from typing import Any, Iterator

import mlflow
from mlflow import MlflowClient


SQLITE_RETRY_DELAY_S = 1.0  # before opening a new sqlite store again (its tables were being made)


class Client(MlflowClient):
    """``MlflowClient`` and the few things the tracker adds (the same in either process)."""

    def __init__(self, tracking_uri: str | None = None, registry_uri: str | None = None) -> None:
        # MlflowClient opens its tracking store here; for sqlite that creates the tables of a
        # new file, which another process may be doing at the same moment (see below).
        uri = tracking_uri or mlflow.get_tracking_uri()
        with store_creation_lock(uri):
            try:
                super().__init__(tracking_uri, registry_uri)
            except Exception:  # noqa: BLE001
                if not uri.startswith("sqlite:"):
                    raise
                # A process that does not take the lock (an MLflow UI or server, a script)
                # may be creating the new file's tables right now: once more, after it.
                time.sleep(SQLITE_RETRY_DELAY_S)
                super().__init__(tracking_uri, registry_uri)

    def log_png(self, run_id: str, path: str, key: str, step: int) -> None:
        """A PNG file as a step-indexed image (the UI's step slider), stored as it is."""
        with open_encoded_png(path) as image:
            self.log_image(run_id, image, key=key, step=step, synchronous=True)


@contextlib.contextmanager
def store_creation_lock(tracking_uri: str) -> Iterator[None]:
    """Held while a sqlite store is opened: one process at a time creates a new file's tables.

    Two slimtrack processes can open a new store at about the same time (the MLflow
    process and ``slimtrack sync``, a sweep and its trials), and two processes creating a
    new file's tables at once collide. An exclusive ``flock`` on the database file serialises them; sqlite's own
    locks are ``fcntl`` byte-range locks, which ``flock`` does not touch. Other stores
    and file systems without ``flock`` run without it. A sqlite file this process cannot
    open for writing raises :class:`StoreError` at once (MLflow itself would retry for
    minutes before saying so)."""
    path = tracking_uri[len("sqlite:///"):].split("?")[0] if tracking_uri.startswith("sqlite:///") else None
    with contextlib.ExitStack() as held:
        if path:
            try:
                handle = held.enter_context(open(path, "ab"))  # "ab": creates it, never truncates
            except OSError as exc:
                raise StoreError(f"cannot write the sqlite store {path}: {exc.strerror or exc}") from None
            try:
                import fcntl

                fcntl.flock(handle, fcntl.LOCK_EX)  # released when the handle closes
            except (ImportError, OSError):
                pass
        yield


class StoreError(Exception):
    """The tracking store cannot be used at all (as opposed to a server that is away)."""


def open_encoded_png(path: str) -> Any:
    """The PNG at ``path`` as a PIL image that ``log_image`` can take without re-encoding it.

    ``log_image`` saves the image it is given as PNG, plus a small WebP thumbnail; decoding
    the dashboard and encoding it again would cost CPU to write the same pixels. This
    image is opened lazily (the header only): saving it as PNG copies the file's bytes,
    and anything else (the thumbnail's resize, another format) decodes it as usual."""
    from PIL import PngImagePlugin

    class EncodedPng(PngImagePlugin.PngImageFile):
        def save(self, fp: Any, format: str | None = None, **params: Any) -> None:
            as_is = not params and format in (None, "PNG", "png") and isinstance(fp, (str, os.PathLike)) \
                and str(fp).lower().endswith(".png")
            if not as_is:
                return super().save(fp, format, **params)
            shutil.copyfile(path, fp)

    return EncodedPng(path)
