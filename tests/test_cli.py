"""The train subcommand's flags come from the config dataclasses (slimtrack/cli.py)."""

from __future__ import annotations

from pathlib import Path

import argparse
import dataclasses

import pytest

from conftest import REPO, run_cli
from slimtrack.cli import add_train_arguments, build_parser, config_from_args, main
from slimtrack.config import PRESETS, SECTION_TYPES, build_config

# A valid value per field, none of them its default: each must land in its own field.
GIVEN = {
    "model": dict(n_layer=3, n_head=2, n_embd=48, block_size=96, dropout=0.25),
    "data": dict(dataset="some/folder", tokenizer="tokenizer.json", batch_size=5, seq_len=33),
    "train": dict(max_chunks=7, lr=0.002, min_lr_ratio=0.5, warmup_steps=3, weight_decay=0.2, beta1=0.8,
                  beta2=0.9, grad_clip=0.5, eval_interval=11, eval_chunks=2, checkpoint_interval=13,
                  keep_checkpoints=4, viz_interval=17, log_interval=19, seed=7, device="cpu", kernels="torch",
                  num_threads=1, output_dir="out/here", grad_accum=2, peak_tflops=1.5, sample_prompts=3,
                  sample_tokens=9, sample_temperature=0.5),
    "tracking": dict(enabled=False, experiment="other", run_name="named", log_model=False, log_linger=1.5,
                     replay_interval=2.5, final_replay_timeout=3.5, mlflow_process=False, system_metrics=False,
                     system_metrics_interval=4.5, log_checkpoints="all", register_model="my-model",
                     program_cache="programs/here"),
    "runtime": dict(background_nice=5, malloc_tuning=False, onednn_linear=False, cuda_fast_launch=False),
}
FLAG_NAMES = {("tracking", "enabled"): "tracking"}  # flags not named after their field


def flag(section: str, name: str) -> str:
    return "--" + FLAG_NAMES.get((section, name), name.replace("_", "-"))


def all_fields():
    for section, cls in SECTION_TYPES.items():
        for f in dataclasses.fields(cls):
            yield section, f


def train_options() -> set[str]:
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    return {option for action in parser._actions for option in action.option_strings}


def parse(*argv: str):
    return config_from_args(build_parser().parse_args(["train", *argv]))


def argv_for(section: str, name: str, value) -> list[str]:
    if isinstance(value, bool):
        return [flag(section, name) if value else "--no-" + flag(section, name)[2:]]
    return [flag(section, name), str(value)]


def test_every_config_field_but_vocab_size_has_a_flag():
    options = train_options()
    for section, f in all_fields():
        if (section, f.name) == ("model", "vocab_size"):  # the tokenizer's, never a flag
            assert "--vocab-size" not in options
            continue
        assert flag(section, f.name) in options, (section, f.name)
        if f.type == "bool":
            assert "--no-" + flag(section, f.name)[2:] in options


def test_the_seeds_flags_keep_their_names():
    options = train_options()
    assert {"--max-chunks", "--viz-interval", "--checkpoint-interval", "--test", "--preset", "--resume",
            "--no-tracking", "--no-log-model", "--eval-interval", "--log-interval", "--keep-checkpoints",
            "--dataset", "--tokenizer", "--device", "--kernels", "--seed", "--batch-size", "--seq-len",
            "--lr", "--warmup-steps", "--num-threads", "--output-dir", "--experiment", "--run-name"} <= options


def test_the_given_values_cover_every_field():
    assert {(s, f.name) for s, f in all_fields()} - {("model", "vocab_size")} == {
        (s, name) for s, values in GIVEN.items() for name in values}


@pytest.mark.parametrize("section, name, value", [(s, n, v) for s, values in GIVEN.items() for n, v in values.items()])
def test_a_given_flag_lands_in_its_field(section, name, value):
    config = parse("--test", *argv_for(section, name, value))
    assert getattr(getattr(config, section), name) == value
    assert config.as_params()[f"{section}.{name}"] == str(value)


def test_all_flags_at_once():
    argv = [arg for s, values in GIVEN.items() for n, v in values.items() for arg in argv_for(s, n, v)]
    config = parse(*argv)
    for section, values in GIVEN.items():
        assert {name: getattr(getattr(config, section), name) for name in values} == values


def test_unspecified_flags_keep_the_presets_values():
    config = parse("--test", "--max-chunks", "5")
    expected = build_config("test", max_chunks=5)
    assert config == expected
    assert config.model == build_config("test").model  # the test model, not the small one
    assert config.train.eval_interval == PRESETS["test"]["train"]["eval_interval"]
    assert parse("--preset", "medium") == build_config("medium")
    assert parse() == build_config("small")


@pytest.mark.parametrize("value, preset", [(None, "test"), ("true", "test"), ("false", "small"), ("0", "small")])
def test_test_takes_an_optional_true_or_false(value, preset):
    argv = ["--test"] + ([value] if value else [])
    assert parse(*argv).preset == preset
    assert parse(*argv, "--preset", "small").preset == preset  # MLproject passes both


@pytest.mark.parametrize("section, name", [(s, f.name) for s, f in all_fields() if f.type == "bool"])
def test_bool_flags_work_both_ways(section, name):
    on, off = flag(section, name), "--no-" + flag(section, name)[2:]
    assert getattr(getattr(parse(on), section), name) is True
    assert getattr(getattr(parse(off), section), name) is False
    assert getattr(getattr(parse(off, on), section), name) is True  # the last one wins
    default = getattr(SECTION_TYPES[section](), name)
    assert getattr(getattr(parse(), section), name) is default


def test_no_tracking_and_no_log_model_keep_their_meaning():
    assert parse("--no-tracking").tracking.enabled is False
    assert parse("--no-tracking", "--tracking").tracking.enabled is True
    assert parse("--no-log-model").tracking.log_model is False


def test_switches_are_logged_as_params():
    params = parse("--no-onednn-linear", "--no-malloc-tuning", "--background-nice", "3", "--log-linger", "0.5",
                   "--no-mlflow-process", "--no-cuda-fast-launch").as_params()
    assert params["runtime.onednn_linear"] == "False"
    assert params["runtime.malloc_tuning"] == "False"
    assert params["runtime.cuda_fast_launch"] == "False"
    assert params["runtime.background_nice"] == "3"
    assert params["tracking.log_linger"] == "0.5"
    assert params["tracking.mlflow_process"] == "False"
    defaults = parse().as_params()
    assert defaults["runtime.onednn_linear"] == "True" and defaults["tracking.replay_interval"] == "10.0"


@pytest.mark.parametrize("argv, fragment", [
    (["--max-chunks", "0"], "--max-chunks"),
    (["--device", "tpu"], "--device"),
    (["--kernels", "fortran"], "--kernels"),
    (["--lr", "abc"], "--lr"),
    (["--seed", "1.5"], "--seed"),
    (["--n-embd", "100", "--n-head", "3"], "n_embd"),
    (["--background-nice", "25"], "--background-nice"),
    (["--log-linger", "-1"], "--log-linger"),
    (["--min-lr-ratio", "2"], "--min-lr-ratio"),
    (["--vocab-size", "1000"], "unrecognized"),
    (["--no-test"], "unrecognized"),
])
def test_a_bad_value_is_one_line_and_exit_2(argv, fragment, capsys):
    assert main(["train", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("slimtrack: error:") and fragment in err


def test_a_bad_value_from_the_real_command(tmp_path):
    result = run_cli("train", "--device", "tpu", cwd=tmp_path, timeout=120)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().count("\n") == 0 and "--device" in result.stderr


def test_log_level_is_a_top_level_option(capsys):
    assert build_parser().parse_args(["--log-level", "debug", "train"]).log_level == "DEBUG"
    assert build_parser().parse_args(["train"]).log_level == "WARNING"
    assert main(["--log-level", "chatty", "train"]) == 2
    assert "--log-level" in capsys.readouterr().err


def test_help_lists_every_flag(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "--max-chunks" in out and "--no-onednn-linear" in out and "(default: the preset's; small: 1000)" in out


def test_the_mlproject_command_parses():
    """MLproject's command line, with its parameters' defaults (empty: the preset's values), is
    a valid `slimtrack train` of the small preset."""
    import shlex

    import yaml

    entry = yaml.safe_load((REPO / "MLproject").read_text())["entry_points"]["main"]
    defaults = {name: shlex.quote(str(spec["default"])) for name, spec in entry["parameters"].items()}
    argv = shlex.split(entry["command"].format(**defaults))
    assert argv[:4] == ["python", "-m", "slimtrack", "train"]
    assert parse(*argv[4:]) == build_config("small")


def test_resume_takes_the_checkpoints_config_and_max_chunks(monkeypatch):
    from types import SimpleNamespace

    from slimtrack.train import resume, session

    saved = build_config("test", **{"tracking.enabled": False, "runtime.onednn_linear": False}).as_dict()
    ran = []
    monkeypatch.setattr(resume, "find_resume_point", lambda target: resume.ResumePoint(Path("."), None, saved))
    monkeypatch.setattr(session, "run_training", lambda config, **kw: ran.append(config)
                        or SimpleNamespace(message="", status="FINISHED"))
    assert main(["train", "--resume", "some-run", "--max-chunks", "50", "--lr", "0.5"]) == 0
    assert ran[0].train.max_chunks == 50
    assert ran[0].train.lr == build_config("test").train.lr  # other flags: the checkpoint's
    assert ran[0].runtime.onednn_linear is False
