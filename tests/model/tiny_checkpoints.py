"""Tiny random-weight checkpoints of each supported family, made with transformers at test time (never
downloaded): the Hugging Face folder `save_pretrained` writes, and the GGUF files llama.cpp's converter
would write from it (its tensor names and metadata keys for the architecture, q/k rows permuted where it
permutes them), in F32 and in Q8_0.

Every family switches on the options that make it differ from plain Llama: Qwen 2's q/k/v biases, Qwen 3's
per-head q/k norm with a head_dim other than dim / n_heads, Mistral's sliding window (16 positions, shorter
than the test prompts), Llama 3's rope scaling (an original context of 32 positions, so the scaled
frequencies matter), Phi-3's fused projections and LongRoPE (original context 32, so the long factors
apply past it). Norm weights and biases are random too: one put in the wrong place shows.

All share SmolLM2's byte-level BPE vocabulary (49152 tokens): taken from the default GGUF's metadata for
the GGUF files, and converted by transformers into the folder's tokenizer.json.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch

from ember.model.gguf_file import read_gguf_file

DIM, HIDDEN, LAYERS, HEADS, KV_HEADS = 64, 128, 2, 4, 2
MAX_POS = 512
WINDOW = 16
ORIGINAL_CTX = 32


@dataclass(frozen=True)
class Family:
    name: str
    gguf_arch: str
    config: Callable[[int], Any]
    """vocab size -> the transformers config."""
    gguf_names: dict[str, str]
    """Hugging Face per-layer tensor stem -> llama.cpp's."""
    permute_qk: bool = False
    """llama.cpp's converter reorders q's and k's rows for interleaved RoPE (its llama architecture)."""
    extra_meta: Callable[[Any], dict[str, Any]] = lambda cfg: {}
    """config -> further `<arch>.` metadata (without the prefix)."""
    extra_tensors: Callable[[Any], dict[str, np.ndarray]] = lambda cfg: {}
    """config -> further global tensors (RoPE factors)."""


_LLAMA_NAMES = {
    "input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
}


def _common(vocab: int) -> dict[str, Any]:
    return dict(vocab_size=vocab, hidden_size=DIM, intermediate_size=HIDDEN, num_hidden_layers=LAYERS,
                num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=MAX_POS,
                rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2, pad_token_id=2)


def _qwen2(vocab: int) -> Any:
    import transformers
    return transformers.Qwen2Config(**_common(vocab), rope_theta=1000000.0, tie_word_embeddings=False)


def _qwen3(vocab: int) -> Any:
    import transformers
    return transformers.Qwen3Config(**_common(vocab), head_dim=32, rope_theta=1000000.0, tie_word_embeddings=True)


def _mistral(vocab: int) -> Any:
    import transformers
    return transformers.MistralConfig(**_common(vocab), sliding_window=WINDOW, rope_theta=10000.0,
                                      tie_word_embeddings=False)


LLAMA3_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": ORIGINAL_CTX}


def _llama3(vocab: int) -> Any:
    import transformers
    return transformers.LlamaConfig(**_common(vocab), rope_parameters={"rope_theta": 500000.0, **LLAMA3_SCALING},
                                    tie_word_embeddings=True)


def _phi3(vocab: int) -> Any:
    import transformers
    half = DIM // HEADS // 2
    short = [1.0 + 0.05 * i for i in range(half)]
    long = [1.0 + 1.5 * i for i in range(half)]
    return transformers.Phi3Config(**_common(vocab), original_max_position_embeddings=ORIGINAL_CTX,
                                   rope_scaling={"type": "longrope", "short_factor": short, "long_factor": long},
                                   rope_theta=10000.0, tie_word_embeddings=False, sliding_window=None)


def llama3_rope_freqs(cfg: Any) -> np.ndarray:
    """llama.cpp's converter's rope_freqs for a Llama 3 config: the divisor of each inverse frequency."""
    sc = cfg.rope_parameters
    hd = cfg.hidden_size // cfg.num_attention_heads
    factor, low, high = sc["factor"], sc["low_freq_factor"], sc["high_freq_factor"]
    old = sc["original_max_position_embeddings"]
    out = []
    for i in range(0, hd, 2):
        wavelen = 2 * math.pi * sc["rope_theta"] ** (i / hd)
        if wavelen < old / high:
            out.append(1.0)
        elif wavelen > old / low:
            out.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


def _phi3_meta(cfg: Any) -> dict[str, Any]:
    factor = cfg.max_position_embeddings / cfg.original_max_position_embeddings
    return {"rope.scaling.original_context_length": ("u32", cfg.original_max_position_embeddings),
            "rope.scaling.attn_factor": ("f32", math.sqrt(1 + math.log(factor) / math.log(ORIGINAL_CTX)))}


def _phi3_tensors(cfg: Any) -> dict[str, np.ndarray]:
    sc = cfg.rope_parameters
    return {"rope_factors_long.weight": np.array(sc["long_factor"], dtype=np.float32),
            "rope_factors_short.weight": np.array(sc["short_factor"], dtype=np.float32)}


FAMILIES = {f.name: f for f in (
    Family("qwen2", "qwen2", _qwen2, _LLAMA_NAMES),
    Family("qwen3", "qwen3", _qwen3, {**_LLAMA_NAMES, "self_attn.q_norm": "attn_q_norm",
                                       "self_attn.k_norm": "attn_k_norm"}),
    Family("mistral", "llama", _mistral, _LLAMA_NAMES, permute_qk=True,
           extra_meta=lambda cfg: {"attention.sliding_window": ("u32", cfg.sliding_window)}),
    Family("llama3", "llama", _llama3, _LLAMA_NAMES, permute_qk=True,
           extra_tensors=lambda cfg: {"rope_freqs.weight": llama3_rope_freqs(cfg)}),
    Family("phi3", "phi3", _phi3, {
        "input_layernorm": "attn_norm", "self_attn.qkv_proj": "attn_qkv", "self_attn.o_proj": "attn_output",
        "post_attention_layernorm": "ffn_norm", "mlp.gate_up_proj": "ffn_up", "mlp.down_proj": "ffn_down"},
        extra_meta=_phi3_meta, extra_tensors=_phi3_tensors),
)}


@dataclass
class TinyCheckpoint:
    family: Family
    hf_dir: Path
    gguf_f32: Path
    gguf_q8: Path
    model: Any
    """The transformers model (float32, eval) every file was written from: the oracle."""


def permute_like_llama_cpp(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """llama.cpp's `permute` of q/k rows: per head, (2, pair) -> (pair, 2)."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def gguf_tensor_name(family: Family, hf_name: str) -> str:
    top = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
           "lm_head.weight": "output.weight"}
    if hf_name in top:
        return top[hf_name]
    _, _, layer, rest = hf_name.split(".", 3)
    stem, _, suffix = rest.rpartition(".")
    return f"blk.{layer}.{family.gguf_names[stem]}.{suffix}"


def write_gguf(path: Path, family: Family, cfg: Any, state: dict[str, torch.Tensor],
               tokenizer_fields: dict[str, Any], qtype: gguf.GGMLQuantizationType) -> None:
    """`state` as llama.cpp's converter writes it; 2-D weights in `qtype`, 1-D tensors in F32."""
    w = gguf.GGUFWriter(str(path), family.gguf_arch)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]))
    w.add_rope_dimension_count(head_dim)
    w.add_vocab_size(cfg.vocab_size)
    for key, (kind, value) in family.extra_meta(cfg).items():
        (w.add_uint32 if kind == "u32" else w.add_float32)(f"{family.gguf_arch}.{key}", value)
    for key, value in tokenizer_fields.items():
        if isinstance(value, list):
            w.add_array(key, value)
        elif isinstance(value, bool):
            w.add_bool(key, value)
        elif isinstance(value, int):
            w.add_uint32(key, value)
        else:
            w.add_string(key, value)
    for name, array in family.extra_tensors(cfg).items():
        w.add_tensor(name, array)
    for name, t in state.items():
        if family.permute_qk and ".q_proj." in name:
            t = permute_like_llama_cpp(t, cfg.num_attention_heads)
        elif family.permute_qk and ".k_proj." in name:
            t = permute_like_llama_cpp(t, cfg.num_key_value_heads)
        data = np.ascontiguousarray(t.numpy(), dtype=np.float32)
        if data.ndim == 2 and qtype != gguf.GGMLQuantizationType.F32:
            w.add_tensor(gguf_tensor_name(family, name), gguf.quants.quantize(data, qtype), raw_dtype=qtype)
        else:
            w.add_tensor(gguf_tensor_name(family, name), data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@dataclass
class TinyCheckpoints:
    """Builds each family's checkpoint on first use, under `root`, and keeps it for the session."""

    root: Path
    smol_gguf: Path
    built: dict[str, TinyCheckpoint] = field(default_factory=dict)
    _tokenizer_dir: Path | None = None

    def tokenizer_fields(self) -> dict[str, Any]:
        fields = read_gguf_file(self.smol_gguf).fields
        return {k: v for k, v in fields.items() if k.startswith("tokenizer.")}

    def tokenizer_dir(self) -> Path:
        """SmolLM2's tokenizer as transformers converts it from the GGUF (tokenizer.json and its config)."""
        if self._tokenizer_dir is None:
            import transformers
            out = self.root / "smol-tokenizer"
            tok = transformers.AutoTokenizer.from_pretrained(str(self.smol_gguf.parent), gguf_file=self.smol_gguf.name)
            tok.save_pretrained(str(out))
            self._tokenizer_dir = out
        return self._tokenizer_dir

    def get(self, name: str) -> TinyCheckpoint:
        if name not in self.built:
            self.built[name] = self._build(FAMILIES[name])
        return self.built[name]

    def _build(self, family: Family) -> TinyCheckpoint:
        import transformers
        tok_fields = self.tokenizer_fields()
        cfg = family.config(len(tok_fields["tokenizer.ggml.tokens"]))
        torch.manual_seed(0)
        model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
        with torch.no_grad():
            for name, p in model.named_parameters():
                if p.ndim == 1 and name.endswith(".bias"):
                    p.normal_(0.0, 0.5)
                elif p.ndim == 1:
                    p.uniform_(0.5, 1.5)
                else:
                    p.normal_(0.0, 0.15)
        model.generation_config.eos_token_id = None  # generate every token asked for, like ignore_eos
        folder = self.root / family.name
        hf_dir = folder / "hf"
        model.save_pretrained(str(hf_dir))
        for f in self.tokenizer_dir().iterdir():
            shutil.copy(f, hf_dir / f.name)
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if cfg.tie_word_embeddings:
            state.pop("lm_head.weight", None)
        paths = {}
        for qtype in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.Q8_0):
            paths[qtype] = folder / f"tiny-{family.name}-{qtype.name.lower()}.gguf"
            write_gguf(paths[qtype], family, cfg, state, tok_fields, qtype)
        return TinyCheckpoint(family, hf_dir, paths[gguf.GGMLQuantizationType.F32],
                              paths[gguf.GGMLQuantizationType.Q8_0], model)
