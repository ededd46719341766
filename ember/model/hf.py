"""Hugging Face model directory (config.json, *.safetensors, tokenizer.json) -> Checkpoint, for the
architectures whose registry entry names config.json model_types.

The tensors already carry the names and rotate-half layout the loader expects; only the dtype changes,
and tensors the architecture stores fused (Phi-3's qkv_proj, gate_up_proj) are handed over as their parts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ember.errors import ModelLoadError
from ember.model.architectures import EMBED, HEAD, Architecture, for_hf_model_type
from ember.model.args import FULL, SLIDING, ModelArgs
from ember.model.checkpoint import Checkpoint
from ember.tokenizer import Tokenizer

# Buffers some old exports saved alongside the weights; recomputed by the model, never loaded.
_SKIPPED_SUFFIXES = ("rotary_emb.inv_freq",)


def read_hf_dir(path: str | Path) -> Checkpoint:
    folder = Path(path)
    config = _read_config(folder)
    arch = for_hf_model_type(config.get("model_type"))
    files = _weight_files(folder)
    if not files:
        raise ModelLoadError(f"no *.safetensors weights in {folder}")
    tensors: dict[str, torch.Tensor] = {}
    for file in files:
        try:
            part = load_file(str(file))
        except (OSError, SafetensorError) as e:
            raise ModelLoadError(f"cannot read weights {file}: {one_line(e)}") from e
        tensors.update({k: v.to(torch.float32) for k, v in part.items() if not k.endswith(_SKIPPED_SUFFIXES)})
    if EMBED not in tensors:
        raise ModelLoadError(f"{folder} has no {EMBED}: not a {arch.name} checkpoint")

    args = model_args(config, tie_embeddings=HEAD not in tensors or bool(config.get("tie_word_embeddings", False)))
    split_stored_fused(tensors, arch, args)
    if args.tie_embeddings:
        tensors.pop(HEAD, None)  # a saved copy of the embedding; keep one source of truth
    arch.check_complete(args, tensors, folder)
    tokenizer_file = folder / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise ModelLoadError(f"no tokenizer.json in {folder}")
    tokenizer = Tokenizer.from_file(tokenizer_file, config)
    return Checkpoint(args=args, tensors=tensors, tokenizer=tokenizer, source=str(folder))


def split_stored_fused(tensors: dict[str, torch.Tensor], arch: Architecture, args: ModelArgs) -> None:
    """Each stored fused tensor (in place) -> its parts, as row views of it."""
    for i in range(args.n_layers):
        for stored in arch.stored_fused:
            name = f"model.layers.{i}.{stored}.weight"
            if name not in tensors:
                continue
            whole = tensors.pop(name)
            parts = arch.split_stored(args, stored)
            if whole.shape[0] != parts[-1][2]:
                raise ModelLoadError(f"{name} has {whole.shape[0]} rows, not the {parts[-1][2]} its config implies")
            for part, start, end in parts:
                tensors[f"model.layers.{i}.{part}.weight"] = whole[start:end]


def model_args(config: dict[str, Any], tie_embeddings: bool) -> ModelArgs:
    """ModelArgs from a config.json (old `rope_theta`/`rope_scaling` or newer `rope_parameters`)."""
    arch = for_hf_model_type(config.get("model_type"))
    defaults = arch.defaults
    if config.get("attention_bias") or config.get("mlp_bias"):
        raise ModelLoadError(f"{config.get('model_type')} checkpoints with attention or MLP biases are not supported")
    if float(config.get("partial_rotary_factor") or 1.0) != 1.0:
        raise ModelLoadError(f"partial rotary embeddings (partial_rotary_factor "
                             f"{config['partial_rotary_factor']}) are not supported")
    rope = dict(config.get("rope_parameters") or {})
    theta = config.get("rope_theta", rope.pop("rope_theta", defaults.rope_theta))
    scaling = config.get("rope_scaling") or rope or None
    if scaling is not None and scaling.get("rope_type", scaling.get("type")) in (None, "default"):
        scaling = None
    if scaling is not None and config.get("original_max_position_embeddings"):
        # Phi-3 keeps its pretraining context beside rope_scaling, not inside it (and it then wins).
        scaling = {**scaling, "original_max_position_embeddings": int(config["original_max_position_embeddings"])}
    try:
        n_heads = int(config["num_attention_heads"])
        n_layers = int(config["num_hidden_layers"])
        max_seq_len = int(config.get("max_position_embeddings", defaults.max_seq_len))
        if scaling is not None and scaling.get("rope_type", scaling.get("type")) in ("longrope", "su"):
            scaling = {"factor": max_seq_len / int(scaling.get("original_max_position_embeddings", max_seq_len)),
                       **{k: v for k, v in scaling.items() if v is not None}}
        return ModelArgs(
            vocab_size=int(config["vocab_size"]),
            dim=int(config["hidden_size"]),
            n_layers=n_layers,
            n_heads=n_heads,
            n_kv_heads=int(config.get("num_key_value_heads") or n_heads),
            hidden_dim=int(config["intermediate_size"]),
            norm_eps=float(config.get("rms_norm_eps", defaults.hf_norm_eps)),
            rope_theta=float(theta),
            rope_scaling=scaling,
            max_seq_len=max_seq_len,
            tie_embeddings=tie_embeddings,
            head_dim=int(config["head_dim"]) if config.get("head_dim") else None,
            arch=arch.name,
            **sliding_args(config, n_layers),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise ModelLoadError(f"config.json is missing or has a bad value: {e}") from e


def sliding_args(config: dict[str, Any], n_layers: int) -> dict[str, Any]:
    """Which layers slide over how many positions: every layer where a window is set (Mistral, Phi-3),
    those `layer_types` names sliding where it lists them, none where `use_sliding_window` is off (Qwen)."""
    window = config.get("sliding_window")
    if not window or config.get("use_sliding_window") is False:
        return {}
    types = config.get("layer_types")
    if types is None and "max_window_layers" in config:  # Qwen's layout before configs listed the layers
        types = ["sliding_attention" if i >= int(config["max_window_layers"]) else "full_attention"
                 for i in range(n_layers)]
    if types is None:
        return {"sliding_window": int(window)}
    if len(types) != n_layers or not set(types) <= {"sliding_attention", "full_attention"}:
        raise ValueError(f"layer_types {types!r} for {n_layers} layers")
    return {"sliding_window": int(window), "layer_types": tuple(SLIDING if t == "sliding_attention" else FULL
                                                                for t in types)}


def _read_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ModelLoadError(f"no config.json in {folder}") from e
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot read {path}: {e}") from e
    if not isinstance(config, dict):
        raise ModelLoadError(f"{path} is not a JSON object")
    return config


def _weight_files(folder: Path) -> list[Path]:
    """The shards the index names, else model.safetensors, else every *.safetensors (some repos also ship
    differently named copies, such as Mistral's consolidated.safetensors, that must not be mixed in)."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            names = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        except (OSError, ValueError, KeyError, AttributeError) as e:
            raise ModelLoadError(f"cannot read {index}: {one_line(e)}") from e
        return sorted(folder / n for n in names)
    single = folder / "model.safetensors"
    return [single] if single.is_file() else sorted(folder.glob("*.safetensors"))


def one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__
