"""A GPT decoder: pre-LayerNorm blocks, causal attention, tied embeddings.

Shapes use B = batch, T = sequence length, C = n_embd, V = vocab size,
H = heads, D = C // H. The model returns logits only; the loss is the trainer's
business (it may use the fused native kernel, which needs the raw logits).

``GPT(config, kernels="native")`` runs the MLP's GELU (``slimtrack.native.fused_gelu``)
and the attention's causal softmax (``slimtrack.native.causal_attention``) through numba
kernels while training; evaluation, export and ``kernels="torch"`` use ``F.gelu`` and
``F.scaled_dot_product_attention``. Both compute the same functions (up to float32 rounding), and
the weights and checkpoints are the same either way. With native kernels in training the
linear layers run through ``slimtrack.native.onednn_linear`` unless ``onednn_linear`` is
False (the run's ``runtime.onednn_linear``), which keeps them on ``F.linear``.

``GPT.generate`` continues prompts token by token; a ``KVCache`` keeps the keys and values
of the positions seen so far, so each new token costs one forward pass over that token only.
The cache is an eval-mode path: training never passes one.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from slimtrack.config import ModelConfig


def apply_linear(layer: nn.Linear, x: torch.Tensor, onednn: bool, bias: bool = True) -> torch.Tensor:
    """``layer(x)`` (without its bias if ``bias`` is False); with ``onednn`` (native kernels in
    training, and the run's ``runtime.onednn_linear``), through ``slimtrack.native.onednn_linear``
    (oneDNN's products on CPU float32, else F.linear)."""
    b = layer.bias if bias else None
    if onednn:
        from slimtrack.native import onednn_linear  # numba loads only when asked for
        return onednn_linear(x, layer.weight, b)
    return F.linear(x, layer.weight, b)


class KVCache:
    """The keys and values of the positions a model has seen so far, for generation.

    One key and one value buffer per block, each [B, H, block_size, D]; the first ``length``
    positions are filled. A forward pass with the cache feeds only the new tokens: they sit at
    positions ``length ...``, attend to the cached ones and themselves, and are appended.
    """

    def __init__(self, config: ModelConfig, batch: int, device: torch.device, dtype: torch.dtype) -> None:
        shape = (batch, config.n_head, config.block_size, config.n_embd // config.n_head)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.length = 0

    def extend(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the new k, v ([B, H, T, D]) after the cached positions of ``layer``; return
        that layer's keys and values of every position so far ([B, H, length + T, D])."""
        end = self.length + k.size(2)
        self.keys[layer][:, :, self.length:end] = k
        self.values[layer][:, :, self.length:end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]


class CausalSelfAttention(nn.Module):
    def __init__(self, config: ModelConfig, native: bool = False, onednn_linear: bool = True) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd)
        self.proj = nn.Linear(config.n_embd, config.n_embd)
        self.dropout = config.dropout
        self.native = native
        self.onednn_linear = onednn_linear

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        """x: [B, T, C] -> [B, T, C]. With ``cache`` (generation, eval mode), x holds only the
        new positions and attends to the cached ones too; ``layer`` names this block's slot."""
        B, T, C = x.shape
        native = self.native and self.training
        onednn = native and self.onednn_linear
        qkv = apply_linear(self.qkv, x, onednn)  # [B, T, 3C]
        if cache is not None:
            return self._cached(qkv, cache, layer)
        if native and self.dropout == 0.0:
            from slimtrack.native import causal_attention  # numba loads only when asked for
            y = causal_attention(qkv, self.n_head)  # falls back to SDPA where not faster
            return apply_linear(self.proj, y, onednn)
        q, k, v = qkv.split(C, dim=2)  # 3 x [B, T, C]
        # [B, T, C] -> [B, H, T, D]
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
        )  # [B, H, T, D]
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return apply_linear(self.proj, y, onednn)

    def _cached(self, qkv: torch.Tensor, cache: KVCache, layer: int) -> torch.Tensor:
        """Attention of the new positions (qkv: [B, T, 3C]) over the cached ones and
        themselves, without dropout; the new keys and values join the cache."""
        B, T, C3 = qkv.shape
        C = C3 // 3
        start = cache.length
        # [B, T, C] -> [B, H, T, D]
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in qkv.split(C, dim=2))
        k, v = cache.extend(layer, k, v)  # [B, H, S, D], S = start + T
        if start == 0:  # the prompt: plain causal attention
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:  # new position start + i sees keys 0 .. start + i
            mask = torch.ones(T, start + T, dtype=torch.bool, device=qkv.device).tril(diagonal=start)  # [T, S]
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # [B, H, T, D]
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.proj(y)


class MLP(nn.Module):
    def __init__(self, config: ModelConfig, native: bool = False, onednn_linear: bool = True) -> None:
        super().__init__()
        self.fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.proj = nn.Linear(4 * config.n_embd, config.n_embd)
        self.dropout = nn.Dropout(config.dropout)
        self.native = native
        self.onednn_linear = onednn_linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        # 2-D so that fc's output is a tensor of its own, not a view: an in-place op on a
        # view makes autograd copy the whole base in the backward pass.
        x = x.reshape(B * T, C)
        native = self.native and self.training
        onednn = native and self.onednn_linear
        if native and x.device.type == "cpu":  # on CUDA torch's is one kernel
            from slimtrack.native import fused_bias_gelu  # numba loads only when asked for
            # The bias-free product is a tensor of its own, which nothing saves for backward:
            # bias + GELU overwrite it in one pass (no broadcast copy of the bias, as addmm does).
            h = fused_bias_gelu(apply_linear(self.fc, x, onednn, bias=False), self.fc.bias)  # [B*T, 4C]
        else:
            h = F.gelu(apply_linear(self.fc, x, onednn), approximate="tanh")  # [B*T, 4C]
        return self.dropout(apply_linear(self.proj, h, onednn)).view(B, T, C)


class Block(nn.Module):
    """Pre-LN transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, config: ModelConfig, native: bool = False, onednn_linear: bool = True) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd)
        self.attn = CausalSelfAttention(config, native, onednn_linear)
        self.ln_2 = nn.LayerNorm(config.n_embd)
        self.mlp = MLP(config, native, onednn_linear)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache, layer)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: ModelConfig, kernels: str = "torch", onednn_linear: bool = True) -> None:
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config, kernels == "native", onednn_linear)
                                    for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # tied embeddings
        self.native = kernels == "native"
        self.onednn_linear = onednn_linear
        self.apply(self._init_weights)
        # GPT-2's scaled init of the residual projections keeps the stream's variance flat.
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """idx: [B, T] token ids -> logits [B, T, V]. With ``cache`` (generation), idx holds the
        tokens that follow the cached ones, at positions ``cache.length ...``, and joins the cache."""
        B, T = idx.shape
        start = cache.length if cache is not None else 0
        if start + T > self.config.block_size:
            raise ValueError(f"sequence of {start + T} tokens exceeds block_size {self.config.block_size}")
        pos = torch.arange(start, start + T, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))  # [B, T, C]
        for layer, block in enumerate(self.blocks):
            x = block(x, cache, layer)
        if cache is not None:
            cache.length += T
        onednn = self.native and self.training and self.onednn_linear
        return apply_linear(self.lm_head, self.ln_f(x), onednn)  # [B, T, V]

    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 generator: torch.Generator | None = None, use_cache: bool = True) -> torch.Tensor:
        """Continue each row of idx ([B, T] int64 token ids) by ``max_new_tokens`` tokens:
        returns [B, T + max_new_tokens], the prompt followed by its continuation.

        Each new token is drawn from the last position's logits: ``temperature`` 0 takes the
        argmax (greedy); otherwise the logits are divided by ``temperature``, cut to the
        ``top_k`` most likely tokens (all when None), and sampled with ``generator`` (a
        ``torch.Generator`` on the model's device, for seeded sampling; torch's global one when
        None).

        The model sees at most the last ``block_size`` tokens. With ``use_cache`` (the
        default), the prompt runs once and fills a KV cache, then each step runs the one new
        token over the cache. Once the sequence is longer than ``block_size``, each step
        recomputes the last ``block_size`` tokens without the cache: the window's positions
        shift by one every step, so the cached keys and values (computed at the old
        positions) no longer apply. ``use_cache=False`` recomputes the window at every step;
        both give the same tokens (up to float rounding).

        Runs in eval mode without gradients; the module's training flag is restored after.
        """
        if idx.dim() != 2 or idx.size(1) == 0:
            raise ValueError(f"idx must be [B, T] with T >= 1, got shape {tuple(idx.shape)}")
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must not be negative, got {max_new_tokens}")
        if not temperature >= 0:  # also refuses NaN
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be positive (or None), got {top_k}")
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                return self._generate(idx, max_new_tokens, temperature, top_k, generator, use_cache)
        finally:
            self.train(was_training)

    def _generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float, top_k: int | None,
                  generator: torch.Generator | None, use_cache: bool) -> torch.Tensor:
        block_size = self.config.block_size
        cache: KVCache | None = None
        for _ in range(max_new_tokens):
            B, T = idx.shape
            if not use_cache or T > block_size:
                logits = self(idx[:, -block_size:])[:, -1]  # the cropped window: [B, V]
            elif cache is None:
                cache = KVCache(self.config, B, idx.device, self.wte.weight.dtype)
                logits = self(idx, cache)[:, -1]  # the prompt fills the cache: [B, V]
            else:
                logits = self(idx[:, -1:], cache)[:, -1]  # the newest token only: [B, V]
            next_id = self._pick(logits, temperature, top_k, generator)  # [B, 1]
            idx = torch.cat([idx, next_id], dim=1)  # [B, T + 1]
        return idx

    @staticmethod
    def _pick(logits: torch.Tensor, temperature: float, top_k: int | None,
              generator: torch.Generator | None) -> torch.Tensor:
        """The next token of each row of logits ([B, V]) -> [B, 1]."""
        if temperature == 0:
            return logits.argmax(dim=-1, keepdim=True)
        logits = logits.float() / temperature
        if top_k is not None and top_k < logits.size(-1):
            kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # [B, 1], the k-th largest
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = F.softmax(logits, dim=-1)  # [B, V]
        return torch.multinomial(probs, num_samples=1, generator=generator)  # [B, 1]

    def param_groups(self, weight_decay: float) -> list[dict]:
        """Two AdamW groups: matrices decay, vectors (biases, LayerNorm) do not."""
        decay = [p for p in self.parameters() if p.dim() >= 2]
        no_decay = [p for p in self.parameters() if p.dim() < 2]
        return [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
