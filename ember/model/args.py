"""ModelArgs: the shape of a network (any entry of ember/model/architectures.py), read from a checkpoint's
metadata."""

from __future__ import annotations

from dataclasses import dataclass

SLIDING, FULL = "sliding", "full"
"""The kinds of layer in `ModelArgs.layer_types`."""


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
    """Hugging Face style rope_scaling dict (e.g. {"rope_type": "llama3", "factor": ...}) or None; a
    "longrope" one holds its short_factor / long_factor lists and attention_factor."""
    rope_freq_factors: tuple[float, ...] | None = None
    """Per-frequency divisors of RoPE's inverse frequencies as a GGUF file stores them (llama.cpp's
    rope_freqs tensor of Llama 3.x); where set they replace rope_scaling."""
    max_seq_len: int = 2048
    """The context window the checkpoint was trained for."""
    tie_embeddings: bool = False
    """True when the output projection reuses the token embedding matrix."""
    head_dim: int | None = None
    arch: str = "llama"
    """Which network these args describe (its entry in ember/model/architectures.py)."""
    sliding_window: int | None = None
    """A sliding layer's query sees itself and the sliding_window - 1 positions before it."""
    layer_types: tuple[str, ...] | None = None
    """SLIDING or FULL per layer; None means every layer slides when sliding_window is set (Mistral),
    else every layer attends to the full context."""
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

    def window(self, layer: int) -> int:
        """The attention window of layer `layer`: 0 for the whole context."""
        if self.sliding_window is None:
            return 0
        if self.layer_types is None or self.layer_types[layer] == SLIDING:
            return self.sliding_window
        return 0
