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
from pathlib import Path
from typing import Any, Callable, Sequence

from slimtrack.config import DEVICES, PRESETS, Config, FieldInfo, config_fields
from slimtrack.config_files import build_config_with_file, config_to_yaml
from slimtrack.errors import UserError
from slimtrack.runtime.files import check_writable

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
    """The train subcommand's own flags (--test, --preset, --config, --print-config, --resume),
    then one per config field."""
    add_preset_arguments(p)
    p.add_argument("--print-config", action="store_true",
                   help="print the effective config as YAML (a valid --config file) and exit without training")
    p.add_argument("--resume", metavar="RUN_ID|OUTPUT_DIR|auto",
                   help="continue a run from its newest checkpoint (same MLflow run; --max-chunks may "
                        "extend it, other flags are taken from the run); auto: the run in --output-dir "
                        "if there is one, else a new one (for torchrun --max-restarts)")
    add_config_arguments(p)


def add_preset_arguments(p: argparse.ArgumentParser) -> None:
    """--test, --preset and --config: where a config starts from (``config_from_args``)."""
    # Every default is None (--test: False): only flags given explicitly override the preset
    # (so `--test --max-chunks 5` keeps the test model and trains 5 chunks). An empty value
    # (--lr "") is "not given" too: MLproject passes every parameter, unset ones empty.
    p.add_argument("--test", nargs="?", const=True, default=False, type=parse_bool, metavar="true|false",
                   help="the tiny test preset, for smoke tests (same as --preset test; wins over --preset)")
    presets = tuple(sorted(PRESETS))
    p.add_argument("--preset", type=given_or_none(str, presets), metavar="{" + ",".join(presets) + "}",
                   help="model and run size (default: the config file's, else small)")
    p.add_argument("--config", dest="config_file", type=given_or_none(str), metavar="FILE",
                   help="a YAML or TOML config file (sections model, data, train, tracking, runtime and "
                        "an optional preset): the preset, then the file, then the flags given")


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
        return {"type": given_or_none(info.type, info.choices), "metavar": "{" + ",".join(info.choices) + "}"}
    return {"type": given_or_none(info.type), "metavar": METAVARS[info.type]}


def given_or_none(kind: type, choices: tuple[str, ...] | None = None) -> Callable[[str], Any]:
    """argparse's type for a config flag: ``kind(text)``, checked against ``choices``; an empty
    value is None, "not given", so the preset's (or the config file's) value stays. This lets
    MLproject give every parameter an empty default and pass it on."""
    def convert(text: str) -> Any:
        if not text.strip():
            return None
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid {kind.__name__} value: {text!r}") from None
        if choices and value not in choices:
            raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from {', '.join(choices)})")
        return value

    return convert


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
    add_generate_arguments(sub.add_parser("generate", help="continue a prompt with a trained model"))
    add_tokenizer_arguments(sub.add_parser("tokenizer", help="build tokenizers (train: a byte-level BPE, offline)"))
    add_sweep_arguments(sub.add_parser("sweep", help="train one run per point of a grid of settings, "
                                                     "under one parent run"))
    return parser


def add_generate_arguments(p: argparse.ArgumentParser) -> None:
    """``slimtrack generate SOURCE --prompt TEXT [...]``: the decoding flags."""
    p.add_argument("source", metavar="SOURCE",
                   help="a run id (its newest checkpoint), a run's output folder, or a checkpoint file")
    p.add_argument("--prompt", required=True, metavar="TEXT", help="the text to continue")
    p.add_argument("--max-new-tokens", type=positive_int, default=200, metavar="N",
                   help="tokens to generate per sample (default: 200)")
    p.add_argument("--temperature", type=float, default=0.8, metavar="X",
                   help="sampling temperature; 0 = greedy (default: 0.8)")
    p.add_argument("--top-k", type=int, default=50, metavar="N",
                   help="sample among the N most likely tokens; 0 = all (default: 50)")
    p.add_argument("--seed", type=int, metavar="N", help="seed of the sampling (default: a random one)")
    p.add_argument("--num-samples", type=positive_int, default=1, metavar="N",
                   help="continuations to print (default: 1)")
    p.add_argument("--device", choices=DEVICES, default="auto",
                   help="where the model runs; auto: CUDA when available (default: auto)")


def add_tokenizer_arguments(p: argparse.ArgumentParser) -> None:
    """``slimtrack tokenizer train --dataset X --vocab-size N --out PATH.json [...]``."""
    sub = p.add_subparsers(dest="tokenizer_command", metavar="{train}", required=True,
                           parser_class=OneLineParser)
    train = sub.add_parser("train", help="train a byte-level BPE on a dataset's train split (offline)")
    train.add_argument("--dataset", required=True,
                       help="embedded, a local SlimPajama folder or .jsonl(.zst)/.parquet file, or a hub id")
    train.add_argument("--vocab-size", type=positive_int, required=True, metavar="N",
                       help="tokens in the vocabulary, the <|endoftext|> special token included")
    train.add_argument("--out", required=True, metavar="PATH.json",
                       help="the tokenizer.json to write (a folder: its tokenizer.json); use it with --tokenizer")
    train.add_argument("--max-documents", type=positive_int, metavar="M",
                       help="read at most M documents (default: the whole train split)")
    train.add_argument("--min-frequency", type=positive_int, default=2, metavar="F",
                       help="merge only pairs seen at least F times (default: 2)")


def add_sweep_arguments(p: argparse.ArgumentParser) -> None:
    """``slimtrack sweep --grid KEY=V1,V2 ... [--trials N] [--sampler grid|random]``, then the
    train flags (--test, --preset, --config and one per config field) every trial shares."""
    p.add_argument("--grid", nargs="+", required=True, metavar="KEY=V1,V2",
                   help="a config field (lr, or train.lr) and its values; the trials are the grid's points")
    p.add_argument("--trials", type=positive_int, metavar="N",
                   help="run N trials: the grid's first N (grid), or N distinct random points (random)")
    p.add_argument("--sampler", choices=("grid", "random"), default="grid",
                   help="grid: every point in order; random: --trials points drawn with --seed (default: grid)")
    p.add_argument("--dry-run", action="store_true", help="print the trials and exit without running them")
    add_preset_arguments(p)
    add_config_arguments(p)


def config_from_args(args: argparse.Namespace) -> Config:
    """The preset, then the --config file, then every config flag given; validation errors
    are UserErrors. The preset: --test, else --preset, else the file's, else small."""
    # --test wins over --preset (MLproject always passes both).
    preset = "test" if args.test else args.preset
    overrides = {info.key: getattr(args, info.key) for info in config_fields() if info.cli}
    return build_config_with_file(preset, args.config_file, **overrides)


def check_output_dir(path: str) -> None:
    """Fail fast (exit 2) on an output folder that cannot be written; creates nothing."""
    if path:
        check_writable(Path(path), "--output-dir", path)


def cmd_train(args: argparse.Namespace) -> int:
    if args.print_config:
        return print_config(args)
    if args.resume:
        return resume_train(args)
    return start_train(config_from_args(args))


def print_config(args: argparse.Namespace) -> int:
    """``--print-config``: the effective config as YAML on stdout (a valid ``--config`` file)."""
    if args.resume:
        raise UserError("--print-config shows a new run's config; it does not combine with --resume")
    print(config_to_yaml(config_from_args(args)), end="")
    return EXIT_OK


def start_train(config: Config) -> int:
    """A new run: cheap checks of its inputs first, then the run."""
    check_output_dir(config.train.output_dir)
    from slimtrack.data.documents import validate_dataset  # cheap checks before torch and the model load
    from slimtrack.data.tokenizer import load_tokenizer

    validate_dataset(config.data.dataset)
    config.model.vocab_size = load_tokenizer(config.data.tokenizer).vocab_size  # as set-up sets it
    mlflow_process = start_mlflow_process_early(config)  # its MLflow import runs beside ours below
    from slimtrack.train.session import run_training

    return exit_code(run_training(config, mlflow_process=mlflow_process))


def start_mlflow_process_early(config: Config) -> Any:
    """The MLflow process, started before this process imports torch and MLflow, for a
    tracked run's rank 0 (the only rank that tracks); None otherwise."""
    if not (config.tracking.enabled and config.tracking.mlflow_process and os.environ.get("RANK", "0") == "0"):
        return None
    from slimtrack.tracking.export import model_to_export
    from slimtrack.tracking.process import start_mlflow_process

    return start_mlflow_process(config.runtime.background_nice, *model_to_export(config))


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


def cmd_generate(args: argparse.Namespace) -> int:
    """Print the prompt followed by each continuation (train/generate.py); writes nothing."""
    from slimtrack.train.generate import Settings, run_generate

    settings = Settings(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                        top_k=args.top_k or None, seed=args.seed, num_samples=args.num_samples)
    run_generate(args.source, args.prompt, settings, device=args.device)  # checks the flags before loading
    return EXIT_OK


def cmd_tokenizer(args: argparse.Namespace) -> int:
    """``tokenizer train``: train a byte-level BPE (data/tokenizer_training.py), print one line."""
    from slimtrack.data.tokenizer_training import TokenizerTraining, train_tokenizer

    request = TokenizerTraining(dataset=args.dataset, vocab_size=args.vocab_size, out=Path(args.out),
                                max_documents=args.max_documents, min_frequency=args.min_frequency)
    trained = train_tokenizer(request)
    print(f"slimtrack: wrote a tokenizer of {trained.vocab_size} tokens, trained on {trained.documents} "
          f"documents, to {trained.path}")
    return EXIT_OK


def cmd_sweep(args: argparse.Namespace) -> int:
    """One ``slimtrack train`` per trial, each a child run of one parent run (sweep.py)."""
    from slimtrack.sweep import plan_sweep, print_plan, run_sweep

    sweep = plan_sweep(config_from_args(args), args.grid, args.sampler, args.trials, args.log_level)
    if args.dry_run:
        print_plan(sweep)
        return EXIT_OK
    return run_sweep(sweep)


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


COMMANDS = {"train": cmd_train, "report": cmd_report, "sync": cmd_sync, "warmup": cmd_warmup, "compare": cmd_compare,
            "generate": cmd_generate, "tokenizer": cmd_tokenizer,
            "sweep": cmd_sweep}


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
