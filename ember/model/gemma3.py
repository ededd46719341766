"""The Gemma 3 text network, over the same paged KV cache and ForwardBatch as the Llama one.

What differs from Llama (transformers' Gemma3ForCausalLM is the reference):
- RMSNorm multiplies by (1 + w); llama.cpp's converter stores 1 + w in the GGUF, so the checkpoint's
  norm weights are already the multipliers and the plain RMSNorm of layers.py applies them.
- q and k are RMS-normed per head (own weights) before RoPE; the attention scale
  query_pre_attn_scalar ** -0.5 is folded into q's norm weights (exact when it is a power of two,
  as for head_dim 256), so q comes out of RoPE pre-scaled like Llama's.
- Sandwich norms: the attention output and the feed-forward output are each normed before the residual
  add, besides the usual pre-norms.
- GeGLU (gelu with the tanh approximation) instead of SwiGLU.
- Token embeddings are multiplied by sqrt(dim), rounded to the model dtype first as transformers does.
- Layers are "sliding" (a window of `sliding_window` positions, RoPE base rope_local_theta) or "full"
  (the whole context, base rope_theta with the checkpoint's rope scaling).
- The 262144-row embedding is tied to the head; where the head is quantized the embedding is kept as
  int8 rows too (`Int8Embedding`), so no fp32 copy of it stays in memory.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import torch
from torch import nn

from ember.model.args import FULL, SLIDING, ModelArgs
from ember.model.attention import ForwardBatch
from ember.model.layers import Attention, GatedMLP, RMSNorm, rope_cos_sin, rope_inv_freq

DEFAULT_SLIDING_PATTERN = 6
"""Gemma 3's layout when the checkpoint does not spell it out: every 6th layer is full, the rest slide."""
DEFAULT_LOCAL_THETA = 10000.0
"""RoPE base of the sliding layers (transformers' rope_local_base_freq); GGUF files do not carry it."""


def layer_types_for_pattern(n_layers: int, pattern: int = DEFAULT_SLIDING_PATTERN) -> tuple[str, ...]:
    return tuple(FULL if (i + 1) % pattern == 0 else SLIDING for i in range(n_layers))


def default_query_pre_attn_scalar(n_layers: int, dim: int, n_heads: int, head_dim: int) -> float:
    """Queries are scaled by head_dim ** -0.5, except in the 62-layer 27B model, the one Gemma 3 whose
    query_pre_attn_scalar is dim / n_heads instead (checkpoints that do not carry it rely on this)."""
    return float(dim // n_heads if n_layers == 62 else head_dim)


class Gemma3Block(nn.Module):
    def __init__(self, args: ModelArgs, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.input_layernorm = RMSNorm(args.dim, args.norm_eps)
        self.self_attn = Attention(args, args.sliding_window or 0 if kind == SLIDING else 0, qk_norm=True)
        self.post_attention_layernorm = RMSNorm(args.dim, args.norm_eps)
        self.pre_feedforward_layernorm = RMSNorm(args.dim, args.norm_eps)
        self.mlp = GatedMLP(args, gelu=True)
        self.post_feedforward_layernorm = RMSNorm(args.dim, args.norm_eps)

    def forward(self, h: torch.Tensor, delta: torch.Tensor | None, cos: torch.Tensor, sin: torch.Tensor,
                batch: ForwardBatch, kv: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Adds the previous block's output `delta` to the residual stream `h` (in place) and returns this
        block's (post-normed) feed-forward output for the next block to add."""
        x = self.input_layernorm.add_forward(h, delta, batch.native)
        a = self.post_attention_layernorm.forward(self.self_attn.forward(x, cos, sin, batch, kv))
        x = self.pre_feedforward_layernorm.add_forward(h, a, batch.native)
        return self.post_feedforward_layernorm.forward(self.mlp.forward(x))


class Gemma3(nn.Module):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        if args.layer_types is None or args.sliding_window is None:
            raise ValueError("Gemma 3 args need layer_types and sliding_window")
        self.args = args
        self.embed_tokens: nn.Module = nn.Embedding(args.vocab_size, args.dim)
        # transformers keeps sqrt(dim) as a tensor of the model's dtype: the float32 value, not the double.
        self.embed_scale = float(np.float32(math.sqrt(args.dim)))
        self.layers = nn.ModuleList(Gemma3Block(args, kind) for kind in args.layer_types)
        self.norm = RMSNorm(args.dim, args.norm_eps)
        self.lm_head = nn.Linear(args.dim, args.vocab_size, bias=False)
        self.register_buffer("inv_freq", rope_inv_freq(args), persistent=False)
        self.register_buffer("inv_freq_local", local_inv_freq(args), persistent=False)

    def rebuild_buffers(self, device: torch.device) -> None:
        """Non-persistent buffers are not in the state dict; the loader rebuilds them on the real device."""
        self.inv_freq = rope_inv_freq(self.args).to(device)
        self.inv_freq_local = local_inv_freq(self.args).to(device)

    def forward(self, batch: ForwardBatch, kv_caches: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """Hidden states after the final norm, one row per input token: (T, dim)."""
        rope = {FULL: rope_cos_sin(batch.positions, self.inv_freq),
                SLIDING: rope_cos_sin(batch.positions, self.inv_freq_local)}
        h = self.embed_tokens.forward(batch.input_ids) * self.embed_scale  # fresh: the blocks add into it
        delta = None
        for layer, kv in zip(self.layers, kv_caches, strict=True):
            cos, sin = rope[layer.kind]
            delta = layer.forward(h, delta, cos, sin, batch, kv)
        return self.norm.add_forward(h, delta, batch.native)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden).float()


def local_inv_freq(args: ModelArgs) -> torch.Tensor:
    return rope_inv_freq(replace(args, rope_theta=args.rope_local_theta or DEFAULT_LOCAL_THETA, rope_scaling=None))
