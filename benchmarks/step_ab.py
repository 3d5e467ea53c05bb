"""The training step alone, A/B in one process: slimtrack's step (native and torch kernels)
vs the reference loop's step, on the same chunks, alternated step by step.

    python benchmarks/step_ab.py [--steps 30] [--warmup 5] [--preset small]

end_to_end.py compares whole processes, which is what a user runs; on a shared 2-core VM
runs of one variant differ by 5-30 %, more than the effect being measured at the byte
vocabulary. Here the three steps take turns inside one process, so a slow minute hits
them alike: the ratio isolates the step's own code (kernels, loss, optimizer) from
process-level noise. It leaves out what only a whole run has (tracking, dashboards,
process start), so it complements end_to_end.py and does not replace it. It is also where
the suite shows what the native kernels add over torch's (`--kernels torch`).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from common import machine_line, markdown_table

import reference_loop
from slimtrack.runtime.allocator import keep_freed_memory
from slimtrack.config import build_config
from slimtrack.data.chunks import ChunkStream
from slimtrack.data.documents import SkipStats, iter_documents
from slimtrack.train.model import GPT
from slimtrack.native.threads import configure_threads
from slimtrack.data.tokenizer import load_tokenizer
from slimtrack.train.loop import SlimPajamaTrainer

REFERENCE = "reference loop step"


def make_steps(preset: str, steps: int) -> tuple[dict, list]:
    """{name: step(chunk)} for the three variants, and the chunks they all train on."""
    tokenizer = load_tokenizer("byte")
    variants = {}
    for kernels in ("native", "torch"):
        config = build_config(preset, kernels=kernels, max_chunks=steps)
        config.model.vocab_size = tokenizer.vocab_size
        torch.manual_seed(0)
        trainer = SlimPajamaTrainer(config, GPT(config.model, kernels), tokenizer, torch.device("cpu"),
                                    lambda: ["embedded"])
        variants[f"slimtrack step, {kernels} kernels"] = trainer.train_on_chunk
    torch.manual_seed(0)
    model, optimizer = reference_loop.build_model_and_optimizer(config)
    variants[REFERENCE] = lambda chunk: reference_loop.train_step(model, optimizer, chunk.tokens, config.train.lr,
                                                                  config.train.grad_clip)
    chunks = list(ChunkStream(iter_documents("embedded", "train", SkipStats()), tokenizer,
                              config.data.batch_size, config.data.seq_len, max_chunks=steps))
    return variants, chunks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args()
    configure_threads(None)
    keep_freed_memory()  # as `slimtrack train` does; the reference, in this process, gets it too
    variants, chunks = make_steps(args.preset, args.steps)
    times: dict[str, list[float]] = {name: [] for name in variants}
    for i, chunk in enumerate(chunks):
        for name, step in variants.items():  # every variant on the same chunk, in turn
            started = time.perf_counter()
            step(chunk)
            if i >= args.warmup:
                times[name].append(time.perf_counter() - started)
    reference = statistics.median(times[REFERENCE])
    reference_total = sum(times[REFERENCE])  # the mean's view: slow steps count in full
    rows = [[name, f"{statistics.median(t) * 1e3:.1f}", f"{statistics.mean(t) * 1e3:.1f}",
             f"{min(t) * 1e3:.1f}-{max(t) * 1e3:.1f}", f"**{reference / statistics.median(t):.2f}x**",
             f"{reference_total / sum(t):.2f}x"] for name, t in times.items()]
    print(f"Training step A/B in one process, preset {args.preset}, byte vocabulary, {len(chunks)} chunks "
          f"({args.warmup} warm-up), the variants alternated on each chunk")
    print(machine_line() + "\n")
    print(markdown_table(["variant", "median ms", "mean ms", "range ms", "speed vs reference (median)",
                          "(mean)"], rows))
    native, torch_kernels = (statistics.median(times[f"slimtrack step, {k} kernels"]) for k in ("native", "torch"))
    print(f"\nnative / torch kernels {torch_kernels / native:.2f}x; native step / reference step "
          f"{reference / native:.2f}x (the >= 1.10 target is end_to_end.py's, for whole runs)")


if __name__ == "__main__":
    main()
