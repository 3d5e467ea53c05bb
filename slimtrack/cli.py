"""Command line: argument parsing, subcommands and exit codes; no training logic.

The ``train`` subcommand's flags come from the config dataclasses: one flag per field
(``config_fields``), named after the field, with its help, type and choices. Every flag
defaults to None, so only flags given explicitly override the preset.

Exit status: 0 done, 1 the run failed (NaN loss, a bug), 2 bad input (one line
on stderr, before any heavy work), 130 stopped (Ctrl-C, SIGTERM, SIGHUP, a lost console).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

from slimtrack.config import PRESETS, Config, FieldInfo, build_config, config_fields
from slimtrack.errors import UserError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
METAVARS = {int: "N", float: "X", str: "TEXT"}


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
    """The train subcommand's own flags (--test, --preset, --resume), then one per config field."""
    # Every default is None (--test: False): only flags given explicitly override the preset
    # (so `--test --max-chunks 5` keeps the test model and trains 5 chunks).
    p.add_argument("--test", nargs="?", const=True, default=False, type=parse_bool, metavar="true|false",
                   help="the tiny test preset, for smoke tests (same as --preset test; wins over --preset)")
    p.add_argument("--preset", choices=sorted(PRESETS), help="model and run size (default: small)")
    p.add_argument("--resume", metavar="RUN_ID|OUTPUT_DIR|auto",
                   help="continue a run from its newest checkpoint (same MLflow run; --max-chunks may "
                        "extend it, other flags are taken from the run); auto: the run in --output-dir "
                        "if there is one, else a new one (for torchrun --max-restarts)")
    add_config_arguments(p)


def add_config_arguments(p: argparse.ArgumentParser) -> None:
    """One flag per config field, grouped by section; its dest is the field's ``section.field``."""
    groups: dict[str, Any] = {}
    preset_fields = {(section, name) for preset in PRESETS.values()
                     for section, values in preset.items() for name in values}
    for info in config_fields():
        if not info.cli:
            continue
        if info.section not in groups:
            groups[info.section] = p.add_argument_group(f"{info.section} settings")
        by_preset = (info.section, info.name) in preset_fields
        groups[info.section].add_argument(f"--{info.flag}", dest=info.key, default=None,
                                          help=flag_help(info, by_preset), **value_arguments(info))


def value_arguments(info: FieldInfo) -> dict[str, Any]:
    """How argparse reads a field's value: --x/--no-x for a bool, else its type (and choices)."""
    if info.type is bool:
        return {"action": argparse.BooleanOptionalAction}
    if info.choices:
        return {"type": info.type, "choices": info.choices}
    return {"type": info.type, "metavar": METAVARS[info.type]}


def flag_help(info: FieldInfo, by_preset: bool) -> str:
    """The field's doc and its default (``by_preset``: a value the presets set; the small one's)."""
    if info.type is bool:
        default = "on" if info.default else "off"
    elif info.default == "":
        default = "empty"
    else:
        default = str(info.default)
    default = f"the preset's; small: {default}" if by_preset else default
    return f"{info.help} (default: {default})".replace("%", "%%")  # argparse %-formats help


def build_parser() -> OneLineParser:
    parser = OneLineParser(prog="slimtrack", description="Train a GPT on SlimPajama and watch it learn in MLflow.")
    parser.add_argument("--log-level", default="WARNING", type=str.upper, choices=LOG_LEVELS,
                        help="level of slimtrack's log messages on stderr (default: WARNING)")
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
    """The preset, then every config flag given; validation errors are UserErrors."""
    # --test wins over --preset (MLproject always passes both).
    preset = "test" if args.test else (args.preset or "small")
    overrides = {info.key: getattr(args, info.key) for info in config_fields() if info.cli}
    return build_config(preset, **overrides)


def check_output_dir(path: str) -> None:
    """Fail fast (exit 2) on an output folder that cannot be written. Creates nothing: a run
    that fails before it starts leaves no empty folder behind."""
    if not path:
        return
    target = Path(path).expanduser()
    existing = next(folder for folder in (target, *target.parents) if folder.exists())
    if not existing.is_dir():
        raise UserError(f"--output-dir {path} is not writable: {existing} is not a folder")
    try:
        with tempfile.NamedTemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise UserError(f"--output-dir {path} is not writable: {exc.strerror or exc}") from None


def cmd_train(args: argparse.Namespace) -> int:
    if args.resume:
        return resume_train(args)
    return start_train(config_from_args(args))


def start_train(config: Config) -> int:
    """A new run: cheap checks of its inputs first, then the run."""
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
    """``--resume RUN_ID|FOLDER``: continue that run. ``--resume auto``: continue the run in
    ``--output-dir`` if there is one, else start it (what a restarted ``torchrun`` wants)."""
    from slimtrack.train.resume import auto_resume_point, config_to_resume, find_resume_point
    from slimtrack.train.session import run_training

    if args.resume == "auto":
        point = auto_resume_point(getattr(args, "train.output_dir") or "")
        if point is None:
            return start_train(config_from_args(args))
    else:
        point = find_resume_point(args.resume)
    # The run's own config; only --max-chunks may change (extend the run).
    config = config_to_resume(point, max_chunks=getattr(args, "train.max_chunks"))
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
    try:
        args = build_parser().parse_args(argv)
        logging.basicConfig(level=args.log_level, format="%(levelname)s %(name)s: %(message)s")
        return COMMANDS[args.command](args)
    except UserError as exc:
        print(f"slimtrack: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("slimtrack: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
