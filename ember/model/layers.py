"""Layers every architecture builds on: RMSNorm, RoPE, the attention projection, the gated MLP, and the
accessor of the native kernels that fuse their small steps.

Each architecture module (llama.py, gemma3.py) composes these; what it adds is only what differs.
"""

from __future__ import annotations

import math
from types import ModuleType

import torch
import torch.nn.functional as F
from torch import nn

from ember import kernels
from ember.model.args import ModelArgs
from ember.model.attention import ForwardBatch, paged_attention, write_kv


def native_kernels() -> ModuleType:
    """The native kernels module; call only where `ForwardBatch.native` is set."""
    module = kernels.load()
    assert module is not None, "ForwardBatch.native is set only where the kernels loaded"
    return module


class RMSNorm(nn.Module):
    """x / rms(x) * weight. Gemma's (1 + w) variant needs no class of its own: its checkpoints already
    store the multipliers 1 + w."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)

    def add_forward(self, h: torch.Tensor, delta: torch.Tensor | None, native: bool) -> torch.Tensor:
        """h += delta (in place; h is the residual stream), then the norm of h."""
        if native:
            return native_kernels().add_rms_norm(h, delta, self.weight, self.eps)
        if delta is not None:
            h.add_(delta)
        return self.forward(h)


def rope_inv_freq(args: ModelArgs) -> torch.Tensor:
    """RoPE's inverse frequencies for args.rope_theta, divided by a GGUF file's per-frequency factors where
    it has them, else scaled by args.rope_scaling ("linear", "llama3", or "longrope" / "su")."""
    hd = args.head_dim
    assert hd is not None
    inv = 1.0 / (args.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
    if args.rope_freq_factors is not None:
        return (inv / torch.tensor(args.rope_freq_factors, dtype=torch.float64)).float()
    sc = args.rope_scaling or {}
    kind = sc.get("rope_type", sc.get("type"))
    if kind == "linear":
        inv = inv / float(sc["factor"])
    elif kind == "llama3":
        factor = float(sc["factor"])
        low, high = float(sc.get("low_freq_factor", 1.0)), float(sc.get("high_freq_factor", 4.0))
        old_ctx = float(sc.get("original_max_position_embeddings", 8192))
        wavelen = 2 * math.pi / inv
        smooth = (old_ctx / wavelen - low) / (high - low)
        scaled = torch.where(wavelen > old_ctx / low, inv / factor, inv)
        mid = (wavelen <= old_ctx / low) & (wavelen >= old_ctx / high)
        inv = torch.where(mid, (1 - smooth) * inv / factor + smooth * inv, scaled)
    elif kind in LONGROPE:
        # One set of factors for every position of the served context, chosen by its length (as llama.cpp
        # does), so a token's rotation never depends on how long its sequence has grown: the long factors
        # once the context exceeds the pretraining one. transformers switches per forward pass instead,
        # which agrees whenever a sequence runs past the original context or the served one stays within it.
        long = args.max_seq_len > int(sc["original_max_position_embeddings"])
        factors = sc["long_factor" if long else "short_factor"]
        if len(factors) != hd // 2:
            raise ValueError(f"rope_scaling has {len(factors)} factors for head_dim {hd}")
        inv = inv / torch.tensor(factors, dtype=torch.float64)
    elif kind not in (None, "default"):
        raise ValueError(f"unsupported rope_scaling type {kind!r}")
    return inv.float()


LONGROPE = ("longrope", "su")
"""rope_scaling types of Phi-3's scaled RoPE (the second is its older name)."""


def rope_attention_factor(args: ModelArgs) -> float:
    """LongRoPE's attention factor, by which transformers multiplies cos and sin (1 for other RoPE kinds)."""
    sc = args.rope_scaling or {}
    if sc.get("rope_type", sc.get("type")) not in LONGROPE:
        return 1.0
    if sc.get("attention_factor") is not None:
        return float(sc["attention_factor"])
    original = int(sc["original_max_position_embeddings"])
    factor = float(sc.get("factor") or 1.0)
    return math.sqrt(1 + math.log(factor) / math.log(original)) if factor > 1.0 else 1.0


def rope_cos_sin(positions: torch.Tensor, inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(T, D/2) cos and sin of each position's angles."""
    freqs = positions.to(torch.float32).unsqueeze(1) * inv_freq.unsqueeze(0)
    return freqs.cos(), freqs.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE (Hugging Face layout). x: (T, heads, D); cos/sin: (T, 1, D/2)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


class Attention(nn.Module):
    """Grouped-query attention over the paged KV cache, with one fused q|k|v projection.

    `qk_norm`: q and k are RMS-normed per head before RoPE by the weights in `qk_norm` (rows 0..H-1 for
    q's heads, then one per kv head), into which the loader folds the attention scale. Without it the
    loader folds the scale into q's projection rows. Either way q leaves RoPE pre-scaled.

    `qkv_bias`: the projection adds a fused q|k|v bias (Qwen 2), kept apart from the Linear so that any
    quantized drop-in for it serves; q's part carries the attention scale like q's rows.
    """

    def __init__(self, args: ModelArgs, window: int = 0, qk_norm: bool = False, qkv_bias: bool = False) -> None:
        super().__init__()
        hd = args.head_dim
        assert hd is not None
        self.n_heads, self.n_kv_heads, self.head_dim = args.n_heads, args.n_kv_heads, hd
        self.eps = args.norm_eps
        self.window = window
        """0: every query attends its whole context; w > 0: a sliding-window layer (the last w positions)."""
        self.qkv_proj = nn.Linear(args.dim, (args.n_heads + 2 * args.n_kv_heads) * hd, bias=False)
        self.o_proj = nn.Linear(args.n_heads * hd, args.dim, bias=False)
        self.qk_norm = nn.Parameter(torch.ones(args.n_heads + args.n_kv_heads, hd)) if qk_norm else None
        self.qkv_bias = nn.Parameter(torch.zeros((args.n_heads + 2 * args.n_kv_heads) * hd)) if qkv_bias else None

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, batch: ForwardBatch,
                kv: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        T = x.shape[0]
        H, KV, D = self.n_heads, self.n_kv_heads, self.head_dim
        qkv = self.qkv_proj.forward(x)
        if self.qkv_bias is not None:
            qkv += self.qkv_bias  # in place: qkv is the projection's fresh output
        qk = qkv[:, : (H + KV) * D].view(T, H + KV, D)
        if self.qk_norm is not None:
            qk = F.rms_norm(qk, (D,), None, self.eps) * self.qk_norm
            if batch.native:  # the native kernel reads q and k from qkv
                qkv[:, : (H + KV) * D] = qk.view(T, (H + KV) * D)
        if batch.native:
            q = native_kernels().rope_write_kv(qkv, cos, sin, kv[0], kv[1], batch.slot_mapping, H, KV, D)
        else:
            # q and k rotate together: one set of RoPE ops per layer, not two.
            qk = apply_rope(qk, cos.unsqueeze(1), sin.unsqueeze(1))
            q, k = qk[:, :H], qk[:, H:]
            write_kv(kv[0], kv[1], k, qkv[:, (H + KV) * D :].view(T, KV, D), batch.slot_mapping)
        o = paged_attention(q, kv[0], kv[1], batch, KV, self.window)
        return self.o_proj.forward(o.reshape(T, H * D))


class GatedMLP(nn.Module):
    """down(act(gate(x)) * up(x)) with gate and up fused into one projection; act is SiLU (SwiGLU) or
    tanh-approximated GELU (GeGLU)."""

    def __init__(self, args: ModelArgs, gelu: bool = False) -> None:
        super().__init__()
        self.hidden = args.hidden_dim
        self.gelu = gelu
        self.gate_up_proj = nn.Linear(args.dim, 2 * args.hidden_dim, bias=False)
        self.down_proj = nn.Linear(args.hidden_dim, args.dim, bias=False)

    def forward(self, x: torch.Tensor, native: bool = False) -> torch.Tensor:
        gu = self.gate_up_proj.forward(x)
        if self.gelu:
            return self.down_proj.forward(F.gelu(gu[:, : self.hidden], approximate="tanh") * gu[:, self.hidden :])
        if native:
            return self.down_proj.forward(native_kernels().silu_mul(gu))
        return self.down_proj.forward(F.silu(gu[:, : self.hidden]) * gu[:, self.hidden :])
