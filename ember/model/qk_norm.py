"""Per-head q/k RMSNorm weights (Gemma 3, Qwen 3) -> the attention's `qk_norm` parameter.

The attention applies them before RoPE; the attention scale is folded into q's rows here, so such an
architecture's q projection carries no scale and q still leaves RoPE pre-scaled.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch

from ember.model.args import ModelArgs

QK_NORMS = ("self_attn.q_norm", "self_attn.k_norm")
"""The per-layer checkpoint tensors (without `model.layers.N.` and `.weight`)."""


def attention_scale(args: ModelArgs) -> float:
    """query_pre_attn_scalar ** -0.5 where the architecture sets it (Gemma 3), else head_dim ** -0.5."""
    assert args.head_dim is not None
    return float(args.query_pre_attn_scalar or args.head_dim) ** -0.5


def qk_norm_state(tensors: Mapping[str, torch.Tensor], args: ModelArgs, layer: int
                  ) -> Iterator[tuple[str, torch.Tensor]]:
    """The checkpoint's per-layer q_norm and k_norm weights -> the attention's `qk_norm` rows: stacked per
    head, with the attention scale folded into q's (so q's projection rows carry no scale)."""
    p = f"model.layers.{layer}.self_attn."
    q_norm, k_norm = tensors[p + "q_norm.weight"], tensors[p + "k_norm.weight"]
    yield f"layers.{layer}.self_attn.qk_norm", torch.cat(
        [(q_norm * attention_scale(args)).expand(args.n_heads, -1), k_norm.expand(args.n_kv_heads, -1)], dim=0)
