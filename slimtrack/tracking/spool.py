"""Spool: the durable local file of tracking operations that wait for the store.

JSON lines (``operations.Operation.to_json``), appended in order and fsync'd per batch,
so what was spooled survives a ``kill -9`` the moment ``append`` returns. A torn last
line (a kill in the middle of a write) is skipped when the spool is read.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from slimtrack.runtime.files import atomic_write_bytes
from slimtrack.tracking.operations import Operation, from_json

SPOOL_NAME = "tracking_spool.jsonl"


class Spool:
    def __init__(self, directory: Path) -> None:
        self.path = Path(directory) / SPOOL_NAME
        self._lock = threading.Lock()

    def append(self, ops: list[Operation]) -> None:
        """Append ``ops`` durably."""
        if ops:
            with self._lock:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with open(self.path, "a", encoding="utf-8") as f:
                    f.write(_lines(ops))
                    f.flush()
                    os.fsync(f.fileno())

    def rewrite(self, ops: list[Operation]) -> None:
        """Replace the spool with ``ops`` at once (runtime.files.atomic_write)."""
        with self._lock:
            atomic_write_bytes(self.path, _lines(ops).encode("utf-8"))

    def read(self) -> list[Operation]:
        """Every complete operation, in order."""
        with self._lock:
            if not self.path.is_file():
                return []
            ops = []
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    ops.append(from_json(line))
                except (ValueError, TypeError):
                    continue
            return ops

    def __len__(self) -> int:
        return len(self.read())

    def clear(self) -> None:
        with self._lock:
            self.path.unlink(missing_ok=True)


def _lines(ops: list[Operation]) -> str:
    return "".join(op.to_json() + "\n" for op in ops)
