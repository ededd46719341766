"""load_model: a checkpoint on disk -> a ready model module and its tokenizer.

Checkpoint readers (formats.py) hand over tensors under Hugging Face names; the architecture's registry
entry (architectures.py) says which module to build and how the tensors map onto it (module_state.py).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from ember.config import ModelConfig
from ember.model.architectures import EMBED, ModelModule, architecture
from ember.model.args import ModelArgs
from ember.model.catalog import ModelRef, resolve_model
from ember.model.checkpoint import Checkpoint
from ember.model.embedding import Int8Embedding
from ember.model.formats import read_checkpoint
from ember.model.gguf_linear import block_modules
from ember.model.module_state import module_state
from ember.model.quant import kind_for_bits, quantize_model
from ember.tokenizer import Tokenizer


@dataclass
class LoadedModel:
    model: ModelModule
    tokenizer: Tokenizer
    args: ModelArgs
    ref: ModelRef
    device: torch.device


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def build_model(ckpt: Checkpoint, device: torch.device, cfg: ModelConfig | None = None) -> ModelModule:
    args = ckpt.args
    if cfg is not None and cfg.max_model_len is not None:
        args = replace(args, max_seq_len=cfg.max_model_len)
    arch = architecture(args.arch)
    with torch.device("meta"):
        model = arch.module(args)
    plan = quantization_plan(ckpt, cfg.quantization, device) if cfg is not None else {}
    # GGUF block tensors run in place on the file's memory map wherever the block kernels can take them.
    blocks = {}
    if cfg is not None and cfg.quantization == "auto" and cfg.native_kernels and device.type == "cpu":
        blocks = block_modules(ckpt.tensors, arch.linear_sources(args), EMBED, arch.q_scale(args))
    for path, module in blocks.items():
        parent_path, _, child = path.rpartition(".")
        setattr(model.get_submodule(parent_path) if parent_path else model, child, module)
    # One weight at a time, quantized as soon as it is in place: the fp32 model is never whole in memory.
    total = 3 + arch.tensors_per_layer() * args.n_layers - len(blocks)
    bar = tqdm(module_state(ckpt, frozenset(blocks)), total=total, desc=f"loading {Path(ckpt.source).name}",
               unit="tensor", file=sys.stderr, disable=not sys.stderr.isatty(), leave=False)
    for name, tensor in bar:
        path, _, pname = name.rpartition(".")
        module = model.get_submodule(path)
        weight = tensor.to(device=device, dtype=torch.float32).contiguous()
        setattr(module, pname, nn.Parameter(weight, requires_grad=False))
        if plan.get(path, "none") != "none":
            quantize_model(model, {path: plan[path]})
    # Non-persistent buffers are not in the state dict; rebuild them on the real device.
    model.rebuild_buffers(device)
    if arch.int8_embedding and plan.get("lm_head", "none") != "none" and isinstance(model.embed_tokens, nn.Embedding):
        # The head no longer shares the fp32 table, so nothing else holds it.
        model.embed_tokens = Int8Embedding(model.embed_tokens.weight.data)
    model.eval().requires_grad_(False)
    return model


def quantization_plan(ckpt: Checkpoint, quantization: str, device: torch.device) -> dict[str, str]:
    """Module path -> "int4" | "int8" | "none".

    "auto" keeps each weight at its file's precision, and only on CPU, where the packed kernels live;
    a fused module takes the widest precision among its parts.
    """
    names = architecture(ckpt.args.arch).linear_sources(ckpt.args)
    if quantization in ("int4", "int8"):
        return dict.fromkeys(names, quantization)
    if quantization != "auto" or device.type != "cpu":
        return dict.fromkeys(names, "none")
    plan = {}
    for path, parts in names.items():
        bits = [ckpt.source_bits.get(n) for n in parts]
        plan[path] = "none" if None in bits else kind_for_bits(max(b for b in bits if b is not None))
    return plan


def load_model(cfg: ModelConfig) -> LoadedModel:
    ref = resolve_model(cfg.model)
    ckpt = read_checkpoint(ref.path)
    device = resolve_device(cfg.device)
    model = build_model(ckpt, device, cfg)
    return LoadedModel(model=model, tokenizer=ckpt.tokenizer, args=model.args, ref=ref, device=device)
