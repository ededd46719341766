"""The Llama-family network: RMSNorm, RoPE, grouped-query attention over a paged KV cache, SwiGLU.

Projections are fused (qkv, gate_up) so one matmul serves three or two; the loader fuses the checkpoint's
separate tensors. Every Linear here may be swapped for a quantized drop-in by `model/quant.py`.
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


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)

    def add_forward(self, h: torch.Tensor, delta: torch.Tensor | None, native: bool) -> torch.Tensor:
        """h += delta (in place; h is the residual stream), then the norm of h."""
        if native:
            return _native().add_rms_norm(h, delta, self.weight, self.eps)
        if delta is not None:
            h.add_(delta)
        return self.forward(h)


def _native() -> ModuleType:
    module = kernels.load()
    assert module is not None, "ForwardBatch.native is set only where the kernels loaded"
    return module


def rope_inv_freq(args: ModelArgs) -> torch.Tensor:
    hd = args.head_dim
    assert hd is not None
    inv = 1.0 / (args.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
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
    elif kind not in (None, "default"):
        raise ValueError(f"unsupported rope_scaling type {kind!r}")
    return inv.float()


class Attention(nn.Module):
    def __init__(self, args: ModelArgs, window: int = 0) -> None:
        super().__init__()
        hd = args.head_dim
        assert hd is not None
        self.n_heads, self.n_kv_heads, self.head_dim = args.n_heads, args.n_kv_heads, hd
        self.window = window
        """0: every query attends its whole context; w > 0: a sliding-window layer (the last w positions)."""
        self.qkv_proj = nn.Linear(args.dim, (args.n_heads + 2 * args.n_kv_heads) * hd, bias=False)
        self.o_proj = nn.Linear(args.n_heads * hd, args.dim, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, batch: ForwardBatch,
                kv: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        T = x.shape[0]
        H, KV, D = self.n_heads, self.n_kv_heads, self.head_dim
        qkv = self.qkv_proj.forward(x)
        if batch.native:
            q = _native().rope_write_kv(qkv, cos, sin, kv[0], kv[1], batch.slot_mapping, H, KV, D)
        else:
            # q and k rotate together: one set of RoPE ops per layer, not two.
            qk = apply_rope(qkv[:, : (H + KV) * D].view(T, H + KV, D), cos.unsqueeze(1), sin.unsqueeze(1))
            q, k = qk[:, :H], qk[:, H:]
            v = qkv[:, (H + KV) * D :].view(T, KV, D)
            write_kv(kv[0], kv[1], k, v, batch.slot_mapping)
        o = paged_attention(q, kv[0], kv[1], batch, KV, self.window)
        return self.o_proj.forward(o.reshape(T, H * D))


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE (Hugging Face layout). x: (T, heads, D); cos/sin: (T, 1, D/2)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


class MLP(nn.Module):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.hidden = args.hidden_dim
        self.gate_up_proj = nn.Linear(args.dim, 2 * args.hidden_dim, bias=False)
        self.down_proj = nn.Linear(args.hidden_dim, args.dim, bias=False)

    def forward(self, x: torch.Tensor, native: bool = False) -> torch.Tensor:
        gu = self.gate_up_proj.forward(x)
        if native:
            return self.down_proj.forward(_native().silu_mul(gu))
        return self.down_proj.forward(F.silu(gu[:, : self.hidden]) * gu[:, self.hidden :])


class Block(nn.Module):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(args.dim, args.norm_eps)
        self.self_attn = Attention(args)
        self.post_attention_layernorm = RMSNorm(args.dim, args.norm_eps)
        self.mlp = MLP(args)

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
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.args = args
        # Built empty: the loader fills every weight. (nn.Embedding's own random init on the meta device
        # loads torch's Python decompositions first: seconds of start-up for nothing.)
        self.embed_tokens = nn.Embedding(args.vocab_size, args.dim, _weight=torch.empty(args.vocab_size, args.dim))
        self.layers = nn.ModuleList(Block(args) for _ in range(args.n_layers))
        self.norm = RMSNorm(args.dim, args.norm_eps)
        self.lm_head = nn.Linear(args.dim, args.vocab_size, bias=False)
        self.register_buffer("inv_freq", rope_inv_freq(args), persistent=False)

    def forward(self, batch: ForwardBatch, kv_caches: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """Hidden states after the final norm, one row per input token: (T, dim)."""
        freqs = batch.positions.to(torch.float32).unsqueeze(1) * self.inv_freq.unsqueeze(0)
        cos, sin = freqs.cos(), freqs.sin()  # (T, D/2)
        h = self.embed_tokens(batch.input_ids)  # a fresh tensor: the blocks add into it in place
        delta = None
        for layer, kv in zip(self.layers, kv_caches, strict=True):
            delta = layer.forward(h, delta, cos, sin, batch, kv)
        return self.norm.add_forward(h, delta, batch.native)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden).float()
