"""Text the model writes while it trains, and the bytes its validation text is worth.

At set-up, rank 0 takes ``sample_prompts`` prompts once from the validation chunks
(``validation_prompts``): the first documents of the validation text, each cut to
``PROMPT_TOKENS`` tokens, with the tokens that truly follow them. The prompts are the same
at every viz interval, so the dashboard shows the same prompts improve. ``TextSampler``
continues them at a step boundary, on the training device, in eval mode (``GPT.generate``
restores train mode after): seeded sampling at ``sample_temperature`` with the same seed at
every interval (differences between intervals come from the weights), or greedy at
temperature 0. Its own ``torch.Generator`` draws the tokens: the training RNG state is never
touched, so a run samples or not and trains the same.

A sample row: ``step``, ``prompt``, ``generated`` (the continuation the model wrote),
``true_continuation`` (the validation text's next tokens) and ``accuracy`` (the model's
teacher-forced next-token accuracy on the true continuation): ``dashboard.manager.SAMPLE_COLUMNS``.

``token_byte_lengths`` gives each token id's length in UTF-8 bytes: the trainer's
``evaluate`` divides the validation loss by the bytes of its target tokens (``val_bpb``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from slimtrack.config import Config

log = logging.getLogger(__name__)

PROMPT_TOKENS = 32  # tokens of each prompt (at most half the model's block_size)


@dataclass(frozen=True)
class Prompt:
    """One fixed prompt: its token ids and the ids that follow it in the validation text."""

    ids: list[int]
    continuation: list[int]


def validation_prompts(val_chunks: Sequence[Any], count: int, new_tokens: int, block_size: int,
                       eos_id: int) -> list[Prompt]:
    """``count`` prompts of the validation text, the same for every run of that data.

    The chunks' rows are consecutive pieces of one token stream, read here in order. A prompt
    starts where a document starts (the stream's start, or after an EOS) and holds no EOS;
    when there are fewer such documents, non-overlapping windows of the stream fill in. Each
    prompt has ``min(PROMPT_TOKENS, block_size // 2)`` tokens and its true continuation
    ``min(new_tokens, block_size - prompt length)`` tokens, so prompt and continuation fit in
    one forward pass."""
    if count <= 0 or not val_chunks:
        return []
    stream = torch.cat([chunk.tokens.reshape(-1) for chunk in val_chunks]).tolist()
    prompt_len = max(1, min(PROMPT_TOKENS, block_size // 2))
    true_len = max(1, min(new_tokens, block_size - prompt_len))
    window = prompt_len + true_len
    last_start = len(stream) - window
    starts: list[int] = []
    document_starts = [0] + [i + 1 for i, token in enumerate(stream) if token == eos_id]
    for start in document_starts:
        if len(starts) == count or start > last_start:
            break
        if eos_id not in stream[start:start + prompt_len]:
            starts.append(start)
    for start in range(0, last_start + 1, window):  # too few documents: plain windows fill in
        if len(starts) == count:
            break
        if all(abs(start - taken) >= window for taken in starts):
            starts.append(start)
    return [Prompt(stream[s:s + prompt_len], stream[s + prompt_len:s + window]) for s in sorted(starts)]


class TextSampler:
    """Continues the fixed prompts with the training model; ``sample(step)`` gives the rows."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, device: torch.device, prompts: list[Prompt],
                 new_tokens: int, temperature: float, seed: int) -> None:
        self.model = model  # the GPT itself (never the DDP wrapper: only rank 0 samples)
        self.tokenizer = tokenizer
        self.device = device
        self.prompts = prompts
        self.new_tokens = new_tokens
        self.temperature = temperature
        self.seed = seed
        self.prompt_texts = [tokenizer.decode(p.ids) for p in prompts]
        self.true_texts = [tokenizer.decode(p.continuation) for p in prompts]
        self._failed = False

    def sample(self, step: int) -> list[dict[str, Any]]:
        """One row per prompt for the weights of ``step``; [] when sampling fails (a warning
        is logged once: a failed sample never stops training)."""
        if not self.prompts:
            return []
        try:
            generated = self._generate()
            accuracies = self._teacher_forced_accuracy()
        except Exception:  # noqa: BLE001 — e.g. non-finite weights: multinomial refuses NaN
            if not self._failed:
                log.warning("text samples at step %d failed; training goes on", step, exc_info=True)
            self._failed = True
            return []
        return [{"step": step, "prompt": prompt, "generated": text, "true_continuation": true,
                 "accuracy": accuracy}
                for prompt, text, true, accuracy in zip(self.prompt_texts, generated, self.true_texts, accuracies)]

    def _autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda")

    def _generate(self) -> list[str]:
        """The decoded continuations of all prompts, drawn as one batch."""
        idx = torch.tensor([p.ids for p in self.prompts], dtype=torch.long, device=self.device)  # [K, P]
        generator = torch.Generator(device=self.device)
        generator.manual_seed(self.seed)  # the same seed at every interval
        with self._autocast():
            out = self.model.generate(idx, self.new_tokens, temperature=self.temperature, generator=generator)
        return [self.tokenizer.decode(row) for row in out[:, idx.size(1):].tolist()]

    @torch.no_grad()
    def _teacher_forced_accuracy(self) -> list[float]:
        """Per prompt: the share of the true continuation's tokens the model predicts (argmax)
        from the prompt and the true tokens before each."""
        prompt_len = len(self.prompts[0].ids)
        rows = torch.tensor([p.ids + p.continuation for p in self.prompts], dtype=torch.long, device=self.device)
        targets = rows[:, prompt_len:]  # [K, N]
        was_training = self.model.training
        self.model.eval()
        try:
            with self._autocast():
                logits = self.model(rows[:, :-1])[:, prompt_len - 1:]  # [K, N, V]: predicts each true token
        finally:
            self.model.train(was_training)
        return (logits.argmax(dim=-1) == targets).float().mean(dim=1).tolist()


def make_sampler(config: Config, model: torch.nn.Module, tokenizer: Any, device: torch.device,
                 val_chunks: Sequence[Any]) -> TextSampler | None:
    """The run's sampler (rank 0), or None when it samples nothing (``sample_prompts`` 0, or
    no validation text)."""
    cfg = config.train
    prompts = validation_prompts(val_chunks, cfg.sample_prompts, cfg.sample_tokens, config.model.block_size,
                                 tokenizer.eos_id)
    if not prompts:
        return None
    return TextSampler(model, tokenizer, device, prompts, cfg.sample_tokens, cfg.sample_temperature, cfg.seed)


def token_byte_lengths(tokenizer: Any) -> torch.Tensor:
    """[vocab_size] int64: the UTF-8 bytes of each token's text. EOS, other special tokens and
    the padding ids count 0 bytes.

    Byte tokenizer: 1 for each byte token. A byte-level BPE ``tokenizer.json`` (GPT-2 style):
    its vocabulary spells each byte as one character, so a token's length is its bytes.
    Any other tokenizer: the bytes of the token decoded alone."""
    lengths = torch.zeros(tokenizer.vocab_size, dtype=torch.long)
    if tokenizer.name == "byte":
        lengths[:256] = 1
        return lengths
    inner = getattr(tokenizer, "_tokenizer", None)  # the tokenizers.Tokenizer of a HuggingFaceTokenizer
    if inner is None:
        for token in range(tokenizer.vocab_size):
            lengths[token] = len(tokenizer.decode([token]).encode("utf-8"))
        lengths[tokenizer.eos_id] = 0
        return lengths
    byte_level = type(inner.decoder).__name__ == "ByteLevel"
    for text, token in inner.get_vocab(with_added_tokens=False).items():
        if token < tokenizer.vocab_size:
            lengths[token] = len(text) if byte_level else len(inner.decode([token]).encode("utf-8"))
    for token, added in inner.get_added_tokens_decoder().items():
        if token < tokenizer.vocab_size:
            lengths[token] = 0 if added.special else len(added.content.encode("utf-8"))
    lengths[tokenizer.eos_id] = 0
    return lengths
