"""GGUF file -> Checkpoint: args from `<arch>.*` metadata, float32 tensors under Hugging Face names.

Two things differ from a Hugging Face checkpoint and are undone here, once: ggml stores shapes
innermost-first (the reader hands back row-major [out, in] data, which is what torch wants), and for
Llama, llama.cpp's converter reorders the rows of q and k for its interleaved-pair RoPE, while our model
(like transformers) rotates halves. Gemma 3, Qwen and Phi-3 files keep the halves layout (llama.cpp runs
them with NEOX-style RoPE); Gemma 3's store every RMSNorm weight as 1 + w, which its module uses as it is.
A tensor the architecture stores fused (Phi-3's attn_qkv, and ffn_up holding gate|up) is handed over as
its parts: row ranges of the same mapped blocks. RoPE's frequency tensors become ModelArgs: Llama 3's
rope_freqs as per-frequency divisors, Phi-3's rope_factors_short / _long as its LongRoPE scaling.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import gguf
import torch

from ember.errors import ModelLoadError
from ember.model.architectures import GGUF_GLOBAL_NAMES, Architecture, architecture
from ember.model.args import FULL, SLIDING, ModelArgs
from ember.model.checkpoint import Checkpoint
from ember.model.gemma3 import layer_types_for_pattern
from ember.model.gguf_file import GGUFFile, TensorInfo, dequantize, read_gguf_file
from ember.model.layers import rope_inv_freq
from ember.tokenizer import Tokenizer

_BLOCK_RE = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")
_ROPE_FREQS = "rope_freqs.weight"
_ROPE_FACTORS = ("rope_factors_short.weight", "rope_factors_long.weight")
_ROPE_TENSORS = (_ROPE_FREQS, *_ROPE_FACTORS)


def read_gguf(path: str | Path) -> Checkpoint:
    path = Path(path)
    reader = _open(path)
    meta = reader.fields
    try:
        spec = architecture(meta.get("general.architecture"))
    except ModelLoadError as e:
        raise ModelLoadError(f"{path}: {e}") from None
    arch = spec.name
    shapes = {t.name: tuple(reversed(t.shape)) for t in reader.tensors}
    args = _model_args(meta, spec, shapes, path)
    # Before the slow part, so an unsupported vocabulary fails at once.
    tok_meta = {k: v for k, v in meta.items() if k.startswith("tokenizer.")}
    if spec.default_chat_template is not None:
        tok_meta.setdefault("tokenizer.chat_template", spec.default_chat_template)
    tokenizer = Tokenizer.from_gguf_fields(tok_meta)

    entries: dict[str, tuple[TensorInfo, tuple[int, ...], int | None]] = {}
    source_bits: dict[str, int] = {}
    rope: dict[str, list[float]] = {}
    for t in reader.tensors:
        if t.name in _ROPE_TENSORS:
            rope[t.name] = _dequantize(t, shapes[t.name]).flatten().tolist()
            continue
        stored = hf_name(t.name, spec)
        if stored is None:
            raise ModelLoadError(f"unexpected tensor {t.name!r} in {path}: not a plain {arch} checkpoint "
                                 f"(the {arch} tensors ember knows: {', '.join(sorted(spec.gguf_names))})")
        for name, part in _split_stored(stored, t, spec, args, path):
            heads = None
            if spec.gguf_permuted_qk:
                heads = args.n_heads if ".q_proj." in name else args.n_kv_heads if ".k_proj." in name else None
            entries[name] = (part, tuple(reversed(part.shape)), heads)
            bits = quant_bits(part.tensor_type)
            if bits is not None:
                source_bits[name] = bits
    tensors = LazyTensors(entries)
    args = _rope_tensor_args(args, rope, meta, path)
    spec.check_complete(args, tensors, path)
    return Checkpoint(args=args, tensors=tensors, tokenizer=tokenizer, source=str(path), source_bits=source_bits)


def _split_stored(name: str, t: TensorInfo, spec: Architecture, args: ModelArgs, path: Path
                  ) -> Iterator[tuple[str, TensorInfo]]:
    """(Hugging Face name, tensor) of each part of a stored fused weight (row ranges of its blocks: a
    block never spans two rows), or of the tensor itself."""
    layer, _, rest = name.removeprefix("model.layers.").partition(".")
    stem, _, suffix = rest.rpartition(".")
    if not name.startswith("model.layers.") or stem not in spec.stored_fused:
        yield name, t
        return
    parts = spec.split_stored(args, stem)
    rows = t.shape[1] if len(t.shape) > 1 else 0
    if rows != parts[-1][2]:
        raise ModelLoadError(f"{path}: {t.name} has {rows} rows, not the {parts[-1][2]} its metadata implies")
    for part, start, end in parts:
        yield (f"model.layers.{layer}.{part}.{suffix}",
               replace(t, shape=(t.shape[0], end - start), data=t.data[start:end]))


def _rope_tensor_args(args: ModelArgs, rope: dict[str, list[float]], meta: dict[str, Any], path: Path) -> ModelArgs:
    """Llama 3's rope_freqs (divisors, named as the Llama 3 scaling they reproduce where one does), or
    Phi-3's short and long factors (its LongRoPE scaling, in transformers' terms)."""
    if _ROPE_FREQS in rope:
        try:
            scaling = llama3_scaling_from_freqs(args, torch.tensor(rope[_ROPE_FREQS]), path)
        except ModelLoadError:
            scaling = None  # the divisors still say all there is to say
        return replace(args, rope_freq_factors=tuple(rope[_ROPE_FREQS]), rope_scaling=scaling)
    if not any(n in rope for n in _ROPE_FACTORS):
        return args
    if not all(n in rope for n in _ROPE_FACTORS):
        raise ModelLoadError(f"{path}: has one of {' and '.join(_ROPE_FACTORS)} but not the other")
    arch = args.arch
    original = meta.get(f"{arch}.rope.scaling.original_context_length")
    if original is None:
        raise ModelLoadError(f"GGUF file {path} lacks metadata {arch}.rope.scaling.original_context_length")
    return replace(args, rope_scaling={
        "rope_type": "longrope", "short_factor": rope[_ROPE_FACTORS[0]], "long_factor": rope[_ROPE_FACTORS[1]],
        "original_max_position_embeddings": int(original), "factor": args.max_seq_len / int(original),
        "attention_factor": meta.get(f"{arch}.rope.scaling.attn_factor")})


def quant_bits(qtype: gguf.GGMLQuantizationType) -> int | None:
    """Nominal bits per weight of a GGML block type (Q4_1 -> 4, Q6_K -> 6); None for float types."""
    m = re.match(r"I?Q(\d)", qtype.name)
    return int(m.group(1)) if m else None


class LazyTensors(Mapping[str, torch.Tensor]):
    """Hugging Face name -> float32 tensor, dequantized from the memory-mapped file at each access and
    kept by no one here: the loader quantizes one module at a time, so the whole fp32 model never sits in
    memory at once (peak RSS while loading SmolLM2: 1.5 GB before, see loader.build_model)."""

    def __init__(self, entries: dict[str, tuple[TensorInfo, tuple[int, ...], int | None]]) -> None:
        self._entries = entries

    def __getitem__(self, name: str) -> torch.Tensor:
        t, shape, rope_heads = self._entries[name]
        w = _dequantize(t, shape)
        return unpermute_rope_rows(w, rope_heads) if rope_heads is not None else w

    def block(self, name: str) -> tuple[TensorInfo, int | None]:
        """The stored tensor behind `name`, and the head count its rows were RoPE-permuted over (None: they
        were not), for kernels that read the file's blocks themselves."""
        t, _, rope_heads = self._entries[name]
        return t, rope_heads

    def __contains__(self, name: object) -> bool:
        # Mapping's default would dequantize the tensor to answer (check_complete asks for every one).
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)


def hf_name(gguf_name: str, arch: Architecture) -> str | None:
    """The Hugging Face name of a GGUF tensor of architecture `arch`, or None for one we do not know."""
    if gguf_name in GGUF_GLOBAL_NAMES:
        return GGUF_GLOBAL_NAMES[gguf_name]
    block_names = arch.gguf_names
    m = _BLOCK_RE.fullmatch(gguf_name)
    if m is None or m.group(2) not in block_names:
        return None
    return f"model.layers.{m.group(1)}.{block_names[m.group(2)]}.{m.group(3)}"


def unpermute_rope_rows(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Inverse of llama.cpp's `permute`: per head, its rows are stored as (pair, 2) -- both members of
    a rotated pair adjacent -- and Hugging Face keeps them as (2, pair): first halves, then second."""
    rows = w.shape[0]
    return w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape).contiguous()


def _open(path: Path) -> GGUFFile:
    if not path.is_file():
        raise ModelLoadError(f"GGUF file not found: {path}")
    try:
        return read_gguf_file(path)
    except (OSError, ValueError, KeyError, IndexError, struct.error, UnicodeDecodeError) as e:
        raise ModelLoadError(f"cannot read GGUF file {path}: {' '.join(str(e).split())}") from e


def _dequantize(t: TensorInfo, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.from_numpy(dequantize(t).reshape(shape))


def _model_args(meta: dict[str, Any], spec: Architecture, shapes: dict[str, tuple[int, ...]],
                path: Path) -> ModelArgs:
    arch, defaults = spec.name, spec.defaults

    def key(name: str, default: Any = None) -> Any:
        value = meta.get(f"{arch}.{name}", default)
        if value is None:
            raise ModelLoadError(f"GGUF file {path} lacks metadata {arch}.{name}")
        return value

    if "token_embd.weight" not in shapes:
        raise ModelLoadError(f"GGUF file {path} has no token_embd.weight tensor")
    dim, n_heads = int(key("embedding_length")), int(key("attention.head_count"))
    head_dim = int(key("attention.key_length", dim // n_heads))
    rot = int(key("rope.dimension_count", head_dim))
    if rot != head_dim:
        raise ModelLoadError(f"{path}: partial rotary embeddings ({rot} of {head_dim} dims) are not supported")
    n_layers = int(key("block_count"))
    extra: dict[str, Any] = {}
    if defaults.sliding_window_pattern is not None:
        extra = _sliding_args(meta, spec, n_layers, path)
    elif meta.get(f"{arch}.attention.sliding_window"):  # Mistral (as llama), Phi-3: every layer slides
        extra = {"sliding_window": int(meta[f"{arch}.attention.sliding_window"])}
    if defaults.query_pre_attn_scalar is not None:
        extra["query_pre_attn_scalar"] = defaults.query_pre_attn_scalar(n_layers, dim, n_heads, head_dim)
    return ModelArgs(
        # The embedding's rows, not llama.vocab_size: older files omit the key, and rows are what ids index.
        vocab_size=shapes["token_embd.weight"][0],
        dim=dim,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=int(key("attention.head_count_kv", n_heads)),
        hidden_dim=int(key("feed_forward_length")),
        norm_eps=float(key("attention.layer_norm_rms_epsilon", defaults.gguf_norm_eps)),
        rope_theta=float(key("rope.freq_base", defaults.rope_theta)),
        rope_scaling=_rope_scaling(meta, arch),
        max_seq_len=int(key("context_length", defaults.max_seq_len)),
        tie_embeddings="output.weight" not in shapes,
        head_dim=head_dim,
        arch=arch,
        **extra,
    )


def _sliding_args(meta: dict[str, Any], spec: Architecture, n_layers: int, path: Path) -> dict[str, Any]:
    """Which layers slide, and over how many positions. GGUF files carry the window and may carry the
    layers' kinds; the rest is the architecture's fixed design (its registry defaults)."""
    arch, defaults = spec.name, spec.defaults
    window = meta.get(f"{arch}.attention.sliding_window")
    if window is None:
        raise ModelLoadError(f"GGUF file {path} lacks metadata {arch}.attention.sliding_window")
    pattern = meta.get(f"{arch}.attention.sliding_window_pattern", defaults.sliding_window_pattern)
    if isinstance(pattern, list):  # per layer: true where the layer slides
        if len(pattern) != n_layers:
            raise ModelLoadError(f"{path}: sliding_window_pattern has {len(pattern)} entries for {n_layers} layers")
        layer_types = tuple(SLIDING if p else FULL for p in pattern)
    else:
        layer_types = layer_types_for_pattern(n_layers, int(pattern))
    return {"sliding_window": int(window), "layer_types": layer_types, "rope_local_theta": defaults.rope_local_theta}


def _rope_scaling(meta: dict[str, Any], arch: str) -> dict[str, Any] | None:
    kind = meta.get(f"{arch}.rope.scaling.type")
    factor = meta.get(f"{arch}.rope.scaling.factor", meta.get(f"{arch}.rope.scale_linear"))
    if kind in (None, "none") and factor in (None, 1.0):
        return None
    scaling: dict[str, Any] = {"rope_type": kind or "linear", "factor": float(factor or 1.0)}
    original = meta.get(f"{arch}.rope.scaling.original_context_length")
    if original is not None:
        scaling["original_max_position_embeddings"] = int(original)
    return scaling


# Llama 3.x files carry their RoPE scaling only as a per-frequency divisor tensor; these are the
# parameters every released Llama 3.x used, tried in turn and kept only when they reproduce it.
_LLAMA3_CANDIDATES = tuple({"rope_type": "llama3", "factor": f, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                            "original_max_position_embeddings": 8192} for f in (8.0, 32.0, 16.0, 4.0, 2.0))


def llama3_scaling_from_freqs(args: ModelArgs, rope_freqs: torch.Tensor, path: Path) -> dict[str, Any]:
    plain = rope_inv_freq(replace(args, rope_scaling=None))
    for candidate in _LLAMA3_CANDIDATES:
        scaled = rope_inv_freq(replace(args, rope_scaling=candidate))
        if torch.allclose(plain / scaled, rope_freqs.flatten().float(), rtol=1e-3):
            return dict(candidate)
    raise ModelLoadError(f"{path}: its rope_freqs tensor matches no known Llama 3 RoPE scaling")
