"""A durable local spool of tracking operations (JSON lines, fsync'd per batch).

When the tracking server cannot be reached, every operation the tracker could not
deliver is appended here, in order, and replayed later (automatically when the
server answers again, or by ``slimtrack sync OUTPUT_DIR``). Operations are plain
dicts, e.g. ``{"op": "metrics", "points": [[key, value, timestamp_ms, step], ...]}``;
``tracking.py`` knows how to apply them. This module only does the file.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

SPOOL_NAME = "tracking_spool.jsonl"


class Spool:
    def __init__(self, directory: Path) -> None:
        self.path = Path(directory) / SPOOL_NAME
        self._lock = threading.Lock()

    def append(self, ops: list[dict[str, Any]]) -> None:
        """Append ops durably: they survive a kill -9 right after this returns."""
        if not ops:
            return
        lines = "".join(json.dumps(op, separators=(",", ":")) + "\n" for op in ops)
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(lines)
                f.flush()
                os.fsync(f.fileno())

    def read(self) -> list[dict[str, Any]]:
        """Every complete op in order; a torn last line (a kill mid-write) is ignored."""
        with self._lock:
            if not self.path.is_file():
                return []
            ops = []
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    ops.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
            return ops

    def __len__(self) -> int:
        return len(self.read())

    def is_empty(self) -> bool:
        return not self.path.is_file() or self.path.stat().st_size == 0

    def clear(self) -> None:
        with self._lock:
            self.path.unlink(missing_ok=True)
