"""The architecture registry: one entry per network ember can run, holding every fact the readers and
the loader need about it.

Checkpoint readers (gguf.py, hf.py) hand over tensors under Hugging Face names, whatever the file format;
an entry says which names a checkpoint of its architecture has (`expected_names`), how llama.cpp's GGUF
names map onto them (`gguf_names`), which Hugging Face `model_type`s read as it, how the tensors map onto
its module's parameters (norms by the same name, fused Linears and biases from their parts, anything else
through `extra_layer_state`), which tensors a checkpoint stores fused (`stored_fused`: the readers split
them into their parts), and what a checkpoint may leave out (`defaults`).

Adding an architecture is one entry here, plus its module where no existing one fits.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import MappingProxyType

import torch

from ember.errors import ModelLoadError
from ember.model import gemma3
from ember.model.args import ModelArgs
from ember.model.gemma3 import Gemma3
from ember.model.llama import Llama, attention_q_scale
from ember.model.prompt_formats import GEMMA_CHAT_TEMPLATE
from ember.model.qk_norm import QK_NORMS, qk_norm_state

ModelModule = Llama | Gemma3
"""The module classes the entries build."""

EMBED = "model.embed_tokens.weight"
FINAL_NORM = "model.norm.weight"
HEAD = "lm_head.weight"
"""Checkpoint names of the tensors outside the layers, the same in every architecture."""

GGUF_GLOBAL_NAMES = MappingProxyType({"token_embd.weight": EMBED, "output_norm.weight": FINAL_NORM,
                                      "output.weight": HEAD})
_GGUF_PROJECTIONS = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
# Module path inside a layer -> the checkpoint tensors fused into it, in row order.
_FUSED_LINEARS = {
    "self_attn.qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "self_attn.o_proj": ("self_attn.o_proj",),
    "mlp.gate_up_proj": ("mlp.gate_proj", "mlp.up_proj"),
    "mlp.down_proj": ("mlp.down_proj",),
}
Q_PROJ = "self_attn.q_proj"
"""The tensor whose rows take `Architecture.q_scale`."""
_QKV_BIAS = MappingProxyType({"self_attn.qkv_bias": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")})
_LLAMA_GGUF_NAMES = MappingProxyType(
    {**_GGUF_PROJECTIONS, "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"})


def part_rows(args: ModelArgs, part: str) -> int:
    """How many rows of a stored fused tensor belong to `part`."""
    hd = args.head_dim
    assert hd is not None
    rows = {"self_attn.q_proj": args.n_heads * hd, "self_attn.k_proj": args.n_kv_heads * hd,
            "self_attn.v_proj": args.n_kv_heads * hd, "mlp.gate_proj": args.hidden_dim, "mlp.up_proj": args.hidden_dim}
    return rows[part]

ExtraLayerState = Callable[[Mapping[str, torch.Tensor], ModelArgs, int], Iterator[tuple[str, torch.Tensor]]]


@dataclass(frozen=True)
class ConfigDefaults:
    """What a checkpoint of this architecture may leave out, and the value it then means."""

    rope_theta: float = 10000.0
    max_seq_len: int = 2048
    gguf_norm_eps: float = 1e-5
    """RMSNorm epsilon when a GGUF file lacks `<arch>.attention.layer_norm_rms_epsilon`."""
    hf_norm_eps: float = 1e-6
    """RMSNorm epsilon when a config.json lacks `rms_norm_eps` (transformers' own default)."""
    sliding_window_pattern: int | None = None
    """Set where layers alternate sliding-window and full attention: every n-th layer is full unless the
    checkpoint lists the layers' kinds. A checkpoint must then give the window itself."""
    rope_local_theta: float | None = None
    """RoPE base of the sliding layers."""
    query_pre_attn_scalar: Callable[[int, int, int, int], float] | None = None
    """(n_layers, dim, n_heads, head_dim) -> the attention's query_pre_attn_scalar, where the
    architecture scales queries by it instead of by head_dim."""


@dataclass(frozen=True)
class Architecture:
    name: str
    """`general.architecture` in GGUF files, `ModelArgs.arch` everywhere else."""
    module: Callable[[ModelArgs], ModelModule]
    layer_norms: tuple[str, ...]
    """Per-layer norm weights, under the same name in the checkpoint and the module."""
    extra_layer_tensors: tuple[str, ...] = ()
    """Per-layer checkpoint tensors that `extra_layer_state` maps (neither norms nor Linears)."""
    extra_layer_state: ExtraLayerState | None = None
    """(tensors, args, layer index) -> (module parameter name, tensor) for `extra_layer_tensors`."""
    fused_linears: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: MappingProxyType(_FUSED_LINEARS))
    """Module path inside a layer -> the checkpoint tensors fused into that Linear, in row order."""
    fused_biases: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: MappingProxyType({}))
    """Module parameter inside a layer -> the Linears whose `.bias` tensors are fused into it, in row order."""
    stored_fused: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: MappingProxyType({}))
    """A tensor the checkpoint stores fused (Phi-3's qkv_proj, gate_up_proj) -> the parts it holds in row
    order, which the readers hand over as separate tensors (`part_rows` rows each)."""
    q_scale: Callable[[ModelArgs], float] = attention_q_scale
    """What multiplies q's projection rows (the attention scale, unless the module applies it elsewhere)."""
    gguf_names: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    """llama.cpp's per-layer tensor name (`blk.N.<name>.weight`) -> the checkpoint's (`model.layers.N.<name>
    .weight`)."""
    gguf_permuted_qk: bool = False
    """Whether GGUF files store q's and k's rows permuted for interleaved-pair RoPE (undone on reading)."""
    hf_model_types: tuple[str, ...] = ()
    """config.json `model_type`s read as this architecture (none: Hugging Face directories unsupported)."""
    default_chat_template: str | None = None
    """The chat template a GGUF file without `tokenizer.chat_template` gets."""
    int8_embedding: bool = False
    """Keep the token embedding as int8 rows once a quantized head no longer shares it (a huge vocabulary)."""
    defaults: ConfigDefaults = ConfigDefaults()

    def layer_tensors(self) -> tuple[str, ...]:
        """Every per-layer weight the readers hand over (without `model.layers.N.` and `.weight`)."""
        return (*self.layer_norms, *self.extra_layer_tensors,
                *(part for parts in self.fused_linears.values() for part in parts))

    def stored_layer_tensors(self) -> tuple[str, ...]:
        """Every per-layer weight as the checkpoint stores it (fused tensors whole)."""
        parts = {part for whole in self.stored_fused.values() for part in whole}
        return (*(n for n in self.layer_tensors() if n not in parts), *self.stored_fused)

    def layer_biases(self) -> tuple[str, ...]:
        """The Linears whose `.bias` each layer has."""
        return tuple(part for parts in self.fused_biases.values() for part in parts)

    def split_stored(self, args: ModelArgs, stored: str) -> list[tuple[str, int, int]]:
        """(part, first row, end row) of each part of the stored fused tensor `stored`."""
        out, start = [], 0
        for part in self.stored_fused[stored]:
            end = start + part_rows(args, part)
            out.append((part, start, end))
            start = end
        return out

    def expected_names(self, args: ModelArgs) -> list[str]:
        """The checkpoint tensors a model of `args` needs, under Hugging Face names."""
        names = [EMBED, FINAL_NORM] if args.tie_embeddings else [EMBED, FINAL_NORM, HEAD]
        per_layer, biases = self.layer_tensors(), self.layer_biases()
        for i in range(args.n_layers):
            names += [f"model.layers.{i}.{part}.weight" for part in per_layer]
            names += [f"model.layers.{i}.{part}.bias" for part in biases]
        return names

    def linear_sources(self, args: ModelArgs) -> dict[str, list[str]]:
        """Module path of each Linear -> the checkpoint tensors fused into it."""
        out = {"lm_head": [EMBED if args.tie_embeddings else HEAD]}
        for i in range(args.n_layers):
            for module, parts in self.fused_linears.items():
                out[f"layers.{i}.{module}"] = [f"model.layers.{i}.{part}.weight" for part in parts]
        return out

    def tensors_per_layer(self) -> int:
        """How many module parameters a layer's checkpoint tensors become."""
        extra = 1 if self.extra_layer_state is not None else 0
        return len(self.layer_norms) + extra + len(self.fused_linears) + len(self.fused_biases)

    def check_complete(self, args: ModelArgs, tensors: Mapping[str, torch.Tensor], source: str | Path) -> None:
        """A missing weight found now reads better than a KeyError deep in the loader."""
        missing = [n for n in self.expected_names(args) if n not in tensors]
        if missing:
            raise ModelLoadError(f"{source} lacks {len(missing)} expected tensor(s), e.g. {missing[0]}")


def _unscaled(args: ModelArgs) -> float:
    return 1.0


LLAMA = Architecture(
    name="llama",
    module=Llama,
    layer_norms=("input_layernorm", "post_attention_layernorm"),
    gguf_names=_LLAMA_GGUF_NAMES,
    gguf_permuted_qk=True,
    hf_model_types=("llama", "mistral"),
)

# Qwen 2 / 2.5: Llama with a bias on q, k and v. llama.cpp runs Qwen with NEOX-style RoPE, so its GGUF
# files keep q's and k's rows in Hugging Face order.
QWEN2 = Architecture(
    name="qwen2",
    module=partial(Llama, qkv_bias=True),
    layer_norms=LLAMA.layer_norms,
    fused_biases=_QKV_BIAS,
    gguf_names=_LLAMA_GGUF_NAMES,
    hf_model_types=("qwen2",),
    defaults=ConfigDefaults(rope_theta=1000000.0, gguf_norm_eps=1e-6),
)

# Qwen 3: no biases; q and k RMS-normed per head before RoPE (the attention scale folded into q's norm).
QWEN3 = Architecture(
    name="qwen3",
    module=partial(Llama, qk_norm=True),
    layer_norms=LLAMA.layer_norms,
    extra_layer_tensors=QK_NORMS,
    extra_layer_state=qk_norm_state,
    q_scale=_unscaled,
    gguf_names=MappingProxyType(
        {**_LLAMA_GGUF_NAMES, "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm"}),
    hf_model_types=("qwen3",),
    defaults=ConfigDefaults(rope_theta=1000000.0, gguf_norm_eps=1e-6),
)

# Phi-3: Llama's network with q|k|v and gate|up stored fused (GGUF's ffn_up holds gate|up), and LongRoPE.
PHI3 = Architecture(
    name="phi3",
    module=Llama,
    layer_norms=LLAMA.layer_norms,
    stored_fused=MappingProxyType({"self_attn.qkv_proj": _FUSED_LINEARS["self_attn.qkv_proj"],
                                   "mlp.gate_up_proj": _FUSED_LINEARS["mlp.gate_up_proj"]}),
    gguf_names=MappingProxyType(
        {"attn_qkv": "self_attn.qkv_proj", "attn_output": "self_attn.o_proj", "ffn_up": "mlp.gate_up_proj",
         "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}),
    hf_model_types=("phi3",),
    defaults=ConfigDefaults(gguf_norm_eps=1e-5, hf_norm_eps=1e-5),
)

# Gemma 3's post_attention_layernorm and post_feedforward_layernorm are the sandwich norms on each
# sub-layer's output (unlike Llama's post_attention_layernorm, its pre-feed-forward norm); in GGUF files
# ffn_norm is the pre-feed-forward norm.
GEMMA3 = Architecture(
    name="gemma3",
    module=Gemma3,
    layer_norms=("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                 "post_feedforward_layernorm"),
    extra_layer_tensors=QK_NORMS,
    extra_layer_state=qk_norm_state,
    q_scale=_unscaled,
    gguf_names=MappingProxyType(
        {**_GGUF_PROJECTIONS, "attn_norm": "input_layernorm", "attn_q_norm": "self_attn.q_norm",
         "attn_k_norm": "self_attn.k_norm", "post_attention_norm": "post_attention_layernorm",
         "ffn_norm": "pre_feedforward_layernorm", "post_ffw_norm": "post_feedforward_layernorm"}),
    default_chat_template=GEMMA_CHAT_TEMPLATE,
    int8_embedding=True,
    defaults=ConfigDefaults(sliding_window_pattern=gemma3.DEFAULT_SLIDING_PATTERN,
                            rope_local_theta=gemma3.DEFAULT_LOCAL_THETA,
                            query_pre_attn_scalar=gemma3.default_query_pre_attn_scalar),
)

ARCHITECTURES: Mapping[str, Architecture] = MappingProxyType(
    {a.name: a for a in (LLAMA, GEMMA3, QWEN2, QWEN3, PHI3)})


def architecture(name: object) -> Architecture:
    """The entry for `name`; a ModelLoadError naming the supported ones if there is none."""
    if not isinstance(name, str) or name not in ARCHITECTURES:
        raise ModelLoadError(f"unsupported architecture {name!r} (supported GGUF architectures: "
                             f"{', '.join(ARCHITECTURES)}; Hugging Face model_types: {', '.join(_hf_types())})")
    return ARCHITECTURES[name]


def for_hf_model_type(model_type: object) -> Architecture:
    """The entry a config.json `model_type` reads as."""
    for arch in ARCHITECTURES.values():
        if model_type in arch.hf_model_types:
            return arch
    raise ModelLoadError(f"unsupported model_type {model_type!r} (supported: {', '.join(_hf_types())}; "
                         f"as GGUF: {', '.join(ARCHITECTURES)})")


def _hf_types() -> list[str]:
    return [t for arch in ARCHITECTURES.values() for t in arch.hf_model_types]
