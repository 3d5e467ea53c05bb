"""Uploads: bulky artifacts (checkpoints) uploaded on a thread of their own.

A checkpoint can take seconds or minutes to upload to a server; delivered in line, every
metric logged after it would wait that long. The sink (sink.py) hands such an artifact
(``LogArtifact.bulky``) to :class:`Uploads` and returns at once, so the deliveries after it
go on while the file uploads.

A path waiting to upload again is uploaded once: ``checkpoints/latest.pt`` submitted three
times while one upload runs is uploaded once more after it, reading the newest file then.
A failed upload is kept; ``drain`` (the run's end, ``slimtrack sync``) waits for the
uploads and returns the failed ones, for the delivery to retry in line or spool. A file
gone before its upload (rotated away) is skipped, as the delivery skips it.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from typing import Callable

from slimtrack.tracking.operations import LogArtifact
from slimtrack.tracking.uri import redact_text

log = logging.getLogger(__name__)


class Uploads:
    def __init__(self, upload: Callable[[LogArtifact], None]) -> None:
        self._upload = upload  # uploads one artifact in line (the sink's client call)
        self._waiting: dict[tuple[str, str | None], LogArtifact] = {}  # by (file, artifact folder), in order
        self._failed: list[LogArtifact] = []
        self._current: LogArtifact | None = None  # the upload running now
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None

    def submit(self, op: LogArtifact) -> None:
        """Upload ``op`` on the upload thread (started on the first submit); returns at once."""
        with self._changed:
            self._waiting[(op.path, op.artifact_path)] = op
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="slimtrack-uploads", daemon=True)
                self._thread.start()
            self._changed.notify_all()

    def drain(self, timeout: float = 300.0) -> list[LogArtifact]:
        """Wait until every submitted upload is done (or ``timeout``); the failed ones (and on a
        timeout, the running one and the ones still waiting), as in-line operations."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while (self._waiting or self._current) and (remaining := deadline - time.monotonic()) > 0:
                self._changed.wait(remaining)
            left = self._failed + ([self._current] if self._current else []) + list(self._waiting.values())
            self._failed, self._waiting = [], {}
        return [dataclasses.replace(op, bulky=False) for op in left]

    def _work(self) -> None:
        while True:
            with self._changed:
                while not self._waiting:
                    self._changed.wait()
                op = self._current = self._waiting.pop(next(iter(self._waiting)))
            failed = not self._upload_one(op)
            with self._changed:
                if failed:
                    self._failed.append(op)
                self._current = None
                self._changed.notify_all()

    def _upload_one(self, op: LogArtifact) -> bool:
        try:
            self._upload(op)
        except FileNotFoundError:
            log.warning("mlflow: %s is gone; not logged", op.path)
        except Exception as exc:  # noqa: BLE001 — kept for drain: the delivery retries or spools it
            log.warning("mlflow: uploading %s failed: %s", op.path, redact_text(str(exc)))
            return False
        return True
