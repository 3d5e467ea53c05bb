"""Checkpoints: atomic save, safe load, the newest K kept.

A checkpoint is written with ``runtime.files.atomic_write`` (a temporary file in the
same folder, fsync'd, renamed over its final name), so a ``kill -9`` at any moment
leaves either the previous or the new checkpoint, never a torn one; the temporary
names never match ``CHECKPOINT_PATTERN``. Loading uses
``torch.load(weights_only=True)``: a checkpoint holds tensors and plain Python
values only, and never executes code.
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from slimtrack.runtime.files import atomic_write

CHECKPOINT_PATTERN = re.compile(r"^step_(\d{6,})\.pt$")


def checkpoint_name(step: int) -> str:
    return f"step_{step:06d}.pt"


def rng_state() -> dict[str, Any]:
    """torch, numpy and python RNG states as weights_only-loadable values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(_as_tuples(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuples(value: Any) -> Any:
    """random.setstate wants tuples; a round trip may hand back lists."""
    if isinstance(value, (list, tuple)):
        return tuple(_as_tuples(v) for v in value)
    return value


def save_checkpoint(directory: Path, step: int, state: dict[str, Any], keep: int = 3) -> Path:
    """Atomically write ``state`` as ``directory/step_NNNNNN.pt``; prune to the newest ``keep``."""
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / checkpoint_name(step)
    atomic_write(final, lambda handle: torch.save(state, handle))
    for old in list_checkpoints(directory)[:-keep]:
        old.unlink(missing_ok=True)
    return final


def list_checkpoints(directory: Path) -> list[Path]:
    """Complete checkpoints in ``directory``, oldest first (temporary files are ignored)."""
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := CHECKPOINT_PATTERN.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(directory: Path) -> Path | None:
    found = list_checkpoints(directory)
    return found[-1] if found else None


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint without executing code (``weights_only=True``)."""
    return torch.load(path, map_location=map_location, weights_only=True)
