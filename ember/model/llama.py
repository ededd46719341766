"""The Llama-family network: RMSNorm, RoPE, grouped-query attention over a paged KV cache, SwiGLU.

SmolLM2, Llama 3.x and Mistral run it as it is (Mistral's layers slide over `sliding_window` positions);
Qwen 2 adds a q|k|v bias, Qwen 3 a per-head q/k RMSNorm, Phi-3 its LongRoPE frequencies (its attention
factor is folded into q's rows with the attention scale): each switched on by its architecture entry.

Projections are fused (qkv, gate_up) so one matmul serves three or two; the loader fuses the checkpoint's
separate tensors. Every Linear here may be swapped for a quantized drop-in by `model/quant.py`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ember.model.args import ModelArgs
from ember.model.attention import ForwardBatch
from ember.model.layers import (
    Attention,
    GatedMLP,
    RMSNorm,
    rope_attention_factor,
    rope_cos_sin,
    rope_inv_freq,
)


def attention_q_scale(args: ModelArgs) -> float:
    """The attention scale the loader folds into q's projection rows (exact for head_dim 64: a power of
    two), so the decode path spends no op on it. LongRoPE's attention factor f multiplies both q's and
    k's cos and sin in transformers, so every score by f ** 2: folded here too."""
    return rope_attention_factor(args) ** 2 / math.sqrt(args.head_dim or 1)


class Block(nn.Module):
    def __init__(self, args: ModelArgs, layer: int, qk_norm: bool = False, qkv_bias: bool = False) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(args.dim, args.norm_eps)
        self.self_attn = Attention(args, args.window(layer), qk_norm=qk_norm, qkv_bias=qkv_bias)
        self.post_attention_layernorm = RMSNorm(args.dim, args.norm_eps)
        self.mlp = GatedMLP(args)

    def forward(self, h: torch.Tensor, delta: torch.Tensor | None, cos: torch.Tensor, sin: torch.Tensor,
                batch: ForwardBatch, kv: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Adds the previous block's output `delta` to the residual stream `h` (in place) and returns this
        block's MLP output, which the next block (or the final norm) adds in turn: each residual add is
        fused with the norm that follows it."""
        # .forward directly: nn.Module.__call__'s hook machinery costs ~0.5 ms per decode step here.
        x = self.input_layernorm.add_forward(h, delta, batch.native)
        a = self.self_attn.forward(x, cos, sin, batch, kv)
        x = self.post_attention_layernorm.add_forward(h, a, batch.native)
        return self.mlp.forward(x, batch.native)


class Llama(nn.Module):
    def __init__(self, args: ModelArgs, qk_norm: bool = False, qkv_bias: bool = False) -> None:
        super().__init__()
        self.args = args
        # Built empty: the loader fills every weight. (nn.Embedding's own random init on the meta device
        # loads torch's Python decompositions first: seconds of start-up for nothing.)
        self.embed_tokens = nn.Embedding(args.vocab_size, args.dim, _weight=torch.empty(args.vocab_size, args.dim))
        self.layers = nn.ModuleList(Block(args, i, qk_norm, qkv_bias) for i in range(args.n_layers))
        self.norm = RMSNorm(args.dim, args.norm_eps)
        self.lm_head = nn.Linear(args.dim, args.vocab_size, bias=False)
        self.register_buffer("inv_freq", rope_inv_freq(args), persistent=False)

    def rebuild_buffers(self, device: torch.device) -> None:
        """Non-persistent buffers are not in the state dict; the loader rebuilds them on the real device."""
        self.inv_freq = rope_inv_freq(self.args).to(device)

    def forward(self, batch: ForwardBatch, kv_caches: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """Hidden states after the final norm, one row per input token: (T, dim)."""
        cos, sin = rope_cos_sin(batch.positions, self.inv_freq)  # (T, D/2)
        h = self.embed_tokens(batch.input_ids)  # a fresh tensor: the blocks add into it in place
        delta = None
        for layer, kv in zip(self.layers, kv_caches, strict=True):
            delta = layer.forward(h, delta, cos, sin, batch, kv)
        return self.norm.add_forward(h, delta, batch.native)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden).float()
