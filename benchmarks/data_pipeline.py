"""Data pipeline: how fast documents become chunks, against how fast training eats them.

    python benchmarks/data_pipeline.py [--seconds 3] [--repeats 3] [--train-steps 20]
                                       [--training-tokens-per-sec N] [--quick]

Pipeline: a fresh ChunkStream over the embedded corpus's train split (small preset: 16 x 128
tokens per chunk), consumed for --seconds, the byte tokenizer and the 50k BPE (cached in
benchmarks/.cache/) taking turns; tokens/s counts the B*T tokens a step trains on, as
training does. The first chunk (listing and opening the corpus) is timed apart.

Training: the median loop tokens/s of a short `slimtrack train --no-tracking` run with the
byte tokenizer (the fastest consumer: a 50k vocabulary trains ~8x slower, so its headroom
here is a lower bound), or --training-tokens-per-sec. Headroom = pipeline / training,
target >= 10x. Data wait: the share of loop time the trainer spent in next() for a chunk,
from data_wait_ms in the run's metrics_history.json; "estimated" rows compute it as
(time per chunk) / (time per chunk + step time), which is what a synchronous next()
costs, since the pipeline's work does not depend on the step. Target < 1 %.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch  # noqa: F401 — imported before any timing (chunks are torch tensors)

from common import (WARMUP_STEPS, alternate, bpe_tokenizer, fmt_num, fmt_runs, machine_line, markdown_table,
                    median, slimtrack_train, target_note, wall_rates)
from slimtrack.data import ChunkStream, SkipStats, iter_documents
from slimtrack.tokenizer import Tokenizer, load_tokenizer

HEADROOM_TARGET = 10.0
WAIT_TARGET = 0.01
BATCH, SEQ_LEN = 16, 128  # the small preset's chunk


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


def training_run(steps: int) -> list[dict]:
    """History of a short untracked run at the small preset, byte tokenizer."""
    with tempfile.TemporaryDirectory(prefix="bench-data-") as tmp:
        return slimtrack_train(Path(tmp), ["--preset", "small", "--max-chunks", str(steps),
                                           "--eval-interval", str(steps)], tracking=False).history


def measured_wait_fraction(history: list[dict], warmup: int) -> float | None:
    """Share of loop time spent waiting for chunks; None when the history has no data_wait_ms."""
    rows = history[warmup:]
    if len(rows) < 2 or "data_wait_ms" not in rows[0]:
        return None
    waited = sum(row["data_wait_ms"] for row in rows[1:]) / 1e3
    return waited / (rows[-1]["timestamp"] - rows[0]["timestamp"])


def estimated_wait_fraction(pipeline_tokens_per_sec: float, training_tokens_per_sec: float) -> float:
    chunk_seconds = BATCH * SEQ_LEN / pipeline_tokens_per_sec
    step_seconds = BATCH * SEQ_LEN / training_tokens_per_sec
    return chunk_seconds / (chunk_seconds + step_seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="pipeline time per measurement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--train-steps", type=int, default=20, help="steps of the training run")
    parser.add_argument("--training-tokens-per-sec", type=float, help="skip the training run, use this rate")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 s, 2 repetitions, 8 training steps")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.repeats, args.train_steps = 1.0, 2, 8
    tokenizers = {"byte": load_tokenizer("byte"), "BPE 50k": load_tokenizer(str(bpe_tokenizer()))}
    for tokenizer in tokenizers.values():  # untimed: lazy imports, file cache
        pipeline_rate(tokenizer, 0.1)
    results = alternate({name: (lambda tokenizer=tokenizer: pipeline_rate(tokenizer, args.seconds))
                         for name, tokenizer in tokenizers.items()}, args.repeats)

    wait, warmup = None, min(WARMUP_STEPS, args.train_steps // 3)
    if args.training_tokens_per_sec:
        training, source = args.training_tokens_per_sec, "given by --training-tokens-per-sec"
    else:
        history = training_run(args.train_steps)
        training = median(wall_rates(history, warmup))
        wait = measured_wait_fraction(history, warmup)
        source = f"median loop tokens/s of a {args.train_steps}-step `slimtrack train --no-tracking` (byte)"

    print(f"Data pipeline, embedded corpus, {BATCH}x{SEQ_LEN} tokens per chunk, {args.seconds:g} s per "
          f"measurement, median of {args.repeats} alternated; training consumes {fmt_num(training)} tok/s ({source})")
    print(machine_line() + "\n")
    rows, notes = [], []
    for name, runs in results.items():
        rate = median(r for _, r in runs)
        headroom = rate / training
        estimate = estimated_wait_fraction(rate, training)
        rows.append([name, fmt_num(median(f for f, _ in runs) * 1e3), fmt_runs(r for _, r in runs), fmt_num(rate),
                     f"**{headroom:,.0f}x**", f"{estimate:.3%}"])
        notes.append(f"{name}: headroom {target_note(headroom, HEADROOM_TARGET)} (>= {HEADROOM_TARGET:g}x); "
                     f"estimated wait {target_note(estimate, WAIT_TARGET, higher_is_better=False)} (< 1 %)")
    print(markdown_table(["tokenizer", "first chunk ms", "runs (tok/s)", "pipeline tok/s", "headroom",
                          "data wait (estimated)"], rows))
    print("\n" + "\n".join(notes))
    if wait is not None:
        print(f"data wait measured in training (data_wait_ms, byte, steps after {warmup}): {wait:.3%} of loop time "
              f"({target_note(wait, WAIT_TARGET, higher_is_better=False)}, target < 1 %)")
    elif not args.training_tokens_per_sec:
        print("data wait not measured in training: this slimtrack's metrics_history.json has no data_wait_ms")


if __name__ == "__main__":
    main()
