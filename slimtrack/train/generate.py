"""Text from a trained model: load it from a checkpoint, and continue prompts.

``load_generator(source)`` finds a checkpoint (a checkpoint file, a run's output folder, or an
MLflow run id whose ``slimtrack.output_dir`` tag names that folder; a folder or run gives its
newest checkpoint that loads), rebuilds the model from the config stored in it, and loads the
tokenizer that config names. ``TextGenerator.continuations`` then returns the text each prompt
continues with. ``run_generate`` is the ``slimtrack generate`` subcommand: it prints the prompt
followed by its continuation, one block per sample.

Everything here reads: a checkpoint, the run's folder and (for a run id) the run's tags. Nothing
is written to the tracking store, and a checkpoint or folder source needs no network.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence, TextIO

import torch

from slimtrack.config import Config, config_from_dict
from slimtrack.data.tokenizer import Tokenizer, load_tokenizer
from slimtrack.errors import UserError
from slimtrack.train.checkpoint import load_checkpoint
from slimtrack.train.model import GPT

CHECKPOINTS = "checkpoints"  # a run's checkpoints live in <output folder>/checkpoints


@dataclass
class Settings:
    """How ``slimtrack generate`` decodes: the flags of the subcommand."""

    max_new_tokens: int = 200
    temperature: float = 0.8  # 0 = greedy
    top_k: int | None = 50  # None = every token stays a candidate
    seed: int | None = None  # None = a fresh random seed
    num_samples: int = 1


@dataclass
class TextGenerator:
    """A model in eval mode on its device, with the tokenizer and config it trained with."""

    model: GPT
    tokenizer: Tokenizer
    config: Config
    device: torch.device
    checkpoint: Path | None = None  # where the weights came from

    def continuations(self, prompt: str, max_new_tokens: int, temperature: float = 0.8, top_k: int | None = 50,
                      seed: int | None = None, num_samples: int = 1) -> list[str]:
        """``num_samples`` continuations of ``prompt`` (the generated text only, without the
        prompt), drawn together as one batch. The same ``seed`` gives the same texts on the
        same device; ``temperature`` 0 is greedy (every sample is then the same)."""
        ids = self.tokenizer.encode(prompt)
        if not ids:
            raise UserError("the prompt is empty: nothing to continue")
        idx = torch.tensor([ids] * num_samples, dtype=torch.long, device=self.device)  # [N, T]
        generator = torch.Generator(device=self.device)
        if seed is None:
            generator.seed()
        else:
            generator.manual_seed(seed)
        out = self.model.generate(idx, max_new_tokens, temperature=temperature, top_k=top_k,
                                  generator=generator)  # [N, T + max_new_tokens]
        return [self.tokenizer.decode(row[len(ids):].tolist()) for row in out]


def load_generator(source: str, device: str = "auto") -> TextGenerator:
    """The model of ``source`` (a checkpoint file, a run's output folder, or a run id) on
    ``device`` ("auto": CUDA when torch sees it, else the CPU). Every way it can fail is a
    UserError of one line."""
    from slimtrack.train.loop import resolve_device

    target = resolve_device(device)
    path, state = find_checkpoint(source)
    return generator_from_state(state, target, path)


def generator_from_state(state: dict[str, Any], device: torch.device, path: Path | None = None) -> TextGenerator:
    """A TextGenerator from a loaded checkpoint's state (its ``config`` and ``model``)."""
    if not isinstance(state, dict) or "config" not in state or "model" not in state:
        raise UserError(f"{path or 'the checkpoint'} is not a slimtrack checkpoint (it holds no config and model)")
    try:
        config = config_from_dict(state["config"])
    except (TypeError, KeyError) as exc:  # a config from an incompatible slimtrack version
        raise UserError(f"the config in {path or 'the checkpoint'} cannot be read: {exc}") from None
    tokenizer = load_tokenizer(config.data.tokenizer)
    model = GPT(config.model, kernels="torch")  # generation runs the eval path: no numba kernels
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise UserError(f"the weights in {path or 'the checkpoint'} do not fit the model its config "
                        f"describes ({first})") from None
    model.to(device).eval()
    return TextGenerator(model, tokenizer, config, device, path)


def find_checkpoint(source: str) -> tuple[Path, dict[str, Any]]:
    """The checkpoint ``source`` names, and its loaded state."""
    path = Path(source).expanduser()
    if path.is_file():
        return path, read_checkpoint(path)
    if path.is_dir():
        return newest_in_folder(path, run_id=None)
    if _looks_like_path(source):
        raise UserError(f"{source}: no such checkpoint file or output folder")
    return newest_in_folder(folder_of_run(source), run_id=source)


def read_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint file's state; a file that does not load is a UserError."""
    try:
        return load_checkpoint(path)
    except Exception as exc:  # noqa: BLE001 — truncated, not a checkpoint, or from an incompatible torch
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise UserError(f"checkpoint {path} cannot be read ({first})") from None


def newest_in_folder(folder: Path, run_id: str | None) -> tuple[Path, dict[str, Any]]:
    """The newest checkpoint that loads and belongs to ``run_id`` (any run when None), in a
    run's output folder (or in its ``checkpoints`` folder itself)."""
    from slimtrack.train.resume import newest_checkpoint

    if not folder.is_dir():  # a run id whose folder was moved, or is relative to another directory
        raise UserError(f"run {run_id}'s output folder {folder} is not here; pass the folder or a checkpoint file")
    directory = folder / CHECKPOINTS if (folder / CHECKPOINTS).is_dir() else folder
    path, state = newest_checkpoint(directory, run_id)
    if path is None or state is None:
        owner = f"of run {run_id} " if run_id else ""
        raise UserError(f"no checkpoint {owner}in {directory}")
    return path, state


def folder_of_run(run_id: str) -> Path:
    """The output folder a run's ``slimtrack.output_dir`` tag names (read from the tracking store)."""
    from slimtrack.analysis import get_run  # an unknown run is a UserError there

    folder = get_run(run_id).data.tags.get("slimtrack.output_dir")
    if not folder:
        raise UserError(f"run {run_id} has no slimtrack.output_dir tag; pass its output folder or a checkpoint file")
    return Path(folder)


def _looks_like_path(source: str) -> bool:
    """A source that is meant as a file or folder (a run id has neither slashes nor a suffix)."""
    return "/" in source or "\\" in source or source.endswith(".pt") or source.startswith((".", "~"))


def check_settings(prompt: str, settings: Settings) -> None:
    """Refuse bad flag values before anything loads."""
    if not prompt:
        raise UserError("--prompt must not be empty")
    if not settings.temperature >= 0:  # also refuses NaN
        raise UserError(f"--temperature must be 0 (greedy) or more, got {settings.temperature}")
    if settings.top_k is not None and settings.top_k < 1:
        raise UserError(f"--top-k must be positive, got {settings.top_k}")
    if settings.max_new_tokens < 0:
        raise UserError(f"--max-new-tokens must not be negative, got {settings.max_new_tokens}")
    if settings.num_samples < 1:
        raise UserError(f"--num-samples must be positive, got {settings.num_samples}")


def format_samples(prompt: str, continuations: Sequence[str]) -> str:
    """What ``slimtrack generate`` prints: each sample is the prompt followed by its
    continuation; with several, each starts with a ``--- sample i/N ---`` line."""
    if len(continuations) == 1:
        return prompt + continuations[0] + "\n"
    count = len(continuations)
    return "".join(f"--- sample {i}/{count} ---\n{prompt}{text}\n" for i, text in enumerate(continuations, start=1))


def run_generate(source: str, prompt: str, settings: Settings, device: str = "auto",
                 out: TextIO | None = None) -> None:
    """``slimtrack generate``: load the model of ``source`` and print the samples to ``out``
    (stdout by default)."""
    check_settings(prompt, settings)
    generator = load_generator(source, device)
    texts = generator.continuations(prompt, settings.max_new_tokens, settings.temperature, settings.top_k,
                                    settings.seed, settings.num_samples)
    stream = out or sys.stdout
    stream.write(format_samples(prompt, texts))
    stream.flush()
