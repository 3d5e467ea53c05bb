"""Records from local files: JSON lines (plain or zstd) and parquet, bad records counted.

Every reader yields ``Document``s and counts each record it cannot use in a
``SkipStats`` under one reason:

- ``corrupt_file``: the file cannot be read (to its end): bad or truncated zstd, broken
  parquet, I/O error. Counted once per file; the records read before the damage are kept.
- ``bad_json``: a line that is not a JSON object.
- ``bad_utf8``: a line (or text) that is not valid UTF-8 (lone surrogates included).
- ``no_text`` / ``not_string`` / ``empty_text``: the ``text`` field is missing or null,
  not a string, or only whitespace.

Why JSON lines are not read through ``datasets``: exact per-line accounting. In
``datasets`` one malformed or non-UTF-8 line aborts the whole block it sits in, a
truncated ``.zst`` ends silently as if complete, and a number in ``text`` is cast to a
string, so ``not_string`` could never be counted. Reading the lines here counts each bad
record on its own. Parquet is read with pyarrow directly for the same reason (exact
column types). Hub datasets do go through ``datasets`` (see documents.py).

Memory: a JSON line has to be parsed whole, since ``json`` has no streaming parser and a
document's text is one JSON string, so a line is read into memory as one piece however
long it is. Each form of it is dropped as soon as the next exists: the block pieces once
joined, the raw bytes once decoded, the decoded line once parsed, and the document once
the reader moves on. So a long line is held at most twice at any moment (while it is
joined, decoded or parsed), and once while its document is consumed; the chunk stream
encodes that text in bounded pieces (see chunks.py).
"""

from __future__ import annotations

import itertools
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import zstandard

DATA_SUFFIXES = (".jsonl", ".jsonl.zst", ".parquet")
UNKNOWN_SOURCE = "unknown"
_READ_BLOCK = 1 << 20
_UTF8_BOM = b"\xef\xbb\xbf"
_SURROGATE = re.compile("[\ud800-\udfff]")  # what str.encode("utf-8") refuses


@dataclass(frozen=True)
class Document:
    text: str
    source: str  # SlimPajama meta.redpajama_set_name, e.g. "RedPajamaC4"


@dataclass
class SkipStats:
    """Bad records, skipped and counted by reason and by file (never a crash)."""

    by_reason: Counter = field(default_factory=Counter)
    by_file: Counter = field(default_factory=Counter)

    @property
    def total(self) -> int:
        return sum(self.by_reason.values())

    def add(self, reason: str, file: str) -> None:
        self.by_reason[reason] += 1
        self.by_file[file] += 1

    def summary(self) -> str:
        """One line, e.g. "3 bad records (bad_json 2, no_text 1) in a.jsonl.zst (2), b.jsonl.zst (1)"."""
        if not self.total:
            return "0 bad records"
        reasons = ", ".join(f"{reason} {count}" for reason, count in sorted(self.by_reason.items()))
        files = ", ".join(f"{name} ({count})" for name, count in self.by_file.most_common(3))
        more = f" and {len(self.by_file) - 3} more files" if len(self.by_file) > 3 else ""
        return f"{self.total} bad records ({reasons}) in {files}{more}"


class Shard:
    """Which raw records belong to this rank: record i when i % world_size == rank.

    Raw records are counted before validation, across files in reading order, so the
    shares of all ranks are disjoint, cover every record, and each bad record is
    counted by exactly one rank. (A damaged file is noticed, and counted, by every rank.)
    """

    def __init__(self, rank: int = 0, world_size: int = 1):
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
        self.rank, self.world_size, self.position = rank, world_size, 0

    def take(self) -> bool:
        mine = self.position % self.world_size == self.rank
        self.position += 1
        return mine


def document_from_record(record: Any) -> Document | str:
    """A Document from a SlimPajama-schema record, or the skip reason if it has no usable text."""
    if not isinstance(record, dict):
        return "bad_json"
    text = record.get("text")
    if text is None:
        return "no_text"
    if not isinstance(text, str):
        return "not_string"
    if not text or text.isspace():  # as "not text.strip()", without copying a long text
        return "empty_text"
    if not text.isascii() and _SURROGATE.search(text):  # JSON "\ud800" escapes decode to lone surrogates
        return "bad_utf8"
    return Document(text, _source_name(record.get("meta")))


def _source_name(meta: Any) -> str:
    """meta.redpajama_set_name, with meta a dict (JSON, parquet struct) or a JSON string."""
    if isinstance(meta, str):
        try:
            meta = json.loads(meta)
        except ValueError:
            return UNKNOWN_SOURCE
    name = meta.get("redpajama_set_name") if isinstance(meta, dict) else None
    return name if isinstance(name, str) and name else UNKNOWN_SOURCE


# ---------------------------------------------------------------- finding files


def natural_key(path: Path) -> tuple:
    """Sort key with numbers compared as numbers: chunk2 < chunk10, example_train_2 < _10."""
    key: list[tuple[int, Any]] = []
    for part in path.as_posix().split("/"):
        key.extend((0, int(piece)) if piece.isdigit() else (1, piece) for piece in re.split(r"(\d+)", part) if piece)
        key.append((2, ""))  # a separator, so "a/b" and "ab" never compare equal piecewise
    return tuple(key)


def is_data_file(path: Path) -> bool:
    return path.is_file() and path.name.endswith(DATA_SUFFIXES) and not path.name.startswith(".")


def data_files_under(path: Path) -> list[Path]:
    """``path`` itself if it is a data file, else every data file below it, naturally ordered."""
    if path.is_file():
        return [path] if path.name.endswith(DATA_SUFFIXES) else []
    return sorted((p for p in path.rglob("*") if is_data_file(p)), key=lambda p: natural_key(p.relative_to(path)))


# ---------------------------------------------------------------- reading files


def read_file(path: Path, skips: SkipStats, shard: Shard) -> Iterator[Document]:
    """The usable documents of one data file, in file order; this rank's share only."""
    if path.name.endswith(".parquet"):
        yield from _read_parquet(path, skips, shard)
    else:
        yield from _read_jsonl(path, skips, shard)


def _read_jsonl(path: Path, skips: SkipStats, shard: Shard) -> Iterator[Document]:
    """The documents of a JSON-lines file. A line's bytes, its decoded text and its
    document are each released (``del``) as soon as the next form exists, so that a
    long line is never held more than twice (see the module docstring)."""
    name = str(path)
    first = True
    try:
        for line in _lines(path):
            if first and line.startswith(_UTF8_BOM):
                line = line[len(_UTF8_BOM):]  # a UTF-8 byte order mark, which json.loads refuses
            first = False
            if not line or line.isspace() or not shard.take():
                continue  # blank lines are not records (pyarrow and datasets agree)
            text = _utf8(line)
            del line
            document = "bad_utf8" if text is None else _document_from_json(text)
            del text
            if isinstance(document, str):
                skips.add(document, name)
            else:
                yield document
            del document
    except (OSError, zstandard.ZstdError, TruncatedError):
        skips.add("corrupt_file", name)


def _utf8(line: bytes) -> str | None:
    """The line decoded, or None when it is not valid UTF-8."""
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _document_from_json(text: str) -> Document | str:
    try:
        record = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: "[[[[..." nested past the limit
        return "bad_json"
    return document_from_record(record)


def _lines(path: Path) -> Iterator[bytes]:
    """The lines of a file (zstd-decompressed when it ends in .zst), without newlines.

    A line that spans blocks is gathered in one growing buffer, so reading it takes time
    in proportion to its length, and the memory of the blocks it came in is reused, not
    kept. Once yielded, such a line is referenced nowhere here, so the reader can free it
    as soon as it is decoded (a line inside one block stays referenced by that block's
    list of lines, which is bounded by the block)."""
    blocks = _zstd_blocks(path) if path.name.endswith(".zst") else _plain_blocks(path)
    partial = bytearray()  # the start of a line that continues in a later block
    for block in blocks:
        lines = block.split(b"\n")
        if len(lines) == 1:
            partial += block  # no line ends in this block
            continue
        if partial:
            partial += lines[0]
            yield _drain(partial)
        else:
            yield lines[0]
        yield from itertools.islice(lines, 1, len(lines) - 1)
        partial += lines[-1]
    if partial:
        yield _drain(partial)


def _drain(buffer: bytearray) -> bytes:
    """The buffer's contents as bytes; the buffer is emptied, which frees its memory."""
    line = bytes(buffer)
    buffer.clear()
    return line


def _plain_blocks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as handle:
        while block := handle.read(_READ_BLOCK):
            yield block


class TruncatedError(Exception):
    """A zstd stream that ends in the middle of a frame."""


def _zstd_blocks(path: Path) -> Iterator[bytes]:
    """Decompressed blocks of every frame in the file; ``TruncatedError`` if the last is cut off.

    A decompressobj rather than ``stream_reader`` because the reader ends a truncated
    frame silently, and a truncated download must be counted, not mistaken for the end.
    """
    decompressor = zstandard.ZstdDecompressor()
    frame = decompressor.decompressobj()
    frame_has_data = False
    with open(path, "rb") as handle:
        while compressed := handle.read(_READ_BLOCK):
            while compressed:
                frame_has_data = True
                output = frame.decompress(compressed)
                if output:
                    yield output
                compressed = b""
                if frame.eof:  # a frame ended; what follows starts the next frame
                    compressed, frame, frame_has_data = frame.unused_data, decompressor.decompressobj(), False
    if frame_has_data and not frame.eof:
        raise TruncatedError(str(path))


def _read_parquet(path: Path, skips: SkipStats, shard: Shard) -> Iterator[Document]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    name = str(path)
    try:
        parquet = pq.ParquetFile(path)
        columns = [c for c in ("text", "meta") if c in parquet.schema_arrow.names]
        for batch in parquet.iter_batches(batch_size=1024, columns=columns):
            texts = batch.column("text").to_pylist() if "text" in columns else [None] * batch.num_rows
            metas = batch.column("meta").to_pylist() if "meta" in columns else [None] * batch.num_rows
            for text, meta in zip(texts, metas):
                if not shard.take():
                    continue
                document = document_from_record({"text": text, "meta": meta})
                if isinstance(document, str):
                    skips.add(document, name)
                else:
                    yield document
    except (OSError, pa.ArrowException):
        skips.add("corrupt_file", name)


def read_files(files: list[Path], skips: SkipStats, shard: Shard,
               keep: Callable[[Document], bool] | None = None) -> Iterator[Document]:
    """Documents of every file in order; only those ``keep`` accepts when given (held-out splits)."""
    for path in files:
        documents = read_file(path, skips, shard)
        yield from documents if keep is None else filter(keep, documents)
