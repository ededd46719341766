"""Qwen 2, Qwen 3, Mistral, Llama 3 and Phi-3 against transformers, on tiny random checkpoints made at test
time (tests/model/tiny_checkpoints.py): the safetensors folder and the F32 GGUF give transformers'
logits and greedy tokens, the Q8_0 GGUF comes within a looser bound on the block kernels.

The prompt (64 tokens) is longer than Mistral's 16-position window and than the 32-position original
context of Llama 3's and Phi-3's scaled RoPE, so each family's own option decides the numbers; each
family also shows that ember without that option would miss transformers by far more than the bound.

Bounds, measured on these checkpoints (logits up to ~7 in magnitude, float32 on both sides, K/V in
float32): max |logit difference| 3e-6 to 6e-6 from safetensors and from the F32 GGUF (the same numbers:
the F32 GGUF gives the safetensors logits bit for bit, but for Phi-3's float32 attention factor),
bounded at 5e-5. Q8_0 weights with int8-quantized
activations: 0.24 to 0.71, bounded at 1.0, with argmax agreement 86% to 94% (random weights over a 49152
vocabulary leave top-2 margins down to 5e-4), bounded at 80%.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from ember import kernels
from ember.config import CacheConfig, Config, ModelConfig, SchedulerConfig
from ember.engine.engine import Engine
from ember.model.catalog import ModelRef
from ember.model.formats import read_checkpoint
from ember.model.gguf_linear import GGUFEmbedding, GGUFLinear
from ember.model.loader import LoadedModel, build_model, load_model
from tests.engine.helpers import greedy, req, run_all
from tests.engine.test_engine import dense_logits
from tests.model.tiny_checkpoints import FAMILIES, ORIGINAL_CTX, WINDOW, TinyCheckpoint, TinyCheckpoints

TOL = 5e-5
Q8_TOL, Q8_AGREE = 1.0, 0.8
PROMPT = " ".join(f"Item {i} is a red box." for i in range(8))  # 64 tokens
NAMES = list(FAMILIES)


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory: pytest.TempPathFactory, smol_ref: ModelRef) -> TinyCheckpoints:
    return TinyCheckpoints(tmp_path_factory.mktemp("tiny-families"), smol_ref.path)


@pytest.fixture(params=NAMES)
def tiny(request: pytest.FixtureRequest, tiny_checkpoints: TinyCheckpoints) -> TinyCheckpoint:
    return tiny_checkpoints.get(request.param)


def load(path: Path, quantization: str = "none", **model: Any) -> LoadedModel:
    return load_model(ModelConfig(model=str(path), quantization=quantization, **model))


def prompt_ids(lm: LoadedModel) -> list[int]:
    ids = lm.tokenizer.encode(PROMPT)
    assert len(ids) >= 2 * max(WINDOW, ORIGINAL_CTX)
    return ids


def hf_logits(t: TinyCheckpoint, ids: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        return t.model(torch.tensor([ids])).logits[0].float()


def rebuilt(lm: LoadedModel, path: Path, **args: Any) -> LoadedModel:
    """The same checkpoint with some ModelArgs replaced."""
    ckpt = read_checkpoint(path)
    ckpt.args = replace(ckpt.args, **args)
    model = build_model(ckpt, torch.device("cpu"), ModelConfig(quantization="none"))
    return replace(lm, model=model, args=model.args)


def test_args_agree_between_formats(tiny: TinyCheckpoint) -> None:
    hf, f32 = read_checkpoint(tiny.hf_dir).args, read_checkpoint(tiny.gguf_f32).args
    cfg = tiny.model.config
    assert hf.arch == f32.arch == {"mistral": "llama", "llama3": "llama"}.get(tiny.family.name, tiny.family.name)
    assert hf.head_dim == f32.head_dim == (getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)
    assert hf.tie_embeddings == f32.tie_embeddings == cfg.tie_word_embeddings
    assert hf.sliding_window == f32.sliding_window == (WINDOW if tiny.family.name == "mistral" else None)
    assert (hf.rope_theta, hf.max_seq_len) == (f32.rope_theta, f32.max_seq_len)
    assert hf.norm_eps == pytest.approx(f32.norm_eps)  # GGUF stores it as a float32


@pytest.mark.parametrize("source", ["safetensors", "gguf-f32"])
def test_logits_match_transformers(tiny: TinyCheckpoint, source: str) -> None:
    lm = load(tiny.hf_dir if source == "safetensors" else tiny.gguf_f32)
    ids = prompt_ids(lm)
    ours, theirs = dense_logits(lm, ids, kv_dtype=torch.float32), hf_logits(tiny, ids)
    assert ours.shape == theirs.shape == (len(ids), tiny.model.config.vocab_size)
    diff = (ours - theirs).abs().max().item()
    assert diff <= TOL, f"max logit difference {diff}"
    assert torch.equal(ours.argmax(-1), theirs.argmax(-1))


def test_gguf_f32_equals_safetensors(tiny: TinyCheckpoint) -> None:
    """Bit for bit, except Phi-3's: GGUF metadata holds its attention factor as a float32 (measured max
    |logit difference| 8e-6)."""
    a, b = load(tiny.hf_dir), load(tiny.gguf_f32)
    ids = prompt_ids(a)
    assert b.tokenizer.encode(PROMPT) == ids
    ours, theirs = dense_logits(a, ids, kv_dtype=torch.float32), dense_logits(b, ids, kv_dtype=torch.float32)
    if tiny.family.name == "phi3":
        diff = (ours - theirs).abs().max().item()
        assert diff <= TOL, diff
    else:
        assert torch.equal(ours, theirs)


def test_q8_0_gguf_on_the_block_kernels_within_bound(tiny: TinyCheckpoint) -> None:
    """As `ember serve` loads it: every Linear and the embedding run on the file's Q8_0 blocks (the same
    kernels as SmolLM2's), and the numbers stay within the quantized bound."""
    lm = load(tiny.gguf_q8, quantization="auto")
    model = lm.model
    if kernels.load() is not None:
        linears = [m for m in model.modules() if isinstance(m, nn.Linear | GGUFLinear)]
        assert linears and all(isinstance(m, GGUFLinear) for m in linears), [type(m) for m in linears]
        assert len(linears) == 1 + 4 * tiny.model.config.num_hidden_layers
        assert isinstance(model.embed_tokens, GGUFEmbedding)
    ids = prompt_ids(lm)
    ours, theirs = dense_logits(lm, ids, kv_dtype=torch.float32), hf_logits(tiny, ids)
    diff = (ours - theirs).abs().max().item()
    agree = (ours.argmax(-1) == theirs.argmax(-1)).float().mean().item()
    assert diff <= Q8_TOL and agree >= Q8_AGREE, (diff, agree)


def test_greedy_through_the_engine_and_the_prefix_cache(tiny: TinyCheckpoint) -> None:
    """Paged cache, native kernels, prefill in 32-token chunks, then decode; the same request again starts
    from the prefix cache. K/V in float32: random weights leave top-2 margins too thin for float16's."""
    lm = load(tiny.hf_dir)
    ids = prompt_ids(lm)
    with torch.inference_mode():
        out = tiny.model.generate(torch.tensor([ids]), max_new_tokens=16, do_sample=False,
                                  attention_mask=torch.ones(1, len(ids), dtype=torch.long))
    expect = out[0, len(ids):].tolist()
    engine = Engine(lm, Config(
        cache=CacheConfig(block_size=16, kv_cache_mb=16, kv_cache_dtype="float32"),
        scheduler=SchedulerConfig(max_num_seqs=4, max_num_batched_tokens=32)))
    assert run_all(engine, [req("a", ids, greedy(max_tokens=16))])["a"].token_ids == expect
    again = run_all(engine, [req("b", ids, greedy(max_tokens=16))])["b"]
    assert again.cached_tokens == (len(ids) - 1) // 16 * 16 and again.token_ids == expect


def test_without_its_option_ember_would_miss(tiny: TinyCheckpoint) -> None:
    """What each family adds changes the logits by far more than the bound on this prompt: ignoring
    Mistral's window (what ember did before it read one), Llama 3's scaling, Phi-3's long factors, Qwen 2's
    biases or Qwen 3's q/k norm."""
    lm = load(tiny.hf_dir)
    ids = prompt_ids(lm)
    name = tiny.family.name
    if name == "mistral":
        other = rebuilt(lm, tiny.hf_dir, sliding_window=None)
    elif name == "llama3":
        other = rebuilt(lm, tiny.hf_dir, rope_scaling=None)
    elif name == "phi3":
        other = rebuilt(lm, tiny.hf_dir, max_seq_len=ORIGINAL_CTX)  # the short factors
    else:
        other = load(tiny.hf_dir)
        for block in other.model.layers:
            attn = block.self_attn
            if name == "qwen2":
                attn.qkv_bias = None
            else:
                attn.qk_norm = None
    diff = (dense_logits(other, ids, kv_dtype=torch.float32) - hf_logits(tiny, ids)).abs().max().item()
    assert diff > 100 * TOL, diff


def test_phi3_short_factors_within_the_original_context(tiny_checkpoints: TinyCheckpoints) -> None:
    """Served with a context no longer than the original one, Phi-3 keeps its short factors: transformers'
    choice for sequences that stay within it."""
    tiny = tiny_checkpoints.get("phi3")
    lm = load(tiny.hf_dir, max_model_len=ORIGINAL_CTX)
    ids = lm.tokenizer.encode(PROMPT)[:ORIGINAL_CTX - 4]
    diff = (dense_logits(lm, ids, kv_dtype=torch.float32) - hf_logits(tiny, ids)).abs().max().item()
    assert diff <= TOL, diff
