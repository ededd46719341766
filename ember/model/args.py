"""ModelArgs: the shape of a network (Llama family or Gemma 3), read from a checkpoint's metadata."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelArgs:
    vocab_size: int
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    hidden_dim: int
    """Width of the SwiGLU feed-forward layer."""
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None
    """Hugging Face style rope_scaling dict (e.g. {"rope_type": "llama3", "factor": ...}) or None."""
    max_seq_len: int = 2048
    """The context window the checkpoint was trained for."""
    tie_embeddings: bool = False
    """True when the output projection reuses the token embedding matrix."""
    head_dim: int | None = None
    arch: str = "llama"
    """Which network these args describe: "llama" or "gemma3" (its entry in ember/model/architectures.py)."""
    sliding_window: int | None = None
    """Gemma 3: a sliding layer's query sees itself and the sliding_window - 1 positions before it."""
    layer_types: tuple[str, ...] | None = None
    """Gemma 3: "sliding" or "full" per layer; None means every layer attends to the full context."""
    rope_local_theta: float | None = None
    """Gemma 3: RoPE base of the sliding layers (full layers use rope_theta and rope_scaling)."""
    query_pre_attn_scalar: float | None = None
    """Gemma 3: attention scores are scaled by query_pre_attn_scalar ** -0.5 (None: head_dim ** -0.5)."""

    def __post_init__(self) -> None:
        if self.head_dim is None:
            object.__setattr__(self, "head_dim", self.dim // self.n_heads)
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")
        if self.layer_types is not None and len(self.layer_types) != self.n_layers:
            raise ValueError(f"{len(self.layer_types)} layer types for {self.n_layers} layers")
