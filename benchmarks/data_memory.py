"""Data memory: peak RSS of the chunk stream over one huge document, encoded in pieces or whole.

    python benchmarks/data_memory.py [--mb 250] [--chunks 300] [--doc-kb 4] [--tokenizer byte]
                                     [--piece-chars N] [--repeats 1] [--quick]

A SlimPajama-layout folder is generated in a temp folder: ``train/chunk1/example_train_0.jsonl``
holds a single record ``{"text": ..., "meta": {"redpajama_set_name": ...}}`` whose text is
--mb MB of ASCII words and newlines (so a character is a byte), and ``validation/`` holds one
small record (so the train split is read as it is, without a held-out share). Each case then
runs in a fresh subprocess that imports torch, builds ``make_chunks(dataset, "train",
tokenizer, 16, 128)`` (the byte tokenizer unless --tokenizer names a tokenizer.json) and
consumes --chunks chunks. Peak RSS is the child's own ``ru_maxrss``; "held" is its RSS after
the last chunk, what it keeps while the document is being consumed:

- pieces: the document is encoded in pieces of ``PIECE_CHARS`` characters (the default);
- whole: the piece size is infinite, so the whole document is encoded at once;
- normal corpus: the same number of bytes as documents of --doc-kb KB, for reference;
- imports only: a child that imports and builds nothing, the floor under every case.

The reader is the same in every case: a JSON line is always parsed whole (readers.py), so
"pieces" still holds the document's text, and twice while it is parsed; "whole" holds the
encoded tokens of the whole document besides the text (for a tokenizer.json, also the
tokenizer's own output for the whole document while it encodes). The cases take turns
over --repeats rounds.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import PYTHON, alternate, fmt_num, fmt_ratio, fmt_runs, machine_line, markdown_table, median

BATCH, SEQ_LEN = 16, 128  # the small preset's chunk
SET_NAME = "RedPajamaBook"
MB = 1 << 20
INFINITE = sys.maxsize  # a piece size no document reaches: each is encoded whole
IMPORTS_ONLY = "imports only (torch, slimtrack.data, the tokenizer)"


# ---------------------------------------------------------------- the data


def word_block(size: int, seed: int = 0) -> str:
    """``size`` characters of ASCII words, spaces and the odd newline, the same every time."""
    rng = random.Random(seed)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(1, 10))) for _ in range(5000)]
    pieces, length = [], 0
    while length < size:
        piece = rng.choice(words) + ("\n" if rng.random() < 0.05 else " ")
        pieces.append(piece)
        length += len(piece)
    return "".join(pieces)[:size]


def write_split(folder: Path, name: str, lines: list[str] | None = None, huge_mb: int = 0, block: str = "") -> None:
    """One JSON-lines file under ``folder/chunk1``: the given lines, or a single record of
    ``huge_mb`` MB of ``block`` repeated, written a block at a time."""
    path = folder / "chunk1" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        if lines is not None:
            handle.writelines(lines)
            return
        escaped = json.dumps(block)[1:-1]
        handle.write('{"text": "')
        for _ in range(huge_mb * MB // len(block)):
            handle.write(escaped)
        handle.write(f'", "meta": {{"redpajama_set_name": "{SET_NAME}"}}}}\n')


def record_line(text: str) -> str:
    return json.dumps({"text": text, "meta": {"redpajama_set_name": SET_NAME}}) + "\n"


def make_datasets(root: Path, mb: int, doc_kb: int) -> tuple[Path, Path]:
    """(the one-huge-document dataset, the normal corpus of the same size)."""
    block = word_block(MB)
    huge, normal = root / "huge", root / "normal"
    write_split(huge / "train", "example_train_0.jsonl", huge_mb=mb, block=block)
    doc_chars = doc_kb * 1024
    documents = [block[start:start + doc_chars] for start in range(0, len(block), doc_chars)]
    write_split(normal / "train", "example_train_0.jsonl", [record_line(text) for text in documents] * mb)
    for dataset in (huge, normal):
        write_split(dataset / "validation", "example_holdout_0.jsonl", [record_line("a held-out document")])
    return huge, normal


# ---------------------------------------------------------------- one measurement


def child(dataset: str, tokenizer_spec: str, piece_chars: int, chunks: int) -> None:
    """Runs in the subprocess: build ``chunks`` chunks, print the peak and held RSS and the time as JSON."""
    import torch  # noqa: F401  (chunks are torch tensors; imported alike in every case)

    from slimtrack.data.chunks import make_chunks
    from slimtrack.data.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_spec)
    started = time.perf_counter()
    built = 0
    if dataset:
        stream, _ = make_chunks(dataset, "train", tokenizer, BATCH, SEQ_LEN, max_chunks=chunks,
                                piece_chars=piece_chars)
        built = sum(1 for _ in stream)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux
    print(json.dumps({"peak_mb": peak_mb, "held_mb": current_rss_mb(), "chunks": built,
                      "seconds": time.perf_counter() - started}))


def current_rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def measure(dataset: Path | None, tokenizer_spec: str, piece_chars: int, chunks: int) -> dict:
    """The child's report, run in a fresh interpreter."""
    command = [PYTHON, __file__, "--child", str(dataset or ""), tokenizer_spec, str(piece_chars), str(chunks)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"child {command[3:]} failed ({result.returncode}):\n{result.stderr[-2000:]}")
    report = json.loads(result.stdout.strip().splitlines()[-1])
    if dataset and report["chunks"] != chunks:
        raise SystemExit(f"child {command[3:]} built {report['chunks']} chunks, not {chunks}")
    return report


# ---------------------------------------------------------------- the table


def main() -> None:
    if len(sys.argv) == 6 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
        return
    from slimtrack.data.chunks import PIECE_CHARS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=250, help="size of the huge document's text, MB")
    parser.add_argument("--chunks", type=int, default=300, help="chunks built in each case")
    parser.add_argument("--doc-kb", type=int, default=4, help="document size of the normal corpus, KB")
    parser.add_argument("--tokenizer", default="byte", help="'byte' or a tokenizer.json path")
    parser.add_argument("--piece-chars", type=int, default=PIECE_CHARS, help="piece size of the 'pieces' case")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="smoke run: a 20 MB document, 50 chunks")
    args = parser.parse_args()
    if args.quick:
        args.mb, args.chunks, args.repeats = 20, 50, 1

    with tempfile.TemporaryDirectory(prefix="bench-data-memory-") as tmp:
        started = time.perf_counter()
        huge, normal = make_datasets(Path(tmp), args.mb, args.doc_kb)
        generated = time.perf_counter() - started
        cases = {
            f"one {args.mb} MB document, pieces of {args.piece_chars:,} chars": (huge, args.piece_chars),
            f"one {args.mb} MB document, whole (piece size infinite)": (huge, INFINITE),
            f"normal corpus, {args.doc_kb} KB documents": (normal, args.piece_chars),
            IMPORTS_ONLY: (None, args.piece_chars),
        }
        runs = alternate({name: (lambda dataset=dataset, piece=piece: measure(dataset, args.tokenizer, piece,
                                                                              args.chunks))
                          for name, (dataset, piece) in cases.items()}, args.repeats)

    peak = {name: median(r["peak_mb"] for r in reports) for name, reports in runs.items()}
    held = {name: median(r["held_mb"] for r in reports) for name, reports in runs.items()}
    floor, held_floor = peak[IMPORTS_ONLY], held[IMPORTS_ONLY]
    pieces, whole = list(runs)[:2]
    print(f"Data memory: RSS of make_chunks(..., 'train', {args.tokenizer} tokenizer, {BATCH}, {SEQ_LEN}) over "
          f"{args.chunks} chunks, each case in a fresh subprocess, median of {args.repeats} alternated "
          f"(data generated in {generated:.1f} s)")
    print(machine_line() + "\n")
    rows = [[name, fmt_runs((r["peak_mb"] for r in runs[name]), 0), fmt_num(peak[name]),
             fmt_num(peak[name] - floor), fmt_num(held[name]), fmt_num(held[name] - held_floor),
             fmt_num(median(r["seconds"] for r in runs[name]), 2)] for name in runs]
    print(markdown_table(["case", "peak runs (MB)", "peak RSS MB", "peak above imports MB", "held RSS MB",
                          "held above imports MB", "seconds"], rows))
    peak_above = {name: peak[name] - floor for name in (pieces, whole)}
    held_above = {name: held[name] - held_floor for name in (pieces, whole)}
    print(f"\nwhole / pieces: peak RSS {fmt_ratio(peak[whole], peak[pieces])} "
          f"(above imports {fmt_ratio(peak_above[whole], peak_above[pieces])}), "
          f"held RSS {fmt_ratio(held[whole], held[pieces])} "
          f"(above imports {fmt_ratio(held_above[whole], held_above[pieces])})")
    print(f"MB above imports per MB of document text: pieces peak {peak_above[pieces] / args.mb:.2f}, "
          f"held {held_above[pieces] / args.mb:.2f}; whole peak {peak_above[whole] / args.mb:.2f}, "
          f"held {held_above[whole] / args.mb:.2f}")


if __name__ == "__main__":
    main()
