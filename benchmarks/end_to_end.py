"""End to end: tokens/s of `slimtrack train` (native kernels, full tracking, dashboards) vs
the plain PyTorch loop a nanoGPT user would write (reference_loop.py), same job.

    python benchmarks/end_to_end.py [--max-chunks 64] [--bpe-max-chunks 10] [--repeats 3] [--quick]

Preset `small`, embedded corpus, two vocabularies: the byte tokenizer (320 padded) and a
GPT-2-sized byte-level BPE (50,257 -> 50,304 padded) trained once on the embedded corpus
and cached in benchmarks/.cache/. The variants: the reference loop; `slimtrack train`
(native kernels, tracking everything into a fresh sqlite store, a dashboard every 50
steps); and, at byte, `slimtrack train --no-tracking`, which gives the tracking overhead
from the same comparison (tracking_overhead.py measures it alone). In each repetition one
process per variant starts at once and they run in turns of 3 s (10 s at 50k, where a step
can take 4 s), the others stopped (turns.py), so the VM's drift hits them alike; each is
still a whole process with all its background work (its dashboard process is stopped and
resumed with it). What the native kernels add over torch's (`--kernels torch`) is
step_ab.py's question: it answers it in one process.

Two measures per run, then the median of the runs: "loop" is the tokens trained after
--warmup steps over the time the process ran (step end to step end: data, logging, the
dashboard render and MLflow deliveries included, however few steps they land on); "step"
is the median of the steps' own rates, forward to optimizer update, as the trainer times
them (steps a turn cut in two are left out).
At byte a run must pass step 50, so that the dashboard render and its upload fall inside
the measured window (the default 64 steps do). The runs train the same model on the same
data, so their losses must agree; the largest difference per variant is printed as a
check that the comparison is like for like.
Target: slimtrack / reference >= 1.10 at both vocabularies (loop measure).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Callable

from common import (BENCH_DIR, PYTHON, SLICE_SECONDS, Launch, TrainRun, alternate_in_turns, bench_env,
                    bpe_tokenizer, fmt_num, fmt_ratio, machine_line, markdown_table, median, median_step_rate,
                    run_rate, slimtrack_launch, target_note, tracking_cpu_line, window_rate)

TARGET = 1.10
PRESET = "small"
VIZ_INTERVAL = 50
REFERENCE, SLIMTRACK = "reference loop", "slimtrack"
NO_TRACKING = "slimtrack --no-tracking"
TRACKING_TARGET = 0.99
MEASURES: dict[str, Callable[..., float]] = {"loop": window_rate, "step": median_step_rate}


def reference_launch(workdir: Path, tokenizer: str, max_chunks: int) -> Launch:
    out = workdir / f"reference-{time.monotonic_ns()}.json"
    cmd = [PYTHON, str(BENCH_DIR / "reference_loop.py"), "--preset", PRESET, "--tokenizer", tokenizer,
           "--max-chunks", str(max_chunks), "--out", str(out)]
    return Launch(cmd, workdir, bench_env(workdir), out)


def slimtrack_launch_for(workdir: Path, tokenizer: str, max_chunks: int, tracking: bool = True) -> Launch:
    args = ["--preset", PRESET, "--tokenizer", tokenizer, "--max-chunks", str(max_chunks), "--kernels", "native",
            "--viz-interval", str(VIZ_INTERVAL), "--eval-interval", str(max_chunks)]  # evaluate at the end only
    return slimtrack_launch(workdir, args, tracking=tracking)


def measure(tokenizer: str, max_chunks: int, repeats: int, byte_extras: bool, slice_seconds: float
            ) -> dict[str, list[TrainRun]]:
    """Per variant, its runs: in each repetition the variants' processes run in turns."""
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp:
        workdir = Path(tmp)

        def launches() -> dict[str, Launch]:
            variants = {REFERENCE: reference_launch(workdir, tokenizer, max_chunks),
                        SLIMTRACK: slimtrack_launch_for(workdir, tokenizer, max_chunks)}
            if byte_extras:
                variants[NO_TRACKING] = slimtrack_launch_for(workdir, tokenizer, max_chunks, tracking=False)
            return variants

        return alternate_in_turns(launches, repeats, slice_seconds)


def per_run(runs: list[TrainRun], rate: Callable[..., float], warmup: int) -> list[float]:
    return [run_rate(run, rate, warmup) for run in runs]


def cell(values: list[float]) -> str:
    """Median of the runs, with their range."""
    return f"{fmt_num(median(values))} ({fmt_num(min(values))}-{fmt_num(max(values))})"


def table_rows(vocab: str, results: dict[str, list[TrainRun]], warmup: int) -> list[list[str]]:
    rows = []
    for measure, rate in MEASURES.items():
        rates = {name: per_run(runs, rate, warmup) for name, runs in results.items()}
        ref, native = median(rates[REFERENCE]), median(rates[SLIMTRACK])
        rows.append([vocab, measure, cell(rates[REFERENCE]), cell(rates[SLIMTRACK]), f"**{fmt_ratio(native, ref)}**"])
    return rows


def loss_agreement(results: dict[str, list[TrainRun]]) -> str:
    """Largest |loss - reference loss| at any step: ~0 when both trained the same thing."""
    reference = results[REFERENCE][0].history
    diffs = [abs(a["loss"] - b["loss"]) for run in results[SLIMTRACK] for a, b in zip(run.history, reference)]
    return f"{max(diffs):.1e}"


def tracking_overhead(results: dict[str, list[TrainRun]], warmup: int) -> str:
    """Full tracking vs --no-tracking at byte, from runs alternated with the others (the
    same table as tracking_overhead.py, which runs it alone), and the tracker's own count
    of the CPU it took."""
    rows, ratios = [], {}
    for measure, rate in MEASURES.items():
        on, off = (per_run(results[name], rate, warmup) for name in (SLIMTRACK, NO_TRACKING))
        ratios[measure] = median(on) / median(off)
        rows.append([measure, cell(on), cell(off), f"**{ratios[measure]:.3f}**" if measure == "loop"
                     else f"{ratios[measure]:.3f}"])
    return ("Tracking overhead (byte, the same alternation): tokens/s median of the runs (range)\n\n"
            + markdown_table(["measure", "full tracking", "--no-tracking", "tracking / no-tracking"], rows)
            + f"\n\ntracking / no-tracking (loop) {ratios['loop']:.3f} "
              f"({target_note(ratios['loop'], TRACKING_TARGET)}, target >= {TRACKING_TARGET})"
            + tracking_cpu_line(results[SLIMTRACK]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-chunks", type=int, default=64,
                        help="steps per run, byte vocabulary (past 50: a dashboard render in the window)")
    parser.add_argument("--bpe-max-chunks", type=int, default=10, help="steps per run, 50k vocabulary")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=5, help="first steps of a byte run left out of the measures")
    parser.add_argument("--bpe-warmup", type=int, default=2, help="the same at the 50k vocabulary")
    parser.add_argument("--vocab", choices=["byte", "bpe"], nargs="+", default=["byte", "bpe"])
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 repetition, a few steps")
    args = parser.parse_args()
    if args.quick:
        args.max_chunks, args.bpe_max_chunks, args.repeats, args.warmup, args.bpe_warmup = 6, 4, 1, 2, 2
    print(f"End to end, preset {PRESET}, tokens/s median of {args.repeats} runs (range), the variants' processes "
          f"in turns of {SLICE_SECONDS['byte']:.0f} s (byte) / {SLICE_SECONDS['bpe']:.0f} s (BPE); loop: each "
          f"run's tokens after {args.warmup} (byte) / {args.bpe_warmup} (BPE) warm-up steps over the time it "
          f"ran, step: each run's median step rate (steps never stopped); byte {args.max_chunks} steps, 50k BPE "
          f"{args.bpe_max_chunks} steps per run, dashboard every {VIZ_INTERVAL} steps, slimtrack with full "
          f"tracking (sqlite)")
    print(machine_line() + "\n")
    rows, checks = [], []
    for vocab in args.vocab:
        tokenizer = "byte" if vocab == "byte" else str(bpe_tokenizer())
        label = "byte (320)" if vocab == "byte" else "BPE (50,304)"
        max_chunks = args.max_chunks if vocab == "byte" else args.bpe_max_chunks
        warmup = args.warmup if vocab == "byte" else args.bpe_warmup
        # At byte, --no-tracking gives the tracking overhead from the same alternation (at 50k
        # the runs are the slowest of the suite).
        results = measure(tokenizer, max_chunks, args.repeats, byte_extras=vocab == "byte",
                          slice_seconds=SLICE_SECONDS[vocab])
        if NO_TRACKING in results:
            tracking = tracking_overhead(results, warmup)
        rows += table_rows(label, results, warmup)
        ratio = median(per_run(results[SLIMTRACK], window_rate, warmup)) / median(
            per_run(results[REFERENCE], window_rate, warmup))
        checks.append(f"{label}: slimtrack/reference (loop) {ratio:.2f} ({target_note(ratio, TARGET)}, "
                      f"target >= {TARGET:.2f}); largest loss difference vs reference: {loss_agreement(results)}")
    print(markdown_table(["vocab", "measure", REFERENCE, SLIMTRACK, "slimtrack / ref"], rows))
    print("\n" + "\n".join(checks))
    if "byte" in args.vocab:
        print("\n" + tracking)


if __name__ == "__main__":
    main()
