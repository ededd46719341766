"""Checkpoint: what a reader hands the loader, whatever the file format.

Tensors are float32 under Hugging Face names ([out_features, in_features]), so the loader maps one
naming scheme, not one per format.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from ember.model.args import ModelArgs
from ember.tokenizer import Tokenizer


@dataclass
class Checkpoint:
    args: ModelArgs
    tensors: Mapping[str, torch.Tensor]
    """May be lazy (GGUF: dequantized at each access); read each name once."""
    tokenizer: Tokenizer
    source: str
    """Where the weights came from (a path), for messages and logs."""
    source_bits: dict[str, int] = field(default_factory=dict)
    """Bits per weight each tensor was stored with when the file was quantized (GGUF Q4_1 -> 4); tensors
    stored as floats are absent. `quantization="auto"` keeps each weight at its file's precision."""
