"""Config files (--config), --print-config, the shipped configs/, MLproject's parameters and
the gpt2 preset (slimtrack/config.py, slimtrack/cli.py)."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import yaml

from conftest import REPO, run_cli
from slimtrack.cli import build_parser, config_from_args, main
from slimtrack.config import PRESETS, ModelConfig, build_config
from slimtrack.config_files import build_config_with_file, read_config_file

CONFIGS = REPO / "configs"

YAML_FILE = """\
# a comment
preset: test
model:
  n_layer: 3
train:
  lr: 0.002
  max_chunks: 7
  warmup_steps: 2
tracking:
  log_model: false
"""
TOML_FILE = """\
# a comment
preset = "test"

[model]
n_layer = 3

[train]
lr = 0.002
max_chunks = 7
warmup_steps = 2

[tracking]
log_model = false
"""
FILE_VALUES = dict(n_layer=3, lr=0.002, max_chunks=7, warmup_steps=2, log_model=False)


def parse(*argv: str):
    return config_from_args(build_parser().parse_args(["train", *argv]))


def write(folder: Path, name: str, text: str) -> str:
    path = folder / name
    path.write_text(text)
    return str(path)


def print_config(capsys, *argv: str) -> str:
    assert main(["train", *argv, "--print-config"]) == 0
    return capsys.readouterr().out


# Precedence: preset, then file, then flags ------------------------------------------------

@pytest.mark.parametrize("name, text", [("c.yaml", YAML_FILE), ("c.yml", YAML_FILE), ("c.toml", TOML_FILE)])
def test_the_file_overrides_the_preset_and_flags_override_the_file(tmp_path, name, text):
    path = write(tmp_path, name, text)
    assert parse("--config", path) == build_config("test", **FILE_VALUES)
    assert parse("--config", path, "--max-chunks", "9", "--lr", "0.01") == build_config(
        "test", **{**FILE_VALUES, "max_chunks": 9, "lr": 0.01})
    # --preset (and --test) name the preset the file's values apply to.
    assert parse("--config", path, "--preset", "small") == build_config("small", **FILE_VALUES)
    assert parse("--config", path, "--test") == build_config("test", **FILE_VALUES)


def test_yaml_and_toml_give_the_same_config(tmp_path):
    assert read_config_file(write(tmp_path, "c.yaml", YAML_FILE)) == read_config_file(
        write(tmp_path, "c.toml", TOML_FILE))


def test_a_file_without_a_preset_applies_to_the_flags_preset_else_small(tmp_path):
    path = write(tmp_path, "c.yaml", "train:\n  lr: 0.002\n")
    assert parse("--config", path) == build_config("small", lr=0.002)
    assert parse("--config", path, "--preset", "medium") == build_config("medium", lr=0.002)


def test_values_take_their_fields_types(tmp_path):
    # PyYAML reads 6e-4 (no dot) as text; a float field takes it, and whole numbers, as floats.
    path = write(tmp_path, "c.yaml", "train:\n  lr: 6e-4\n  grad_clip: 2\n  seed: 7\n"
                                     "  warmup_steps: null\ndata:\n  dataset: '123'\nmodel:\n")
    config = parse("--config", path)
    assert config.train.lr == 6e-4 and isinstance(config.train.grad_clip, float) and config.train.seed == 7
    assert config.train.warmup_steps == build_config("small").train.warmup_steps  # null: the preset's
    assert config.data.dataset == "123"


def test_an_empty_flag_value_is_not_given(tmp_path):
    path = write(tmp_path, "c.yaml", YAML_FILE)
    assert parse("--preset", "", "--config", "", "--lr", "", "--max-chunks", "", "--kernels", "",
                 "--run-name", "") == build_config("small")
    assert parse("--config", path, "--preset", "", "--lr", "") == build_config("test", **FILE_VALUES)


# Bad files: one line, exit 2 ----------------------------------------------------------------

@pytest.mark.parametrize("name, text, fragment", [
    ("c.yaml", "train:\n  learning_rate: 0.1\n", "unknown key train.learning_rate"),
    ("c.yaml", "training:\n  lr: 0.1\n", "unknown section 'training'"),
    ("c.yaml", "lr: 0.1\n", "unknown section 'lr'"),
    ("c.toml", "[train]\nlr = 0.1\n[optim]\nbeta = 1\n", "unknown section 'optim'"),
    ("c.yaml", "model:\n  vocab_size: 1000\n", "model.vocab_size is not a setting"),
    ("c.yaml", "train:\n  max_chunks: many\n", "train.max_chunks must be a whole number"),
    ("c.yaml", "train:\n  max_chunks: 10.5\n", "train.max_chunks must be a whole number"),
    ("c.yaml", "tracking:\n  log_model: maybe\n", "tracking.log_model must be true or false"),
    ("c.yaml", "data:\n  dataset: [a, b]\n", "data.dataset must be text"),
    ("c.yaml", "train:\n  max_chunks: 0\n", "--max-chunks must be positive"),
    ("c.yaml", "preset: huge\n", "unknown preset 'huge'"),
    ("c.yaml", "train: 5\n", "section 'train' must hold key: value pairs"),
    ("c.yaml", "- a\n- b\n", "expected sections"),
    ("c.yaml", "train:\n  lr: 0.1\n bad indent: [\n", "is not valid YAML"),
    ("c.toml", "[train\nlr = 0.1\n", "is not valid TOML"),
    ("c.json", "{}", "expected a .yaml, .yml or .toml file"),
])
def test_a_bad_file_is_one_line_and_exit_2(tmp_path, capsys, name, text, fragment):
    path = write(tmp_path, name, text)
    assert main(["train", "--config", path]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("slimtrack: error:") and fragment in err, err
    if "--max-chunks" not in fragment:  # the config's own checks speak of the setting
        assert path in err


def test_a_missing_file_is_one_line_and_exit_2(tmp_path, capsys):
    path = str(tmp_path / "nowhere.yaml")
    assert main(["train", "--config", path, "--print-config"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot read config file" in err and path in err


# --print-config -----------------------------------------------------------------------------

ODD_VALUES = ["--run-name", "a: b #c", "--experiment", "true", "--dataset", "123", "--output-dir", "out dir/x",
              "--lr", "1e-05", "--peak-tflops", "2", "--no-malloc-tuning", "--kernels", "torch"]


@pytest.mark.parametrize("argv", [[], ["--test"], *[["--preset", name] for name in PRESETS], ODD_VALUES],
                         ids=["no-flags", "--test", *[f"preset-{name}" for name in PRESETS], "odd-values"])
def test_print_config_round_trips(tmp_path, capsys, argv):
    text = print_config(capsys, *argv)
    path = write(tmp_path, "c.yaml", text)
    assert print_config(capsys, "--config", path) == text
    assert build_config_with_file(None, path).as_params() == parse(*argv).as_params()
    assert build_config_with_file(None, path) == parse(*argv)


def test_print_config_documents_every_setting_and_leaves_vocab_size_out(capsys):
    text = print_config(capsys, "--test")
    assert text.startswith("# ") and "preset: test\n" in text
    assert "  lr: 0.001  # peak learning rate\n" in text
    assert "\n  vocab_size:" not in text and "  # vocab_size: set from the tokenizer" in text
    data = yaml.safe_load(text)
    assert set(data) == {"preset", "model", "data", "train", "tracking", "runtime"}
    assert data["train"]["max_chunks"] == 20 and data["tracking"]["run_name"] == ""


def test_print_config_trains_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    print_config(capsys, "--test")
    assert list(tmp_path.iterdir()) == []  # no outputs/ folder, no mlflow.db
    assert main(["train", "--print-config", "--resume", "auto"]) == 2


def test_print_config_from_the_real_command(tmp_path):
    result = run_cli("train", "--config", str(CONFIGS / "small.yaml"), "--lr", "0.003", "--print-config",
                     cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load(result.stdout)["train"]["lr"] == 0.003
    assert list(tmp_path.iterdir()) == []


# The shipped configs -------------------------------------------------------------------------

def test_the_shipped_configs_are_valid_and_say_what_they_are_for():
    names = sorted(path.name for path in CONFIGS.glob("*.yaml"))
    assert {"small.yaml", "gpt2.yaml", "test.yaml"} <= set(names)
    for name in names:
        path = CONFIGS / name
        assert path.read_text().startswith("# "), f"{name} has no comment header"
        preset, _ = read_config_file(path)
        assert preset == name.removesuffix(".yaml")
        build_config_with_file(None, str(path))
    # small.yaml and test.yaml spell their presets out: the same configs.
    assert build_config_with_file(None, str(CONFIGS / "small.yaml")) == build_config("small")
    assert build_config_with_file(None, str(CONFIGS / "test.yaml")) == build_config("test")
    gpt2 = build_config_with_file(None, str(CONFIGS / "gpt2.yaml"))
    assert gpt2.model == build_config("gpt2").model and gpt2.data.tokenizer == "gpt2"


# The gpt2 preset -----------------------------------------------------------------------------

def gpt2_parameters(model: ModelConfig) -> int:
    """GPT's parameters counted by hand: embeddings (tied head), blocks, final LayerNorm."""
    C, L = model.n_embd, model.n_layer
    block = (2 * C) + (3 * C * C + 3 * C) + (C * C + C) + (2 * C) + (4 * C * C + 4 * C) + (4 * C * C + C)
    return model.vocab_size * C + model.block_size * C + L * block + 2 * C


def test_the_gpt2_preset_has_124m_parameters_with_a_50k_vocabulary():
    import torch

    from slimtrack.train.model import GPT

    config = build_config("gpt2")
    assert (config.model.n_layer, config.model.n_head, config.model.n_embd, config.model.block_size) == (
        12, 12, 768, 1024)
    assert config.data.seq_len == 1024 and config.train.lr == 6e-4
    config.model.vocab_size = 50_304  # GPT-2's 50,257 tokens, padded to a multiple of 64
    with torch.device("meta"):  # shapes only: no 124M floats allocated
        model = GPT(config.model, "torch")
    assert model.num_parameters() == gpt2_parameters(config.model)
    assert abs(model.num_parameters() - 124_000_000) <= 1_000_000, model.num_parameters()
    config.model.vocab_size = 320  # the byte tokenizer's
    assert 85_000_000 < gpt2_parameters(config.model) < 87_000_000


# MLproject -----------------------------------------------------------------------------------

def mlproject_config(**user_parameters: str):
    """The config `mlflow run . -P k=v ...` trains: MLproject's command with the defaults and
    the given parameters substituted, each shell-quoted as MLflow quotes it."""
    entry = yaml.safe_load((REPO / "MLproject").read_text())["entry_points"]["main"]
    values = {name: str(spec["default"]) for name, spec in entry["parameters"].items()}
    unknown = set(user_parameters) - set(values)
    assert not unknown, unknown
    values.update(user_parameters)
    argv = shlex.split(entry["command"].format(**{name: shlex.quote(value) for name, value in values.items()}))
    assert argv[:4] == ["python", "-m", "slimtrack", "train"]
    return parse(*argv[4:])


def test_mlproject_exposes_what_a_sweep_varies():
    parameters = yaml.safe_load((REPO / "MLproject").read_text())["entry_points"]["main"]["parameters"]
    assert {"lr", "batch_size", "seq_len", "grad_accum", "n_layer", "n_head", "n_embd", "warmup_steps",
            "weight_decay", "preset", "max_chunks", "config", "test", "viz_interval", "checkpoint_interval",
            "dataset", "tokenizer", "seed", "kernels"} <= set(parameters)


def test_mlproject_test_true_alone_is_slimtrack_train_test():
    assert mlproject_config(test="true") == parse("--test") == build_config("test")
    assert mlproject_config(test="true").train.max_chunks == 20
    assert mlproject_config(test="true").train.viz_interval == 10


def test_mlproject_parameters_override_only_when_set():
    assert mlproject_config() == build_config("small")
    assert mlproject_config(max_chunks="100") == build_config("small", max_chunks=100)
    assert mlproject_config(preset="medium", lr="0.0003", grad_accum="2") == build_config(
        "medium", lr=3e-4, grad_accum=2)
    sweep = mlproject_config(test="true", n_layer="3", n_head="4", n_embd="96", batch_size="4", seq_len="32",
                             warmup_steps="1", weight_decay="0.05", max_chunks="12", viz_interval="6")
    assert sweep == build_config("test", n_layer=3, n_head=4, n_embd=96, batch_size=4, seq_len=32,
                                 warmup_steps=1, weight_decay=0.05, max_chunks=12, viz_interval=6)


def test_mlproject_takes_a_config_file():
    gpt2 = mlproject_config(config=str(CONFIGS / "gpt2.yaml"))
    assert gpt2 == build_config_with_file(None, str(CONFIGS / "gpt2.yaml")) and gpt2.preset == "gpt2"
    assert mlproject_config(config=str(CONFIGS / "gpt2.yaml"), max_chunks="5").train.max_chunks == 5


# A run trained from a config file ------------------------------------------------------------

RUN_FILE = """\
preset: test
model:
  n_layer: 1
data:
  batch_size: 4
  seq_len: 32
train:
  max_chunks: 4
  lr: 0.002
  eval_interval: 2
  viz_interval: 3
  kernels: torch
  seed: 7
tracking:
  experiment: from-file
  run_name: config-file-run
"""


@pytest.mark.slow
def test_a_run_trained_from_a_config_file(tmp_path, mlflow_store):
    from mlflow import MlflowClient
    from mlflow.artifacts import download_artifacts

    path = write(tmp_path, "run.yaml", RUN_FILE)
    code = main(["train", "--config", path, "--max-chunks", "3", "--output-dir", str(tmp_path / "out"),
                 "--no-log-model"])
    assert code == 0
    client = MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name("from-file").experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED" and run.info.run_name == "config-file-run"
    params = run.data.params
    assert params["config.preset"] == "test"
    for section, values in yaml.safe_load(RUN_FILE).items():
        if section == "preset":
            continue
        for name, value in values.items():
            expected = "3" if (section, name) == ("train", "max_chunks") else str(value)  # the flag wins
            assert params[f"{section}.{name}"] == expected, (section, name)
    assert params["tracking.log_model"] == "False" and params["model.n_embd"] == "64"  # flag; preset

    # config.yaml: in the output folder and in the run, a --config file of the same params.
    assert "config.yaml" in {a.path for a in client.list_artifacts(run.info.run_id)}
    logged = download_artifacts(run_id=run.info.run_id, artifact_path="config.yaml", dst_path=str(tmp_path / "dl"))
    assert Path(logged).read_text() == (tmp_path / "out" / "config.yaml").read_text()
    again = build_config_with_file(None, logged).as_params()
    assert {key: value for key, value in again.items() if key != "model.vocab_size"} == {
        key: value for key, value in params.items() if key in again and key != "model.vocab_size"}
