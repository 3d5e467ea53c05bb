"""Data pipeline: how fast documents become chunks, against how fast training eats them.

    python benchmarks/data_pipeline.py [--seconds 3] [--repeats 3] [--train-steps 20] [--bpe-train-steps 8]
                                       [--training-tokens-per-sec N] [--quick]

Pipeline: a fresh ChunkStream over the embedded corpus's train split (the small preset's
16 x 128 tokens per chunk), consumed for --seconds, the byte tokenizer and the 50k BPE
(cached in benchmarks/.cache/) taking turns; tokens/s counts the B*T tokens a step trains
on, as training does. The first chunk (listing and opening the corpus) is timed apart.

Training, per tokenizer: the loop tokens/s (tokens after the warm-up over their wall time)
of a short `slimtrack train --no-tracking` at the small preset with that tokenizer (or
--training-tokens-per-sec for both). Headroom = pipeline / training, target >= 10x. Data
wait, target < 1 % of loop time: "measured" is the trainer's own data_wait_ms from the
run's metrics_history.json (after warm-up); "estimated" is (time per chunk) / (time per
chunk + step time) from the two rates above, which is what a synchronous next() costs (the
pipeline's work does not depend on the step), and stands in when a history has no
data_wait_ms or no run was made.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch  # noqa: F401 — imported before any timing (chunks are torch tensors)

from common import (WARMUP_STEPS, alternate, bpe_tokenizer, fmt_num, fmt_runs, machine_line, markdown_table,
                    median, slimtrack_train, target_note, window_rate)
from slimtrack.config import build_config
from slimtrack.data.chunks import ChunkStream
from slimtrack.data.documents import SkipStats, iter_documents
from slimtrack.data.tokenizer import Tokenizer, load_tokenizer

HEADROOM_TARGET = 10.0
WAIT_TARGET = 0.01
SMALL = build_config("small").data
BATCH, SEQ_LEN = SMALL.batch_size, SMALL.seq_len  # the chunk the small preset trains on


def pipeline_rate(tokenizer: Tokenizer, seconds: float) -> tuple[float, float]:
    """(first-chunk latency in s, training tokens/s after it) of a fresh chunk stream."""
    started = time.perf_counter()
    stream = iter(ChunkStream(iter_documents("embedded", "train", SkipStats()), tokenizer, BATCH, SEQ_LEN))
    next(stream)
    first = time.perf_counter()
    chunks = 0
    while time.perf_counter() - first < seconds and next(stream, None) is not None:
        chunks += 1
    return first - started, chunks * BATCH * SEQ_LEN / (time.perf_counter() - first)


def training(tokenizer_spec: str, steps: int) -> tuple[float, float | None]:
    """(loop tokens/s, measured data-wait fraction or None) of a short untracked run."""
    with tempfile.TemporaryDirectory(prefix="bench-data-") as tmp:
        history = slimtrack_train(Path(tmp), ["--preset", "small", "--tokenizer", tokenizer_spec, "--max-chunks",
                                              str(steps), "--eval-interval", str(steps)], tracking=False).history
    warmup = min(WARMUP_STEPS, steps // 3)
    return window_rate(history, warmup), measured_wait_fraction(history, warmup)


def measured_wait_fraction(history: list[dict], warmup: int) -> float | None:
    """Share of loop time spent waiting for chunks; None when the history has no data_wait_ms."""
    rows = history[warmup:]
    if len(rows) < 2 or "data_wait_ms" not in rows[0]:
        return None
    waited = sum(row["data_wait_ms"] for row in rows[1:]) / 1e3  # the waits inside the timed span
    return waited / (rows[-1]["timestamp"] - rows[0]["timestamp"])


def estimated_wait_fraction(pipeline_tokens_per_sec: float, training_tokens_per_sec: float) -> float:
    chunk_seconds = BATCH * SEQ_LEN / pipeline_tokens_per_sec
    step_seconds = BATCH * SEQ_LEN / training_tokens_per_sec
    return chunk_seconds / (chunk_seconds + step_seconds)


def row_and_note(name: str, runs: list[tuple[float, float]], consumed: float, wait: float | None
                 ) -> tuple[list[str], str]:
    rate = median(r for _, r in runs)
    headroom = rate / consumed
    estimate = estimated_wait_fraction(rate, consumed)
    shown_wait = wait if wait is not None else estimate
    row = [name, fmt_num(median(f for f, _ in runs) * 1e3), fmt_runs(r for _, r in runs), fmt_num(rate),
           fmt_num(consumed), f"**{headroom:,.0f}x**", "—" if wait is None else f"{wait:.3%}", f"{estimate:.3%}"]
    note = (f"{name}: headroom {target_note(headroom, HEADROOM_TARGET)} (>= {HEADROOM_TARGET:g}x); data wait "
            f"({'measured' if wait is not None else 'estimated'}) "
            f"{target_note(shown_wait, WAIT_TARGET, higher_is_better=False)} (< 1 %)")
    return row, note


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="pipeline time per measurement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--train-steps", type=int, default=20, help="steps of the byte-tokenizer training run")
    parser.add_argument("--bpe-train-steps", type=int, default=8, help="steps of the 50k-BPE training run")
    parser.add_argument("--training-tokens-per-sec", type=float, help="skip the training runs, use this rate")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 s, 2 repetitions, short training runs")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.repeats, args.train_steps, args.bpe_train_steps = 1.0, 2, 8, 5
    specs = {"byte": "byte", "BPE 50k": str(bpe_tokenizer())}
    tokenizers = {name: load_tokenizer(spec) for name, spec in specs.items()}
    for tokenizer in tokenizers.values():  # untimed: lazy imports, file cache
        pipeline_rate(tokenizer, 0.1)
    results = alternate({name: (lambda tokenizer=tokenizer: pipeline_rate(tokenizer, args.seconds))
                         for name, tokenizer in tokenizers.items()}, args.repeats)
    steps = {"byte": args.train_steps, "BPE 50k": args.bpe_train_steps}
    consumed = {name: (args.training_tokens_per_sec, None) if args.training_tokens_per_sec
                else training(spec, steps[name]) for name, spec in specs.items()}

    source = ("given by --training-tokens-per-sec" if args.training_tokens_per_sec else
              f"loop tok/s of `slimtrack train --no-tracking` at the small preset, "
              f"{args.train_steps} steps (byte) / {args.bpe_train_steps} steps (BPE)")
    print(f"Data pipeline, embedded corpus, {BATCH}x{SEQ_LEN} tokens per chunk, {args.seconds:g} s per "
          f"measurement, median of {args.repeats} alternated; training: {source}")
    print(machine_line() + "\n")
    rows, notes = [], []
    for name, runs in results.items():
        row, note = row_and_note(name, runs, *consumed[name])
        rows.append(row)
        notes.append(note)
    print(markdown_table(["tokenizer", "first chunk ms", "runs (tok/s)", "pipeline tok/s", "training tok/s",
                          "headroom", "data wait (measured)", "data wait (estimated)"], rows))
    print("\n" + "\n".join(notes))


if __name__ == "__main__":
    main()
