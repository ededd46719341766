"""Checkpoint: what a reader hands the loader, whatever the file format.

Tensors are float32 under Hugging Face Llama names ([out_features, in_features]), so the loader maps one
naming scheme, not one per format.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ember.errors import ModelLoadError
from ember.model.args import ModelArgs
from ember.tokenizer import Tokenizer

GGUF_MAGIC = b"GGUF"


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


def expected_tensor_names(args: ModelArgs) -> list[str]:
    if args.arch == "gemma3":
        from ember.model.gemma3 import expected_tensor_names as gemma3_names

        return gemma3_names(args)
    names = ["model.embed_tokens.weight", "model.norm.weight"]
    if not args.tie_embeddings:
        names.append("lm_head.weight")
    for i in range(args.n_layers):
        names += [f"model.layers.{i}.{part}.weight" for part in (
            "input_layernorm", "post_attention_layernorm", "self_attn.q_proj", "self_attn.k_proj",
            "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")]
    return names


def check_complete(args: ModelArgs, tensors: Mapping[str, torch.Tensor], source: str | Path) -> None:
    """A missing weight found now reads better than a KeyError deep in the loader."""
    missing = [n for n in expected_tensor_names(args) if n not in tensors]
    if missing:
        raise ModelLoadError(f"{source} lacks {len(missing)} expected tensor(s), e.g. {missing[0]}")


def is_gguf(path: Path) -> bool:
    if path.suffix.lower() == ".gguf":
        return True
    try:
        with path.open("rb") as f:
            return f.read(4) == GGUF_MAGIC
    except OSError:
        return False


def read_checkpoint(path: str | Path) -> Checkpoint:
    """A GGUF file, or a Hugging Face model directory (or a file inside one)."""
    # The readers import Checkpoint from this module, so they are imported here, not at the top.
    from ember.model.gguf import read_gguf
    from ember.model.hf import read_hf_dir

    path = Path(path).expanduser()
    if not path.exists():
        raise ModelLoadError(f"model path not found: {path}")
    if path.is_file() and is_gguf(path):
        return read_gguf(path)
    # Pointing at a checkpoint's own config or weights means its directory.
    folder = path if path.is_dir() else path.parent if _is_hf_file(path) else None
    if folder is not None and (folder / "config.json").is_file():
        return read_hf_dir(folder)
    raise ModelLoadError(f"not a GGUF file or a Hugging Face model directory (no config.json): {path}")


def _is_hf_file(path: Path) -> bool:
    return path.name == "config.json" or ".safetensors" in path.name
