"""ModelArgs: the shape of a Llama-family network, read from a checkpoint's metadata."""

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

    def __post_init__(self) -> None:
        if self.head_dim is None:
            object.__setattr__(self, "head_dim", self.dim // self.n_heads)
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")
