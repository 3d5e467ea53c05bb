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


class CausalSelfAttention(nn.Module):
    def __init__(self, config: ModelConfig, native: bool = False, onednn_linear: bool = True) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd)
        self.proj = nn.Linear(config.n_embd, config.n_embd)
        self.dropout = config.dropout
        self.native = native
        self.onednn_linear = onednn_linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        native = self.native and self.training
        onednn = native and self.onednn_linear
        qkv = apply_linear(self.qkv, x, onednn)  # [B, T, 3C]
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
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

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """idx: [B, T] token ids -> logits [B, T, V]."""
        B, T = idx.shape
        if T > self.config.block_size:
            raise ValueError(f"sequence of {T} tokens exceeds block_size {self.config.block_size}")
        pos = torch.arange(T, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))  # [B, T, C]
        for block in self.blocks:
            x = block(x)
        onednn = self.native and self.training and self.onednn_linear
        return apply_linear(self.lm_head, self.ln_f(x), onednn)  # [B, T, V]

    def param_groups(self, weight_decay: float) -> list[dict]:
        """Two AdamW groups: matrices decay, vectors (biases, LayerNorm) do not."""
        decay = [p for p in self.parameters() if p.dim() >= 2]
        no_decay = [p for p in self.parameters() if p.dim() < 2]
        return [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
