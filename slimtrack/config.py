"""Configuration: four dataclasses (model, data, train, tracking) and the presets.

Every field has a one-line doc in the comment beside it; validation lives in
``__post_init__`` so a bad value fails as a ``UserError`` (CLI exit status 2)
before any heavy work starts. The CLI and the MLproject parameters map onto
these fields; ``Config.as_params()`` flattens them into the MLflow params of a run.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from slimtrack.errors import UserError

KERNELS = ("native", "torch")
DEVICES = ("auto", "cpu", "cuda")


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise UserError(message)


@dataclass
class ModelConfig:
    n_layer: int = 4  # transformer blocks
    n_head: int = 4  # attention heads per block
    n_embd: int = 256  # residual stream width (must divide by n_head)
    block_size: int = 256  # longest context the position embedding covers
    vocab_size: int = 320  # set from the tokenizer (padded to a multiple of 64)
    dropout: float = 0.0  # dropout in attention and MLP (0 = deterministic)

    def __post_init__(self) -> None:
        for name in ("n_layer", "n_head", "n_embd", "block_size", "vocab_size"):
            _require(getattr(self, name) > 0, f"model.{name} must be positive, got {getattr(self, name)}")
        _require(self.n_embd % self.n_head == 0,
                 f"model.n_embd ({self.n_embd}) must be divisible by model.n_head ({self.n_head})")
        _require(0.0 <= self.dropout < 1.0, f"model.dropout must be in [0, 1), got {self.dropout}")


@dataclass
class DataConfig:
    dataset: str = "embedded"  # "embedded", a local SlimPajama folder/file, or a hub id
    tokenizer: str = "byte"  # "byte", a tokenizer.json path, or a hub tokenizer name
    batch_size: int = 16  # rows per chunk (B)
    seq_len: int = 128  # tokens per row the model sees (T); a chunk is B x (T+1) tokens

    def __post_init__(self) -> None:
        _require(self.batch_size > 0, f"--batch-size must be positive, got {self.batch_size}")
        _require(self.seq_len > 0, f"--seq-len must be positive, got {self.seq_len}")
        _require(bool(self.dataset), "--dataset must not be empty")
        _require(bool(self.tokenizer), "--tokenizer must not be empty")


@dataclass
class TrainConfig:
    max_chunks: int = 1000  # optimizer steps; one chunk = one step's worth of tokens
    lr: float = 1e-3  # peak learning rate
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 20  # linear warmup from 0 to lr
    weight_decay: float = 0.1  # AdamW decoupled weight decay (matrices only)
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # clip the global gradient norm (0 disables)
    eval_interval: int = 100  # validation loss/accuracy every N steps (and at the end)
    eval_chunks: int = 4  # validation chunks per evaluation
    checkpoint_interval: int = 2000  # checkpoint every N steps (and at the end)
    keep_checkpoints: int = 3  # newest checkpoints kept on disk
    viz_interval: int = 50  # dashboard every N steps (and at the end)
    log_interval: int = 10  # console log line every N steps
    seed: int = 1337
    device: str = "auto"  # auto | cpu | cuda
    kernels: str = "native"  # native (numba kernels) | torch (F.cross_entropy + AdamW)
    num_threads: int = 0  # torch and numba threads; 0 = this process's share of the cores
    output_dir: str = ""  # local files of the run; "" = outputs/<timestamp>-<run name>

    def __post_init__(self) -> None:
        for name in ("max_chunks", "eval_interval", "checkpoint_interval", "viz_interval",
                     "log_interval", "eval_chunks", "keep_checkpoints"):
            value = getattr(self, name)
            _require(value > 0, f"--{name.replace('_', '-')} must be positive, got {value}")
        _require(self.lr > 0, f"--lr must be positive, got {self.lr}")
        _require(0.0 <= self.min_lr_ratio <= 1.0, f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        _require(self.warmup_steps >= 0, f"--warmup-steps must be >= 0, got {self.warmup_steps}")
        _require(self.weight_decay >= 0, f"--weight-decay must be >= 0, got {self.weight_decay}")
        _require(0 <= self.beta1 < 1 and 0 <= self.beta2 < 1, "betas must be in [0, 1)")
        _require(self.grad_clip >= 0, f"--grad-clip must be >= 0, got {self.grad_clip}")
        _require(self.device in DEVICES, f"--device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        _require(self.kernels in KERNELS, f"--kernels must be one of {', '.join(KERNELS)}, got {self.kernels!r}")
        _require(self.num_threads >= 0, f"--num-threads must be >= 0, got {self.num_threads}")


@dataclass
class TrackingConfig:
    enabled: bool = True  # False (--no-tracking): the same loop with no MLflow at all
    experiment: str = "slimtrack"  # MLflow experiment (ignored when attached via MLFLOW_RUN_ID)
    run_name: str = ""  # "" = a name that says what differs (preset, dataset, kernels, id)
    log_model: bool = True  # False (--no-log-model): no final model export (pt2) into the run
    log_linger: float = 5.0  # seconds a record may wait to share one MLflow call with the next ones
    replay_interval: float = 10.0  # offline: seconds between attempts to deliver the spool
    final_replay_timeout: float = 30.0  # offline at the end: seconds to keep trying before leaving the spool
    mlflow_process: bool = True  # MLflow's calls run in a child process, off the training process's GIL

    def __post_init__(self) -> None:
        _require(bool(self.experiment), "--experiment must not be empty")
        for name in ("log_linger", "replay_interval", "final_replay_timeout"):
            value = getattr(self, name)
            _require(value >= 0, f"--{name.replace('_', '-')} must be >= 0, got {value}")


@dataclass
class RuntimeConfig:
    background_nice: int = 10  # how much nicer than the training threads the dashboard and MLflow work runs
    malloc_tuning: bool = True  # glibc keeps the step's freed buffers for the next step (Linux)
    onednn_linear: bool = True  # native kernels on CPU: the linear layers' products run on oneDNN
    cuda_fast_launch: bool = True  # CUDA kernels launch through cuda.core instead of numba's dispatcher

    def __post_init__(self) -> None:
        _require(0 <= self.background_nice <= 19, f"--background-nice must be in [0, 19], got {self.background_nice}")


@dataclass
class Config:
    preset: str = "small"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    def __post_init__(self) -> None:
        _require(self.data.seq_len <= self.model.block_size,
                 f"--seq-len ({self.data.seq_len}) exceeds the model's context "
                 f"(block_size {self.model.block_size}) of preset {self.preset!r}")

    @property
    def tokens_per_chunk(self) -> int:
        return self.data.batch_size * self.data.seq_len

    def as_dict(self) -> dict[str, Any]:
        """Plain nested dict (checkpoints store this; ``config_from_dict`` reads it back)."""
        return dataclasses.asdict(self)

    def as_params(self) -> dict[str, str]:
        """Flat ``section.field -> str`` view, the run's MLflow params (stable names)."""
        # "config.preset", not "preset": `mlflow run` logs its own -P preset (which --test overrides).
        params: dict[str, str] = {"config.preset": self.preset}
        for section in SECTIONS:
            for key, value in dataclasses.asdict(getattr(self, section)).items():
                params[f"{section}.{key}"] = str(value)
        return params


# Presets: sizes only. Everything else keeps the dataclass defaults.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # Seconds on a laptop CPU: a tiny model for smoke tests and CI.
    "test": {
        "model": dict(n_layer=2, n_head=2, n_embd=64, block_size=64),
        "data": dict(batch_size=8, seq_len=64),
        "train": dict(max_chunks=20, warmup_steps=4, eval_interval=10, eval_chunks=2,
                      viz_interval=10, log_interval=5),
    },
    # The default: a few million parameters, a few minutes for 100 chunks on CPU.
    "small": {
        "model": dict(n_layer=4, n_head=4, n_embd=256, block_size=256),
        "data": dict(batch_size=16, seq_len=128),
        "train": dict(max_chunks=1000, warmup_steps=20),
    },
    # A GPU-sized model (~30M parameters with a byte vocabulary).
    "medium": {
        "model": dict(n_layer=8, n_head=8, n_embd=512, block_size=1024),
        "data": dict(batch_size=32, seq_len=512),
        "train": dict(max_chunks=5000, warmup_steps=200, lr=6e-4, eval_interval=250),
    },
}


def build_config(preset: str = "small", **overrides: Any) -> Config:
    """A validated Config: the preset's values, then ``overrides`` (``section.field`` or field).

    ``overrides`` keys are field names (``max_chunks``) or qualified names
    (``train.max_chunks``); values of None are ignored so a CLI can pass every flag.
    """
    if preset not in PRESETS:
        raise UserError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    sections: dict[str, dict[str, Any]] = {name: dict(values) for name, values in PRESETS[preset].items()}
    for section in SECTIONS:
        sections.setdefault(section, {})
    for key, value in overrides.items():
        if value is None:
            continue
        section, name = _locate(key)
        sections[section][name] = value
    return _config(preset, sections)


def config_from_dict(values: dict[str, Any], **overrides: Any) -> Config:
    """A Config from ``Config.as_dict()`` output (a checkpoint's), then ``overrides``."""
    sections = {name: dict(values.get(name, {})) for name in SECTIONS}  # older checkpoints lack "runtime"
    for key, value in overrides.items():
        if value is not None:
            section, name = _locate(key)
            sections[section][name] = value
    return _config(values["preset"], sections)


def _config(preset: str, sections: dict[str, dict[str, Any]]) -> Config:
    return Config(preset=preset, **{name: cls(**sections[name]) for name, cls in _SECTION_TYPES.items()})


_SECTION_TYPES = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig, "tracking": TrackingConfig,
                  "runtime": RuntimeConfig}
SECTIONS = tuple(_SECTION_TYPES)


def _locate(key: str) -> tuple[str, str]:
    """Which section a (possibly qualified) field name belongs to."""
    if "." in key:
        section, name = key.split(".", 1)
        if section in _SECTION_TYPES and name in {f.name for f in dataclasses.fields(_SECTION_TYPES[section])}:
            return section, name
    else:
        for section, cls in _SECTION_TYPES.items():
            if key in {f.name for f in dataclasses.fields(cls)}:
                return section, key
    raise UserError(f"unknown config field {key!r}")
