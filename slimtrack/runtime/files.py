"""Atomic file writes: readers, and a crash at any moment, see the old file or the new one.

``atomic_write`` writes to a temporary file in the target's folder, fsyncs it, renames it
over the target and fsyncs the folder, so the rename itself survives a power loss. The
temporary name is unique per call, so two threads or processes writing the same target
never share a temporary file; whichever rename comes last wins. A write that fails
leaves the target as it was and removes its temporary file.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path
from typing import BinaryIO, Callable


def atomic_write(path: Path, write: Callable[[BinaryIO], None], durable: bool = True) -> None:
    """Replace ``path`` with what ``write`` writes into the binary file it is given.

    ``durable=False`` skips the fsyncs: the replacement is still atomic (a reader sees the
    old file or the new one), but a power loss may keep the old one. For files that are
    rewritten often and can be rebuilt (the dashboards)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:16]}")
    try:
        with open(tmp, "xb") as handle:
            write(handle)
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        _fsync_directory(path.parent)


def atomic_write_bytes(path: Path, data: bytes, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` (see ``atomic_write``)."""

    def write(handle: BinaryIO) -> None:
        handle.write(data)

    atomic_write(path, write, durable)


def _fsync_directory(directory: Path) -> None:
    """Make the entries of ``directory`` (a rename into it) durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_writable(folder: Path, flag: str, given: str) -> None:
    """Fail fast (``UserError``: one line, ``{flag} {given} is not writable: ...``) when
    ``folder`` could not be created or written into: its nearest existing ancestor must take
    a new file. Creates nothing, so a command that fails before it starts leaves no empty
    folder behind."""
    from slimtrack.errors import UserError

    folder = Path(folder).expanduser()
    existing = next(f for f in (folder, *folder.parents) if f.exists())
    if not existing.is_dir():
        raise UserError(f"{flag} {given} is not writable: {existing} is not a folder")
    try:
        with tempfile.NamedTemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise UserError(f"{flag} {given} is not writable: {exc.strerror or exc}") from None
