"""Build small datasets in the exact SlimPajama on-disk layout, for tests.

SlimPajama-627B on disk::

    train/chunk1/example_train_0.jsonl.zst ... train/chunk10/example_train_5911.jsonl.zst
    validation/chunk1/example_holdout_0.jsonl.zst ...
    test/chunk1/example_holdout_0.jsonl.zst ...

Each file is a zstd-compressed JSON-lines file of records
``{"text": ..., "meta": {"redpajama_set_name": ...}}``.

Everything here is deterministic: the same arguments give byte-identical files,
and ``slimpajama_records`` returns the records in the order a reader that sorts
files naturally (chunk2 before chunk10) must yield them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

import zstandard

SET_NAMES = (
    "RedPajamaCommonCrawl",
    "RedPajamaC4",
    "RedPajamaGithub",
    "RedPajamaBook",
    "RedPajamaArXiv",
    "RedPajamaWikipedia",
    "RedPajamaStackExchange",
)

_SPLIT_FILE_PREFIX = {"train": "example_train", "validation": "example_holdout", "test": "example_holdout"}


def record_text(split: str, chunk: int, file: int, doc: int) -> str:
    """The text of one fixture document; unique per position, with some non-ASCII."""
    words = " ".join(f"w{(chunk * 31 + file * 7 + doc * 3 + k) % 97}" for k in range(doc % 5 + 3))
    return f"{split} c{chunk} f{file} d{doc}: {words} — héllo ✓ 文字\nline two {doc}"


def slimpajama_records(
    split: str, n_chunks: int = 2, files_per_chunk: int = 2, docs_per_file: int = 5
) -> list[list[dict[str, Any]]]:
    """The records of every file of one split, files in natural order (chunk1, chunk2, ...)."""
    files = []
    for chunk in range(1, n_chunks + 1):
        for file in range(files_per_chunk):
            records = []
            for doc in range(docs_per_file):
                set_name = SET_NAMES[(chunk + file + doc) % len(SET_NAMES)]
                records.append(
                    {"text": record_text(split, chunk, file, doc), "meta": {"redpajama_set_name": set_name}}
                )
            files.append(records)
    return files


def make_slimpajama_tree(
    root: Path,
    n_chunks: int = 2,
    docs_per_file: int = 5,
    files_per_chunk: int = 2,
    splits: Iterable[str] = ("train", "validation"),
) -> Path:
    """Write a SlimPajama-layout tree under ``root`` and return ``root``.

    The records written are exactly ``slimpajama_records(split, n_chunks,
    files_per_chunk, docs_per_file)`` for each split.
    """
    root = Path(root)
    for split in splits:
        files = slimpajama_records(split, n_chunks, files_per_chunk, docs_per_file)
        for index, records in enumerate(files):
            chunk, file = divmod(index, files_per_chunk)
            path = root / split / f"chunk{chunk + 1}" / f"{_SPLIT_FILE_PREFIX[split]}_{file}.jsonl.zst"
            write_jsonl_zst(path, records)
    return root


def jsonl_bytes(records: Iterable[Any]) -> bytes:
    """Records as JSON lines (UTF-8, not ASCII-escaped, like SlimPajama's files)."""
    return b"".join(json.dumps(r, ensure_ascii=False).encode("utf-8") + b"\n" for r in records)


def write_jsonl(path: Path, records: Iterable[Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(jsonl_bytes(records))
    return path


def write_jsonl_zst(path: Path, records: Iterable[Any]) -> Path:
    return write_raw_zst(path, jsonl_bytes(records))


def write_raw_zst(path: Path, payload: bytes) -> Path:
    """Compress arbitrary bytes (e.g. a JSON-lines file with a broken line) to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # with a checksum, like the zstd command line (and so SlimPajama's files) writes by default
    path.write_bytes(zstandard.ZstdCompressor(level=3, write_checksum=True).compress(payload))
    return path


def write_parquet(path: Path, records: list[dict[str, Any]], meta_as_json: bool = False) -> Path:
    """Write records to parquet with ``meta`` as a struct column, or as a JSON string column."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [dict(r, meta=json.dumps(r["meta"])) if meta_as_json else r for r in records]
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path
