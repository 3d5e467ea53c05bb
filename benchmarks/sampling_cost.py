"""What the generated text samples cost the training loop: the small preset's loop time with
sampling at the default viz interval vs without (`--sample-prompts 0`), and the sampling
call itself against the steps of one interval.

    python benchmarks/sampling_cost.py [--repeats 3] [--intervals 2] [--quick]

Whole runs: `slimtrack train --no-tracking` of the small preset, sampled and unsampled in
turns (a, b, a, b, ...), each for ``intervals`` viz intervals plus one step, so every
sampling falls between the first and the last record (the loop time is the last record's
timestamp minus the first's). In one process: one TextSampler.sample call (4 prompts x 64
tokens) vs ``viz_interval`` optimizer steps of the same model, alternated; less noisy than
whole runs on a shared machine. The target: at most 2 % of the loop's time.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
import time
from pathlib import Path

import torch
from common import machine_line, markdown_table, median, slimtrack_train

from slimtrack.config import build_config
from slimtrack.data.chunks import make_chunks
from slimtrack.data.tokenizer import load_tokenizer
from slimtrack.native.threads import configure_threads
from slimtrack.train.job import validation_chunks
from slimtrack.train.loop import SlimPajamaTrainer
from slimtrack.train.model import GPT
from slimtrack.train.samples import make_sampler

TARGET = 0.02
SAMPLED, UNSAMPLED = "sampled (default)", "--sample-prompts 0"


def loop_seconds(history: list[dict]) -> float:
    return history[-1]["timestamp"] - history[0]["timestamp"]


def whole_runs(repeats: int, steps: int) -> dict[str, list[float]]:
    """Loop seconds of each variant's runs, taken in turns."""
    results: dict[str, list[float]] = {SAMPLED: [], UNSAMPLED: []}
    with tempfile.TemporaryDirectory(prefix="slimtrack-sampling-") as tmp:
        for _ in range(repeats):
            for name, extra in ((SAMPLED, []), (UNSAMPLED, ["--sample-prompts", "0"])):
                run = slimtrack_train(Path(tmp), ["--max-chunks", str(steps), *extra], tracking=False)
                results[name].append(loop_seconds(run.history))
    return results


def in_process(repeats: int, warmup: int = 3) -> tuple[list[float], list[float], int]:
    """Seconds of one sampling call and of one viz interval's optimizer steps, alternated."""
    config = build_config("small")
    configure_threads(None)
    tokenizer = load_tokenizer(config.data.tokenizer)
    config.model.vocab_size = tokenizer.vocab_size
    torch.manual_seed(config.train.seed)
    model = GPT(config.model, config.train.kernels, onednn_linear=config.runtime.onednn_linear)
    trainer = SlimPajamaTrainer(config, model, tokenizer, torch.device("cpu"), lambda: [])
    sampler = make_sampler(config, model, tokenizer, torch.device("cpu"), validation_chunks(config, tokenizer))
    interval = config.train.viz_interval
    stream, _ = make_chunks(config.data.dataset, "train", tokenizer, config.data.batch_size, config.data.seq_len)
    chunks = itertools.cycle(list(itertools.islice(iter(stream), 20)))
    for _ in range(warmup):
        trainer.train_on_chunk(next(chunks))
        sampler.sample(0)
    sample_s, steps_s = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(interval):
            trainer.train_on_chunk(next(chunks))
        steps_s.append(time.perf_counter() - started)
        started = time.perf_counter()
        sampler.sample(1)
        sample_s.append(time.perf_counter() - started)
    return sample_s, steps_s, interval


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--intervals", type=int, default=2, help="viz intervals per whole run")
    parser.add_argument("--quick", action="store_true", help="smoke run: in-process only, 1 repeat")
    args = parser.parse_args()
    print(machine_line())
    sample_s, steps_s, interval = in_process(1 if args.quick else args.repeats)
    share = statistics.median(sample_s) / statistics.median(steps_s)
    print(f"\nIn one process, small preset: one sampling call vs {interval} optimizer steps\n")
    print(markdown_table(["", "seconds (median)", "per run"],
                         [["sampling (4 prompts x 64 tokens)", f"{median(sample_s):.3f}",
                           ", ".join(f"{v:.3f}" for v in sample_s)],
                          [f"{interval} steps", f"{median(steps_s):.2f}", ", ".join(f"{v:.2f}" for v in steps_s)],
                          ["sampling / loop", f"{100 * share:.2f} %", f"target <= {100 * TARGET:.0f} %"]]))
    if args.quick:
        return
    steps = args.intervals * interval + 1
    runs = whole_runs(args.repeats, steps)
    sampled, unsampled = median(runs[SAMPLED]), median(runs[UNSAMPLED])
    print(f"\nWhole runs: `slimtrack train --no-tracking --max-chunks {steps}`, loop seconds, in turns\n")
    print(markdown_table(["variant", "loop s (median)", "per run"],
                         [[name, f"{median(values):.2f}", ", ".join(f"{v:.2f}" for v in values)]
                          for name, values in runs.items()]
                         + [["sampled / unsampled", f"{sampled / unsampled:.3f}",
                             f"{100 * (sampled / unsampled - 1):+.2f} % (target <= +{100 * TARGET:.0f} %)"]]))


if __name__ == "__main__":
    main()
