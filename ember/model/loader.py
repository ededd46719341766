"""load_model: a checkpoint on disk -> a ready model module (Llama or Gemma 3) and its tokenizer.

Checkpoint readers (gguf.py, hf.py) hand over tensors under Hugging Face names; the differences from our
module layout (fused qkv and gate_up, tied embeddings) are a mapping applied here, once, per architecture
(`FAMILIES`: the Llama mapping is below, Gemma 3's in gemma3.py).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from ember.config import ModelConfig
from ember.model import gemma3
from ember.model.args import ModelArgs
from ember.model.catalog import ModelRef, resolve_model
from ember.model.checkpoint import Checkpoint, read_checkpoint
from ember.model.gemma3 import Gemma3
from ember.model.gguf_linear import block_modules
from ember.model.llama import Llama
from ember.model.quant import kind_for_bits, quantize_model
from ember.tokenizer import Tokenizer


@dataclass
class LoadedModel:
    model: Llama | Gemma3
    tokenizer: Tokenizer
    args: ModelArgs
    ref: ModelRef
    device: torch.device


def attention_q_scale(args: ModelArgs) -> float:
    """The attention scale folded into q (exact for head_dim 64: a power of two), so the decode path spends
    no op on it."""
    return 1.0 / math.sqrt(args.head_dim or 1)


def iter_module_state(ckpt: Checkpoint, skip: frozenset[str] = frozenset()) -> Iterator[tuple[str, torch.Tensor]]:
    """Hugging Face Llama tensor names -> this package's module names (fused projections), one tensor
    at a time, so a lazy checkpoint is never whole in memory. Modules in `skip` are not read at all."""
    t, args = ckpt.tensors, ckpt.args
    if "embed_tokens" not in skip:
        yield "embed_tokens.weight", t["model.embed_tokens.weight"]
    yield "norm.weight", t["model.norm.weight"]
    if "lm_head" not in skip:
        yield "lm_head.weight", t["model.embed_tokens.weight" if args.tie_embeddings else "lm_head.weight"]
    for i in range(args.n_layers):
        p, m = f"model.layers.{i}.", f"layers.{i}."
        yield m + "input_layernorm.weight", t[p + "input_layernorm.weight"]
        yield m + "post_attention_layernorm.weight", t[p + "post_attention_layernorm.weight"]
        if m + "self_attn.qkv_proj" not in skip:
            q = t[p + "self_attn.q_proj.weight"] * attention_q_scale(args)
            yield m + "self_attn.qkv_proj.weight", torch.cat(
                [q, t[p + "self_attn.k_proj.weight"], t[p + "self_attn.v_proj.weight"]], dim=0)
        if m + "self_attn.o_proj" not in skip:
            yield m + "self_attn.o_proj.weight", t[p + "self_attn.o_proj.weight"]
        if m + "mlp.gate_up_proj" not in skip:
            yield m + "mlp.gate_up_proj.weight", torch.cat(
                [t[p + "mlp.gate_proj.weight"], t[p + "mlp.up_proj.weight"]], dim=0)
        if m + "mlp.down_proj" not in skip:
            yield m + "mlp.down_proj.weight", t[p + "mlp.down_proj.weight"]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass(frozen=True)
class Family:
    """One architecture's module class and its checkpoint -> module mapping."""

    module: Callable[[ModelArgs], Llama | Gemma3]
    module_state: Callable[[Checkpoint, frozenset[str]], Iterator[tuple[str, torch.Tensor]]]
    """(module parameter name, tensor) pairs, one tensor at a time, leaving out the modules named."""
    linear_sources: Callable[[ModelArgs], dict[str, list[str]]]
    """Module path of each Linear -> the checkpoint tensors fused into it."""
    tensors_per_layer: int
    q_scale: Callable[[ModelArgs], float]
    """What multiplies q's projection rows (Llama folds the attention scale there; Gemma 3 into q's norm)."""


def family(args: ModelArgs) -> Family:
    if args.arch == "gemma3":
        return Family(Gemma3, gemma3.module_state, source_names, gemma3.MODULE_TENSORS_PER_LAYER,
                      lambda _: 1.0)
    if args.arch == "llama":
        return Family(Llama, iter_module_state, source_names, 7, attention_q_scale)
    raise ValueError(f"no model for architecture {args.arch!r}")


def build_model(ckpt: Checkpoint, device: torch.device, cfg: ModelConfig | None = None) -> Llama | Gemma3:
    args = ckpt.args
    if cfg is not None and cfg.max_model_len is not None:
        args = replace(args, max_seq_len=cfg.max_model_len)
    fam = family(args)
    with torch.device("meta"):
        model = fam.module(args)
    plan = quantization_plan(ckpt, cfg.quantization, device) if cfg is not None else {}
    # GGUF block tensors run in place on the file's memory map wherever the block kernels can take them.
    blocks = {}
    if cfg is not None and cfg.quantization == "auto" and cfg.native_kernels and device.type == "cpu":
        blocks = block_modules(ckpt.tensors, fam.linear_sources(args), "model.embed_tokens.weight",
                               fam.q_scale(args))
    for path, module in blocks.items():
        parent_path, _, child = path.rpartition(".")
        setattr(model.get_submodule(parent_path) if parent_path else model, child, module)
    # One weight at a time, quantized as soon as it is in place: the fp32 model is never whole in memory.
    total = 3 + fam.tensors_per_layer * args.n_layers - len(blocks)
    bar = tqdm(fam.module_state(ckpt, frozenset(blocks)), total=total, desc=f"loading {Path(ckpt.source).name}",
               unit="tensor",
               file=sys.stderr, disable=not sys.stderr.isatty(), leave=False)
    for name, tensor in bar:
        path, _, pname = name.rpartition(".")
        module = model.get_submodule(path)
        weight = tensor.to(device=device, dtype=torch.float32).contiguous()
        setattr(module, pname, nn.Parameter(weight, requires_grad=False))
        if plan.get(path, "none") != "none":
            quantize_model(model, {path: plan[path]})
    # Non-persistent buffers are not in the state dict; rebuild them on the real device.
    model.rebuild_buffers(device)
    if isinstance(model, Gemma3) and plan.get("lm_head", "none") != "none":
        model.quantize_embedding()  # the head no longer shares the fp32 table
    model.eval().requires_grad_(False)
    return model


def source_names(args: ModelArgs) -> dict[str, list[str]]:
    """Module path of each Linear -> the checkpoint tensors fused into it (the same fusions, under the
    same Hugging Face names, for every architecture here)."""
    out = {"lm_head": ["model.embed_tokens.weight" if args.tie_embeddings else "lm_head.weight"]}
    for i in range(args.n_layers):
        p = f"model.layers.{i}."
        out[f"layers.{i}.self_attn.qkv_proj"] = [p + f"self_attn.{n}_proj.weight" for n in "qkv"]
        out[f"layers.{i}.self_attn.o_proj"] = [p + "self_attn.o_proj.weight"]
        out[f"layers.{i}.mlp.gate_up_proj"] = [p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight"]
        out[f"layers.{i}.mlp.down_proj"] = [p + "mlp.down_proj.weight"]
    return out


def quantization_plan(ckpt: Checkpoint, quantization: str, device: torch.device) -> dict[str, str]:
    """Module path -> "int4" | "int8" | "none".

    "auto" keeps each weight at its file's precision, and only on CPU, where the packed kernels live;
    a fused module takes the widest precision among its parts.
    """
    names = family(ckpt.args).linear_sources(ckpt.args)
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
