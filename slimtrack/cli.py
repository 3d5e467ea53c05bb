"""Command line: argument parsing, subcommands and exit codes; no training logic.

Exit status: 0 done, 1 the run failed (NaN loss, a bug), 2 bad input (one line
on stderr, before any heavy work), 130 interrupted (Ctrl-C / SIGTERM).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

from slimtrack.config import DEVICES, KERNELS, PRESETS, Config, build_config
from slimtrack.errors import UserError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (``slimtrack: error: ...``) and exit 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(message)


def parse_bool(text: str) -> bool:
    lowered = str(text).strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    # Every default is None: only flags given explicitly override the preset (so
    # `--test --max-chunks 5` keeps the test model and trains 5 chunks).
    p.add_argument("--test", nargs="?", const=True, default=False, type=parse_bool,
                   help="tiny model, ~20 chunks, under a minute on CPU (same as --preset test)")
    p.add_argument("--preset", choices=sorted(PRESETS), help="model and run size (default: small)")
    p.add_argument("--max-chunks", type=positive_int, help="optimizer steps to train (one chunk each)")
    p.add_argument("--viz-interval", type=positive_int, help="dashboard every N steps (default 50)")
    p.add_argument("--checkpoint-interval", type=positive_int, help="checkpoint every N steps (default 2000)")
    p.add_argument("--eval-interval", type=positive_int, help="validation every N steps (default 100)")
    p.add_argument("--log-interval", type=positive_int, help="console line every N steps")
    p.add_argument("--keep-checkpoints", type=positive_int, help="newest checkpoints kept (default 3)")
    p.add_argument("--dataset", help="embedded (default), a SlimPajama folder or file, or a hub id")
    p.add_argument("--tokenizer", help="byte (default), a tokenizer.json path, or a hub tokenizer")
    p.add_argument("--device", choices=DEVICES, help="auto (default), cpu or cuda")
    p.add_argument("--kernels", choices=KERNELS, help="native numba kernels (default) or torch ops")
    p.add_argument("--seed", type=int)
    p.add_argument("--batch-size", type=positive_int, help="rows per chunk")
    p.add_argument("--seq-len", type=positive_int, help="tokens per row")
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--warmup-steps", type=int, help="linear warmup steps")
    p.add_argument("--num-threads", type=int, help="torch and numba threads (default: all cores)")
    p.add_argument("--output-dir", help="local files of the run (default: outputs/<time>-<run name>)")
    p.add_argument("--experiment", help="MLflow experiment (default: slimtrack)")
    p.add_argument("--run-name", help="MLflow run name (default: preset-dataset-kernels-id)")
    p.add_argument("--no-tracking", action="store_true", help="same loop without MLflow (benchmarks)")
    p.add_argument("--no-log-model", action="store_true",
                   help="do not log the final model (its export takes seconds; checkpoints stay)")
    p.add_argument("--resume", metavar="RUN_ID_OR_OUTPUT_DIR",
                   help="continue a run from its newest checkpoint (same MLflow run; --max-chunks may "
                        "extend it, other flags are taken from the checkpoint)")


def build_parser() -> OneLineParser:
    parser = OneLineParser(prog="slimtrack", description="Train a GPT on SlimPajama and watch it learn in MLflow.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    add_train_arguments(sub.add_parser("train", help="train a model (the main job)"))
    sub.add_parser("warmup", help="compile the numba kernels into the on-disk cache (fast first run)")
    sync = sub.add_parser("sync", help="deliver the tracking spool a run left when its server was away")
    sync.add_argument("output_dir", help="the run's output folder (holds tracking_spool.jsonl)")
    report = sub.add_parser("report", help="rebuild a run's dashboard from the tracking store")
    report.add_argument("run_id", help="MLflow run id (finished, failed or killed)")
    report.add_argument("--out", help="PNG to write (default: dashboard-<id>.png)")
    compare = sub.add_parser("compare", help="overlay the curves of several runs in one PNG")
    compare.add_argument("run_ids", nargs="*", metavar="RUN_ID", help="MLflow run ids to compare")
    compare.add_argument("--experiment", help="compare the newest runs of this experiment instead")
    compare.add_argument("--last", type=positive_int, help="how many of the newest runs (default 5)")
    compare.add_argument("--out", help="PNG to write (default: compare-<first id>-<N>runs.png)")
    return parser


def config_from_args(args: argparse.Namespace) -> Config:
    """Map parsed flags onto the dataclasses; validation errors are UserErrors."""
    # --test wins over --preset (MLproject always passes both).
    preset = "test" if args.test else (args.preset or "small")
    overrides: dict[str, Any] = {
        "max_chunks": args.max_chunks, "viz_interval": args.viz_interval,
        "checkpoint_interval": args.checkpoint_interval, "eval_interval": args.eval_interval,
        "log_interval": args.log_interval, "keep_checkpoints": args.keep_checkpoints,
        "dataset": args.dataset, "tokenizer": args.tokenizer, "device": args.device,
        "kernels": args.kernels, "seed": args.seed, "batch_size": args.batch_size, "seq_len": args.seq_len,
        "lr": args.lr, "warmup_steps": args.warmup_steps, "num_threads": args.num_threads,
        "output_dir": args.output_dir, "experiment": args.experiment, "run_name": args.run_name,
        "tracking.enabled": False if args.no_tracking else None,
        "tracking.log_model": False if args.no_log_model else None,
    }
    return build_config(preset, **overrides)


def check_output_dir(path: str) -> None:
    """Fail fast (exit 2) on an output directory we cannot write."""
    if not path:
        return
    target = Path(path)
    try:
        target.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=target):
            pass
    except OSError as exc:
        raise UserError(f"--output-dir {path} is not writable: {exc.strerror or exc}") from None


def cmd_train(args: argparse.Namespace) -> int:
    if args.resume:
        return resume_train(args)
    config = config_from_args(args)
    check_output_dir(config.train.output_dir)
    from slimtrack.data.documents import validate_dataset  # cheap checks before torch and the model load
    from slimtrack.data.tokenizer import load_tokenizer

    validate_dataset(config.data.dataset)
    load_tokenizer(config.data.tokenizer)
    mlflow_process = start_mlflow_process_early(config)  # its MLflow import runs beside ours below
    from slimtrack.train.session import run_training

    return exit_code(run_training(config, mlflow_process=mlflow_process))


def start_mlflow_process_early(config: Config) -> Any:
    """The MLflow process, started before this process imports torch and MLflow, for a
    tracked run's rank 0 (the only rank that tracks); None otherwise."""
    if not (config.tracking.enabled and config.tracking.mlflow_process and os.environ.get("RANK", "0") == "0"):
        return None
    from slimtrack.tracking.process import start_mlflow_process

    return start_mlflow_process(config.runtime.background_nice)


def cmd_report(args: argparse.Namespace) -> int:
    from slimtrack.analysis import build_report

    path = build_report(args.run_id, Path(args.out) if args.out else None)
    print(f"slimtrack: wrote {path}")
    return EXIT_OK


def cmd_compare(args: argparse.Namespace) -> int:
    from slimtrack.analysis import latest_runs, write_comparison

    # Either explicit runs or an experiment's newest ones: mixing them would be ambiguous.
    if args.experiment and args.run_ids:
        raise UserError("compare takes run ids or --experiment, not both")
    if args.last is not None and not args.experiment:
        raise UserError("--last needs --experiment")
    if args.experiment:
        run_ids = latest_runs(args.experiment, args.last or 5)
        if not run_ids:
            raise UserError(f"experiment {args.experiment!r} has no runs")
    else:
        run_ids = args.run_ids
    path = write_comparison(run_ids, Path(args.out) if args.out else None)
    print(f"slimtrack: wrote {path}")
    return EXIT_OK


def resume_train(args: argparse.Namespace) -> int:
    from slimtrack.config import config_from_dict
    from slimtrack.train.session import find_resume_point, run_training

    point = find_resume_point(args.resume)
    config = config_from_dict(point.state["config"], max_chunks=args.max_chunks)
    return exit_code(run_training(config, resume=point, mlflow_process=start_mlflow_process_early(config)))


def exit_code(outcome: Any) -> int:
    if outcome.message:
        print(f"slimtrack: {outcome.message}", file=sys.stderr)
    return {"FINISHED": EXIT_OK, "KILLED": EXIT_INTERRUPTED}.get(outcome.status, EXIT_FAILED)


def cmd_warmup(args: argparse.Namespace) -> int:  # noqa: ARG001
    import time

    from slimtrack.native import warmup

    started = time.perf_counter()
    warmup()
    print(f"slimtrack: numba kernels compiled and cached in {time.perf_counter() - started:.1f} s")
    return EXIT_OK


def cmd_sync(args: argparse.Namespace) -> int:
    from slimtrack.tracking.spool import SPOOL_NAME, Spool
    from slimtrack.tracking.tracker import sync

    spool = Spool(Path(args.output_dir))
    if not spool.path.is_file():
        raise UserError(f"no {SPOOL_NAME} in {args.output_dir}: nothing to deliver")
    ops = spool.read()
    run_id = next((op.run_id for op in ops if op.run_id), None)
    delivery = sync(Path(args.output_dir))
    if delivery.offline:
        print(f"slimtrack: tracking server still unreachable; {len(spool)} operations stay "
              f"spooled in {spool.path}", file=sys.stderr)
        return EXIT_FAILED
    print(f"slimtrack: delivered {len(ops)} spooled operations to run {delivery.run_id or run_id}")
    return EXIT_OK


COMMANDS = {"train": cmd_train, "report": cmd_report, "sync": cmd_sync, "warmup": cmd_warmup, "compare": cmd_compare}


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=os.environ.get("SLIMTRACK_LOG_LEVEL", "WARNING"),
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        args = build_parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except UserError as exc:
        print(f"slimtrack: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("slimtrack: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
