"""Corpora -> documents: which records a dataset name and split stand for.

A dataset is named by one string:

- ``"embedded"`` (the default): Python's own sources and docs, no network (see embedded.py).
- a local path: a SlimPajama tree (``train/chunkN/example_train_M.jsonl.zst``,
  ``validation/chunkN/example_holdout_M.jsonl.zst``), one split folder of it, a folder of
  ``.jsonl`` / ``.jsonl.zst`` / ``.parquet`` files, or one such file.
- a hub id (``owner/name`` that is not an existing path), e.g. ``cerebras/SlimPajama-627B``,
  streamed with ``datasets``.

Held-out validation for local data: when the dataset has no ``validation/`` folder (a
single file, a folder of files, a split folder), the documents whose text hash falls in
a fixed 2% bucket form "validation" and are left out of "train", so the two never
overlap (``holdout.is_held_out``). Such a carved validation split may be empty for
datasets of a few dozen documents.

Bad records are skipped and counted in a SkipStats (see readers.py); a split with no
usable document at all raises DataError when its end is reached, which for an empty
dataset is before the first chunk.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, Iterator

from slimtrack.data import embedded
from slimtrack.data.holdout import is_held_out
from slimtrack.data.hub import hub_offline_reason
from slimtrack.data.readers import Document, Shard, SkipStats, data_files_under, document_from_record, read_files
from slimtrack.errors import DataError, UserError

__all__ = ["Document", "SkipStats", "iter_documents", "validate_dataset"]

EMBEDDED = "embedded"
OFFLINE_OPTIONS = "use --dataset embedded, or a local SlimPajama folder, .jsonl.zst, .jsonl or .parquet file"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


# ---------------------------------------------------------------- documents


def iter_documents(dataset: str, split: str, skips: SkipStats, *, rank: int = 0,
                   world_size: int = 1) -> Iterator[Document]:
    """The usable documents of one split, in a fixed order; with DDP, rank's share only.

    With ``world_size > 1`` rank r reads raw records i with i % world_size == r: the shares
    are disjoint and together cover the split. Bad records are counted into ``skips``.
    """
    shard = Shard(rank, world_size)
    documents, may_be_empty = _open_split(dataset, split, skips, shard)  # a bad name fails here, at once
    return _nonempty(documents, may_be_empty, f"dataset {dataset!r} has no usable documents in split {split!r}", skips)


def _nonempty(documents: Iterator[Document], may_be_empty: bool, message: str, skips: SkipStats) -> Iterator[Document]:
    """Pass documents through; at the end, DataError if there were none (unless allowed)."""
    count = 0
    for document in documents:
        count += 1
        yield document
    if count == 0 and not may_be_empty:
        raise DataError(message + (f"; {skips.summary()}" if skips.total else ""))


def _open_split(dataset: str, split: str, skips: SkipStats, shard: Shard) -> tuple[Iterator[Document], bool]:
    """The documents of a split, not read yet, and whether that split is allowed to be empty
    (carved validation). The one place that tells what a dataset name stands for: a name
    that is neither embedded, a path nor a reachable hub id fails here, at once."""
    if dataset == EMBEDDED:
        embedded.check_split(split)
        return embedded.iter_embedded(split, skips, shard), False
    path = Path(dataset).expanduser()
    if path.exists():
        files, keep = _local_split(path, split)
        return read_files(files, skips, shard, keep), split == "validation" and keep is not None
    if looks_like_hub_id(dataset):
        _require_hub(dataset)
        return _iter_hub(dataset, split, skips, shard), False
    raise UserError(f"dataset {dataset!r}: no such file or folder; {OFFLINE_OPTIONS}, or a hub id owner/name")


def _local_split(path: Path, split: str) -> tuple[list[Path], Callable[[Document], bool] | None]:
    """The files of a split and, when validation is carved out of train, the filter to apply."""
    is_tree = path.is_dir() and (path / "train").is_dir()  # a SlimPajama root: train/, validation/, test/
    has_validation = is_tree and (path / "validation").is_dir()
    if is_tree and (path / split).is_dir() and (split != "train" or has_validation):
        return _data_files(path / split, path), None
    if split not in ("train", "validation"):
        raise UserError(f"dataset {str(path)!r} has no {split!r} split; it has 'train' and 'validation'")
    files = _data_files(path / "train" if is_tree else path, path)
    want_held_out = split == "validation"
    return files, lambda document: is_held_out(document) == want_held_out


def local_split_files(path: Path, split: str) -> list[Path]:
    """The files a local dataset's split reads (validation carved from train reads train's)."""
    return _local_split(path, split)[0]


def _data_files(folder: Path, dataset: Path) -> list[Path]:
    files = data_files_under(folder)
    if not files:
        raise DataError(f"dataset {str(dataset)!r}: no .jsonl, .jsonl.zst or .parquet files in {str(folder)!r}")
    return files


def looks_like_hub_id(dataset: str) -> bool:
    return bool(_HUB_ID.match(dataset)) and not Path(dataset).expanduser().exists()


def _iter_hub(dataset: str, split: str, skips: SkipStats, shard: Shard) -> Iterator[Document]:
    import datasets  # imported here: its start-up cost is paid by hub datasets only

    label = f"hf://datasets/{dataset}/{split}"
    try:
        records = datasets.load_dataset(dataset, split=split, streaming=True)
        for record in records:
            if not shard.take():
                continue
            document = document_from_record(record)
            if isinstance(document, str):
                skips.add(document, label)
            else:
                yield document
    except Exception as exc:  # network drops, unknown split, gated repo: one line, no traceback
        first_line = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise DataError(f"dataset {dataset!r} ({split}) could not be streamed from the hub: {first_line}") from None


def _require_hub(dataset: str) -> None:
    reason = hub_offline_reason()
    if reason is not None:
        raise DataError(f"dataset {dataset!r} is not a local path and the Hugging Face hub is unavailable "
                        f"({reason}); {OFFLINE_OPTIONS}")


def validate_dataset(dataset: str) -> None:
    """A cheap check for the CLI: the dataset can be opened (files exist, hub reachable).

    Opens the train split without reading a record: every reader is a generator."""
    _open_split(dataset, "train", SkipStats(), Shard())
