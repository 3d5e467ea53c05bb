"""Run every benchmark in sequence and put their tables into docs/benchmarks.md.

    python benchmarks/run_all.py            # the full suite (`make bench`), rewrites the doc
    python benchmarks/run_all.py --quick    # smoke sizes; prints only (--write-docs to write)
    python benchmarks/run_all.py --only end_to_end cold_start
    python benchmarks/run_all.py --only scaling   # the one outside the suite (DDP on 2 cores)

Each benchmark runs as its own process (`python benchmarks/<script> <sizes>`); its stdout
is the table. A benchmark that fails or times out does not stop the others: its section
says so, and run_all exits with status 1 at the end. In docs/benchmarks.md each section
lives between `<!-- BEGIN name -->` and `<!-- END name -->` markers; only the text between
them is replaced, so the prose around the tables is kept.
"""

from __future__ import annotations

import argparse
import datetime
import re
import subprocess
import sys
import time
from dataclasses import dataclass

from common import BENCH_DIR, PYTHON, REPO_ROOT, machine_line

DOC = REPO_ROOT / "docs" / "benchmarks.md"


@dataclass
class Bench:
    name: str  # the section marker in docs/benchmarks.md
    title: str
    script: str
    full: list[str]  # sizes chosen to keep the suite near 10 minutes on 2 quiet cores
    quick: list[str]  # smoke sizes: does it still run, roughly what comes out
    in_suite: bool = True  # False: runs only when named with --only


BENCHES = [
    Bench("kernels", "Native kernels: fused cross-entropy, FusedAdamW, GELU, attention and linear layers vs torch", "kernels.py", [], ["--quick"]),
    Bench("dashboard", "Dashboard render time", "dashboard.py",
          ["--sizes", "100000", "1000000"], ["--sizes", "1000"]),
    Bench("end_to_end", "End to end: slimtrack vs a plain PyTorch loop", "end_to_end.py",
          # 3 repetitions: with 2, the byte ratio moved by ~4 % between suite runs (1.08x-1.12x)
          ["--max-chunks", "58", "--bpe-max-chunks", "4", "--warmup", "3", "--bpe-warmup", "2", "--repeats", "3"],
          ["--quick", "--vocab", "byte"]),  # the 50k runs are the slowest; data_pipeline smoke-tests that tokenizer
    Bench("step_ab", "The training step in one process: native vs torch kernels vs the reference loop",
          "step_ab.py", ["--steps", "14", "--warmup", "3"], ["--steps", "4", "--warmup", "1"]),
    Bench("data_pipeline", "Data pipeline headroom and data wait", "data_pipeline.py",
          ["--seconds", "2", "--repeats", "2", "--train-steps", "8", "--bpe-train-steps", "4"], ["--quick"]),
    Bench("logging_capacity", "Logging capacity: records/s into MLflow", "logging_capacity.py",
          ["--records", "600", "--repeats", "2", "--train-steps", "30"], ["--quick"]),
    Bench("cold_start", "Cold start: numba cache cold vs warm", "cold_start.py", ["--repeats", "1"], ["--quick"]),
    Bench("fixed_cost", "Fixed cost of tracking: a tracked --test run vs --no-tracking, whole process",
          "fixed_cost.py", ["--repeats", "3"], ["--quick"]),
    # Not one of issue 8's measures, and 2 ranks on 2 cores says little: run it with --only.
    Bench("scaling", "Data-parallel scaling: 1 vs 2 processes (torchrun)", "scaling.py",
          ["--max-chunks", "10", "--repeats", "1"], ["--preset", "test", "--max-chunks", "10", "--repeats", "1"],
          in_suite=False),
]


@dataclass
class Outcome:
    bench: Bench
    command: str
    seconds: float
    text: str  # the table, or why there is none
    ok: bool


def run_bench(bench: Bench, quick: bool, timeout: float) -> Outcome:
    args = bench.quick if quick else bench.full
    command = f"python benchmarks/{bench.script} {' '.join(args)}".strip()
    print(f"\n## {bench.title}\n`{command}`\n", flush=True)
    started = time.perf_counter()
    try:
        done = subprocess.run([PYTHON, str(BENCH_DIR / bench.script), *args], cwd=REPO_ROOT,
                              capture_output=True, text=True, timeout=timeout)
        ok = done.returncode == 0
        text = done.stdout.strip() if ok else (
            f"**failed** (exit {done.returncode}):\n\n```\n{_tail(done.stderr)}\n```")
    except subprocess.TimeoutExpired:
        ok, text = False, f"**timed out** after {timeout:.0f} s"
    seconds = time.perf_counter() - started
    print(text + f"\n\n({seconds:.0f} s)", flush=True)
    return Outcome(bench, command, seconds, text, ok)


def _tail(text: str, lines: int = 20) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def section_body(outcome: Outcome, when: str) -> str:
    return f"`{outcome.command}` ({when}, {outcome.seconds:.0f} s)\n\n{outcome.text}"


def run_summary(outcomes: list[Outcome], quick: bool, machine: str) -> str:
    total = sum(o.seconds for o in outcomes)
    times = ", ".join(f"{o.bench.name} {o.seconds:.0f} s" for o in outcomes)
    mode = "quick smoke run (sizes too small for conclusions)" if quick else "full run"
    return f"Last {mode}: {machine}. Total {total / 60:.1f} min ({times})."


def replace_section(doc: str, name: str, body: str, title: str) -> str:
    """Swap the text between the markers of ``name``; append a new section if there are none."""
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.DOTALL)
    block = f"{begin}\n{body}\n{end}"
    if pattern.search(doc):
        return pattern.sub(lambda _: block, doc, count=1)
    return doc.rstrip() + f"\n\n## {title}\n\n{block}\n"


def write_docs(outcomes: list[Outcome], quick: bool, machine: str, whole_suite: bool) -> None:
    """Each benchmark's section; the summary only for a run of the whole suite (an --only run
    keeps the last full run's total)."""
    doc = DOC.read_text() if DOC.is_file() else "# Benchmarks\n"
    when = f"{datetime.date.today().isoformat()}" + (", quick" if quick else "")
    if whole_suite:
        doc = replace_section(doc, "summary", run_summary(outcomes, quick, machine), "Last run")
    for outcome in outcomes:
        doc = replace_section(doc, outcome.bench.name, section_body(outcome, when), outcome.bench.title)
    DOC.write_text(doc)
    print(f"\nwrote {DOC.relative_to(REPO_ROOT)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke sizes (a few minutes)")
    parser.add_argument("--only", nargs="+", choices=[b.name for b in BENCHES], help="run just these")
    parser.add_argument("--write-docs", action=argparse.BooleanOptionalAction, default=None,
                        help="rewrite docs/benchmarks.md (default: yes for the full run, no with --quick)")
    parser.add_argument("--timeout", type=float, default=1200, help="seconds per benchmark")
    args = parser.parse_args()
    machine = machine_line()
    print(f"# slimtrack benchmarks ({'quick' if args.quick else 'full'})\n{machine}", flush=True)
    benches = [b for b in BENCHES if b.name in args.only] if args.only else [b for b in BENCHES if b.in_suite]
    outcomes = [run_bench(bench, args.quick, args.timeout) for bench in benches]
    print("\n" + run_summary(outcomes, args.quick, machine))
    if args.write_docs if args.write_docs is not None else not args.quick:
        write_docs(outcomes, args.quick, machine, whole_suite=not args.only)
    return 0 if all(o.ok for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
