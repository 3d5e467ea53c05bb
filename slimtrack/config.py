"""Configuration: five dataclasses (model, data, train, tracking, runtime) and the presets.

Every field is declared once, with ``setting(default, help)``: its one-line doc lives in
the field's metadata, and the command line derives each flag from it (name, help, type,
default, choices; see ``cli.py``). Validation lives in ``__post_init__`` so a bad value
fails as a ``UserError`` (CLI exit status 2) before any heavy work starts.
``Config.as_params()`` flattens every field, behaviour switches included, into the MLflow
params of a run. Config files (``--config``, ``--print-config``) are config_files.py's.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Any, Iterator

from slimtrack.errors import UserError

MAX_RUN_NAME = 200  # the run's folder is <time>-<run name>; file systems allow 255 bytes
KERNELS = ("native", "torch")
DEVICES = ("auto", "cpu", "cuda")
LOG_CHECKPOINTS = ("none", "last", "all")


def setting(default: Any, help: str, *, choices: tuple[str, ...] | None = None, flag: str | None = None,
            cli: bool = True) -> Any:
    """A config field with its doc: ``help`` is the flag's help text, ``choices`` its allowed
    values, ``flag`` its name when it is not the field's name with dashes, and ``cli=False``
    keeps it off the command line (a value slimtrack sets itself)."""
    return field(default=default, metadata={"help": help, "choices": choices, "flag": flag, "cli": cli})


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise UserError(message)


@dataclass
class ModelConfig:
    n_layer: int = setting(4, "transformer blocks")
    n_head: int = setting(4, "attention heads per block")
    n_embd: int = setting(256, "residual stream width (must divide by --n-head)")
    block_size: int = setting(256, "longest context the position embedding covers")
    vocab_size: int = setting(320, "set from the tokenizer (padded to a multiple of 64)", cli=False)
    dropout: float = setting(0.0, "dropout in attention and MLP (0 = deterministic)")

    def __post_init__(self) -> None:
        for name in ("n_layer", "n_head", "n_embd", "block_size", "vocab_size"):
            _require(getattr(self, name) > 0, f"model.{name} must be positive, got {getattr(self, name)}")
        _require(self.n_embd % self.n_head == 0,
                 f"model.n_embd ({self.n_embd}) must be divisible by model.n_head ({self.n_head})")
        _require(0.0 <= self.dropout < 1.0, f"model.dropout must be in [0, 1), got {self.dropout}")


@dataclass
class DataConfig:
    dataset: str = setting("embedded", "embedded, a local SlimPajama folder or file, or a hub id")
    tokenizer: str = setting("byte", "byte, a tokenizer.json path, or a hub tokenizer name")
    batch_size: int = setting(16, "rows per chunk (B)")
    seq_len: int = setting(128, "tokens per row the model sees (T); a chunk is B x (T+1) tokens")

    def __post_init__(self) -> None:
        _require(self.batch_size > 0, f"--batch-size must be positive, got {self.batch_size}")
        _require(self.seq_len > 0, f"--seq-len must be positive, got {self.seq_len}")
        _require(bool(self.dataset), "--dataset must not be empty")
        _require(bool(self.tokenizer), "--tokenizer must not be empty")


@dataclass
class TrainConfig:
    max_chunks: int = setting(1000, "optimizer steps; one chunk = one step's worth of tokens")
    lr: float = setting(1e-3, "peak learning rate")
    min_lr_ratio: float = setting(0.1, "cosine decays to lr * min_lr_ratio")
    warmup_steps: int = setting(20, "linear warmup from 0 to lr")
    weight_decay: float = setting(0.1, "AdamW decoupled weight decay (matrices only)")
    beta1: float = setting(0.9, "AdamW's decay of the gradient's running mean")
    beta2: float = setting(0.95, "AdamW's decay of the squared gradient's running mean")
    grad_clip: float = setting(1.0, "clip the global gradient norm (0 disables)")
    eval_interval: int = setting(100, "validation loss/accuracy every N steps (and at the end)")
    eval_chunks: int = setting(4, "validation chunks per evaluation")
    checkpoint_interval: int = setting(2000, "checkpoint every N steps (and at the end)")
    keep_checkpoints: int = setting(3, "newest checkpoints kept on disk")
    viz_interval: int = setting(50, "dashboard, samples and JSON exports every N steps (and at the end)")
    log_interval: int = setting(10, "console log line every N steps")
    seed: int = setting(1337, "seed of torch's, numpy's and Python's random generators")
    device: str = setting("auto", "auto (cuda if available, else cpu), cpu or cuda", choices=DEVICES)
    kernels: str = setting("native", "native (numba kernels, oneDNN linear layers) or torch "
                           "(F.cross_entropy + AdamW)", choices=KERNELS)
    num_threads: int = setting(0, "torch and numba threads; 0 = this process's share of the cores")
    grad_accum: int = setting(1, "micro-batches per optimizer step (each one chunk of batch_size rows)")
    peak_tflops: float = setting(0.0, "the device's peak TFLOP/s for mfu; 0 = a known GPU's bf16 peak, or a "
                                 "matmul probe at start on CPU")
    sample_prompts: int = setting(4, "validation prompts continued at every viz interval (0 = no samples)")
    sample_tokens: int = setting(64, "tokens generated per prompt at every viz interval")
    sample_temperature: float = setting(0.8, "sampling temperature of the generated samples (0 = greedy)")
    output_dir: str = setting("", "local files of the run; empty = outputs/<timestamp>-<run name>")

    def __post_init__(self) -> None:
        for name in ("max_chunks", "eval_interval", "checkpoint_interval", "viz_interval",
                     "log_interval", "eval_chunks", "keep_checkpoints"):
            value = getattr(self, name)
            _require(value > 0, f"--{name.replace('_', '-')} must be positive, got {value}")
        for name in ("lr", "min_lr_ratio", "weight_decay", "beta1", "beta2", "grad_clip"):
            value = getattr(self, name)
            _require(math.isfinite(value), f"--{name.replace('_', '-')} must be a finite number, got {value}")
        _require(self.lr > 0, f"--lr must be positive, got {self.lr}")
        _require(0.0 <= self.min_lr_ratio <= 1.0, f"--min-lr-ratio must be in [0, 1], got {self.min_lr_ratio}")
        _require(self.warmup_steps >= 0, f"--warmup-steps must be >= 0, got {self.warmup_steps}")
        _require(self.weight_decay >= 0, f"--weight-decay must be >= 0, got {self.weight_decay}")
        _require(0 <= self.beta1 < 1 and 0 <= self.beta2 < 1, "--beta1 and --beta2 must be in [0, 1)")
        _require(self.grad_clip >= 0, f"--grad-clip must be >= 0, got {self.grad_clip}")
        _require(self.device in DEVICES, f"--device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        _require(self.kernels in KERNELS, f"--kernels must be one of {', '.join(KERNELS)}, got {self.kernels!r}")
        _require(self.num_threads >= 0, f"--num-threads must be >= 0, got {self.num_threads}")
        _require(self.grad_accum > 0, f"--grad-accum must be positive, got {self.grad_accum}")
        for name in ("peak_tflops", "sample_temperature"):
            value = getattr(self, name)
            _require(math.isfinite(value) and value >= 0,
                     f"--{name.replace('_', '-')} must be a finite number >= 0, got {value}")
        _require(self.sample_prompts >= 0, f"--sample-prompts must be >= 0, got {self.sample_prompts}")
        _require(self.sample_tokens > 0, f"--sample-tokens must be positive, got {self.sample_tokens}")


@dataclass
class TrackingConfig:
    enabled: bool = setting(True, "track the run in MLflow (--no-tracking: the same loop with no MLflow "
                            "at all)", flag="tracking")
    experiment: str = setting("slimtrack", "MLflow experiment (ignored when attached via MLFLOW_RUN_ID)")
    run_name: str = setting("", "MLflow run name; empty = a name that says what differs "
                            "(preset, dataset, kernels, id)")
    log_model: bool = setting(True, "log the final model export (pt2) into the run; checkpoints stay "
                              "either way")
    log_linger: float = setting(5.0, "seconds a record may wait to share one MLflow call with the next ones")
    replay_interval: float = setting(10.0, "offline: seconds between attempts to deliver the spool")
    final_replay_timeout: float = setting(30.0, "offline at the end: seconds to keep trying before "
                                          "leaving the spool")
    mlflow_process: bool = setting(True, "MLflow's calls run in a child process, off the training "
                                   "process's GIL (else in a thread of the training process)")
    system_metrics: bool = setting(True, "MLflow's system metrics (CPU, memory, disk, network; GPU on "
                                   "CUDA) sampled in the MLflow process")
    system_metrics_interval: float = setting(10.0, "seconds between two system-metrics samples")
    log_checkpoints: str = setting("last", "checkpoints uploaded to the run: none, last (only the newest "
                                   "stays in the store) or all", choices=LOG_CHECKPOINTS)
    register_model: str = setting("", "register the final model as a new version of this model name "
                                  "(empty = no registration)")
    program_cache: str = setting("", "folder of exported model programs reused by later runs of the same "
                                 "architecture ('' = ~/.cache/slimtrack/programs, 'off' = export every time)")

    def __post_init__(self) -> None:
        _require(bool(self.experiment), "--experiment must not be empty")
        _require(len(self.run_name) <= MAX_RUN_NAME, f"--run-name must be at most {MAX_RUN_NAME} characters "
                 f"(it names the run's folder), got {len(self.run_name)}")
        _require(self.log_checkpoints in LOG_CHECKPOINTS,
                 f"--log-checkpoints must be one of {', '.join(LOG_CHECKPOINTS)}, got {self.log_checkpoints!r}")
        for name in ("log_linger", "replay_interval", "final_replay_timeout", "system_metrics_interval"):
            value = getattr(self, name)
            _require(math.isfinite(value) and value >= 0,
                     f"--{name.replace('_', '-')} must be a finite number >= 0, got {value}")


@dataclass
class RuntimeConfig:
    background_nice: int = setting(10, "how much nicer than the training threads the dashboard and "
                                   "MLflow work runs (Linux; 0 = same priority)")
    malloc_tuning: bool = setting(True, "glibc keeps the step's freed buffers for the next step "
                                  "instead of returning them to the OS (Linux)")
    onednn_linear: bool = setting(True, "with native kernels on CPU, the linear layers' products run "
                                  "on oneDNN (else torch's default, MKL)")
    cuda_fast_launch: bool = setting(True, "CUDA kernels launch through cuda.core instead of numba's "
                                     "dispatcher")

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
    # A tiny model for smoke tests and CI.
    "test": {
        "model": dict(n_layer=2, n_head=2, n_embd=64, block_size=64),
        "data": dict(batch_size=8, seq_len=64),
        "train": dict(max_chunks=20, warmup_steps=4, eval_interval=10, eval_chunks=2,
                      viz_interval=10, log_interval=5),
    },
    # The default: a few million parameters, sized for a CPU.
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
    # GPT-2 small's shape, for one GPU: ~124M parameters with GPT-2's vocabulary (50,257 tokens,
    # padded to 50,304; --tokenizer gpt2), ~86M with the byte tokenizer (its embedding is tiny).
    # A step is 16 x 1024 tokens; --grad-accum N makes it N times larger.
    "gpt2": {
        "model": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024),
        "data": dict(batch_size=16, seq_len=1024),
        "train": dict(max_chunks=10000, warmup_steps=500, lr=6e-4, eval_interval=500, eval_chunks=20,
                      checkpoint_interval=1000, viz_interval=250),
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
        section, name = locate_field(key)
        sections[section][name] = value
    return _config(preset, sections)


def config_from_dict(values: dict[str, Any], **overrides: Any) -> Config:
    """A Config from ``Config.as_dict()`` output (a checkpoint's), then ``overrides``."""
    sections = {name: dict(values.get(name, {})) for name in SECTIONS}  # older checkpoints lack "runtime"
    for key, value in overrides.items():
        if value is not None:
            section, name = locate_field(key)
            sections[section][name] = value
    return _config(values["preset"], sections)


def _config(preset: str, sections: dict[str, dict[str, Any]]) -> Config:
    return Config(preset=preset, **{name: cls(**sections[name]) for name, cls in SECTION_TYPES.items()})


SECTION_TYPES: dict[str, type] = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig,
                                  "tracking": TrackingConfig, "runtime": RuntimeConfig}
SECTIONS = tuple(SECTION_TYPES)


@dataclass(frozen=True)
class FieldInfo:
    """One config field as the command line sees it."""

    section: str
    name: str
    type: type  # int, float, str or bool
    default: Any  # the dataclass default (the small preset's value)
    help: str
    choices: tuple[str, ...] | None
    flag: str  # without the leading dashes
    cli: bool

    @property
    def key(self) -> str:
        """The qualified name, ``section.field`` (as in the MLflow params)."""
        return f"{self.section}.{self.name}"


def config_fields() -> Iterator[FieldInfo]:
    """Every field of every section, in declaration order."""
    for section, cls in SECTION_TYPES.items():
        types = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            meta = f.metadata
            yield FieldInfo(section, f.name, types[f.name], f.default, meta.get("help", ""), meta.get("choices"),
                            meta.get("flag") or f.name.replace("_", "-"), meta.get("cli", True))


def locate_field(key: str) -> tuple[str, str]:
    """Which section a (possibly qualified) field name belongs to."""
    if "." in key:
        section, name = key.split(".", 1)
        if section in SECTION_TYPES and name in {f.name for f in dataclasses.fields(SECTION_TYPES[section])}:
            return section, name
    else:
        for section, cls in SECTION_TYPES.items():
            if key in {f.name for f in dataclasses.fields(cls)}:
                return section, key
    raise UserError(f"unknown config field {key!r}")
