"""Oracle: transformers' Gemma3ForCausalLM loading the same GGUF. Logits, greedy tokens and logprobs agree.

Tolerances are SmolLM2's (tests/model/test_llama_matches_transformers.py): both sides run float32 on the
same dequantized weights, so differences come only from the order of floating-point operations:
max |logit difference| <= 2e-3 on logits of magnitude ~25 (measured: 2e-5 to 3e-5 on short prompts).
One prompt (~780 tokens) is longer than the 512-position sliding window, so the local layers' window is
exercised (in one prefill and, through the engine, across prefill chunks and decode steps); rounding
differences grow with the positions summed, and it was measured at 1.4e-3, too close to 2e-3 to be a
stable bound, so it gets 5e-3 (a window off by one position moves logits by far more).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from ember import kernels
from ember.config import ModelConfig
from ember.model.embedding import Int8Embedding
from ember.model.gemma3 import FULL, SLIDING, Gemma3
from ember.model.gguf import read_gguf
from ember.model.gguf_linear import GGUFEmbedding, GGUFLinear
from ember.model.loader import load_model
from tests.engine.helpers import greedy, make_engine, req, run_all
from tests.engine.test_engine import dense_logits

TOL = 2e-3
LONG_TOL = 5e-3
LONG = " ".join(f"Item {i}: the {['red', 'green', 'blue'][i % 3]} box holds {i * 7 % 13} marbles."
                for i in range(60))  # ~900 tokens: past the 512-position window
PROMPTS = ["The capital of France is", "def fibonacci(n):\n    ", "Once upon a time, in a land far away,", LONG]


def hf_logits(hf_model: Any, ids: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        return hf_model(torch.tensor([ids])).logits[0].float()


def hf_greedy(hf_model: Any, ids: list[int], n: int) -> list[int]:
    with torch.inference_mode():
        out = hf_model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False,
                                attention_mask=torch.ones(1, len(ids), dtype=torch.long))
    return out[0, len(ids):].tolist()


def test_args_from_the_file(gemma: Any, gemma_hf_model: Any) -> None:
    a, cfg = gemma.args, gemma_hf_model.config
    assert isinstance(gemma.model, Gemma3) and a.arch == "gemma3"
    assert (a.vocab_size, a.dim, a.n_layers, a.n_heads, a.n_kv_heads, a.head_dim, a.hidden_dim) == (
        262144, 640, 18, 4, 1, 256, 2048)
    assert a.layer_types == tuple(FULL if (i + 1) % 6 == 0 else SLIDING for i in range(18))
    assert [t.split("_")[0] for t in cfg.layer_types] == [t if t == SLIDING else "full" for t in a.layer_types]
    assert a.sliding_window == cfg.sliding_window == 512
    assert a.query_pre_attn_scalar == cfg.query_pre_attn_scalar == 256
    assert a.rope_theta == cfg.rope_parameters["full_attention"]["rope_theta"] == 1e6
    assert a.rope_local_theta == cfg.rope_parameters["sliding_attention"]["rope_theta"] == 1e4
    assert a.tie_embeddings and cfg.final_logit_softcapping is None
    assert a.norm_eps == pytest.approx(1e-6)


@pytest.mark.parametrize("prompt", PROMPTS, ids=["france", "code", "story", "long"])
def test_logits_agree(gemma: Any, gemma_hf_model: Any, prompt: str) -> None:
    ids = gemma.tokenizer.encode(prompt)
    ours, theirs = dense_logits(gemma, ids, kv_dtype=torch.float32), hf_logits(gemma_hf_model, ids)
    assert ours.shape == theirs.shape == (len(ids), 262144)
    diff = (ours - theirs).abs().max().item()
    assert diff <= (LONG_TOL if prompt is LONG else TOL), f"max logit difference {diff}"
    assert torch.equal(ours.argmax(-1), theirs.argmax(-1))


@pytest.mark.parametrize("prompt", [PROMPTS[2], LONG], ids=["story", "long"])
def test_greedy_identical_through_the_engine(gemma: Any, gemma_hf_model: Any, prompt: str) -> None:
    """The engine path: paged cache, native kernels, prefill in 256-token chunks (the long prompt's
    last chunks and every decode step attend over a window that starts past position 0)."""
    ids = gemma.tokenizer.encode(prompt)
    expect = hf_greedy(gemma_hf_model, ids, 24)
    engine = make_engine(gemma)
    got = run_all(engine, [req("g", ids, greedy(max_tokens=24))])["g"].token_ids
    assert got == expect, (gemma.tokenizer.decode(got), gemma.tokenizer.decode(expect))
    # Again from the prefix cache (whole blocks, at least the last token recomputed), over the same window.
    again = run_all(engine, [req("h", ids, greedy(max_tokens=24))])["h"]
    assert again.cached_tokens == (len(ids) - 1) // 16 * 16 and again.token_ids == expect


def test_echo_logprobs_through_http_match_transformers(gemma: Any, gemma_hf_model: Any) -> None:
    """echo + logprobs + max_tokens=0 (lm-eval's loglikelihood) through a real server on the fp32 model,
    against log-softmax of transformers' logits."""
    import httpx

    from tests.conftest import LiveServer, server_config

    ids = gemma.tokenizer.encode("Once upon a time, in a land far away, there lived a dragon.")
    ref = torch.log_softmax(hf_logits(gemma_hf_model, ids), dim=-1)
    want = [ref[i - 1, ids[i]].item() for i in range(1, len(ids))]
    # float32 K/V: the exact model (TOL); the default float16 cache rounds K and V once (measured 2.6e-3).
    for kv_dtype, tol in (("float32", TOL), ("float16", 1e-2)):
        with LiveServer(server_config(kv_cache_dtype=kv_dtype), gemma) as server:
            model_id = gemma.ref.model_id
            assert model_id.endswith("/gemma-3-270m-q4_k_m")
            r = httpx.post(server.url + "/v1/completions", timeout=120, json={
                "model": model_id, "prompt": ids, "max_tokens": 0, "echo": True, "logprobs": 2, "temperature": 0})
        assert r.status_code == 200, r.text
        lp = r.json()["choices"][0]["logprobs"]
        assert lp["token_ids"] == ids and lp["token_logprobs"][0] is None
        assert max(abs(a - b) for a, b in zip(lp["token_logprobs"][1:], want, strict=True)) <= tol, kv_dtype
        for i in range(1, len(ids)):
            top2 = ref[i - 1].topk(2)
            for t, v in zip(top2.indices.tolist(), top2.values.tolist(), strict=True):
                assert abs(lp["top_logprobs"][i][gemma.tokenizer.id_to_piece(t)] - v) <= tol, kv_dtype


# -- as `ember serve` loads it: each weight at its file's precision (int4 / int8 kernels) ------------------

@pytest.fixture(scope="module")
def gemma_served(gemma_path: Any) -> Any:
    return load_model(ModelConfig(model=str(gemma_path)))


def test_served_model_holds_no_fp32_vocabulary_table(gemma_served: Any) -> None:
    """The 262144 x 640 table is tied and no fp32 copy of it (671 MB) is made: with the native kernels the
    head and the embedding both read the file's Q8_0 blocks in place; without them the head runs int8 and
    the embedding is int8 rows (~510 MB in all)."""
    model = gemma_served.model
    native = kernels.load() is not None
    assert isinstance(model.embed_tokens, GGUFEmbedding if native else Int8Embedding)
    if native:
        assert isinstance(model.lm_head, GGUFLinear)
    tensors = [*model.parameters(), *model.buffers()]
    assert max(t.numel() for t in tensors if t.dtype == torch.float32) < 262144 * 640 // 8
    assert sum(t.numel() * t.element_size() for t in tensors) < 262144 * 640 * 4


def test_int8_embedding_reproduces_q8_0_rows_exactly(gemma_path: Any, gemma_served: Any) -> None:
    table = read_gguf(gemma_path).tensors["model.embed_tokens.weight"]
    ids = torch.arange(0, 262144, 97)
    assert torch.equal(gemma_served.model.embed_tokens(ids), table[ids])


@pytest.mark.parametrize("prompt", PROMPTS, ids=["france", "code", "story", "long"])
def test_served_precision_close_to_transformers(gemma_served: Any, gemma_hf_model: Any, prompt: str) -> None:
    """Quantized kernels with bf16 activations (scales rounded to bf16, Q5_0/Q4_K/Q6_K requantized to
    int4/int8 groups of 32) move logprobs by more than fp32 rounding. Measured at the reference's top
    token: max |logprob difference| 0.09 / 0.45 / 0.14 / 0.35 on these prompts, top-1 agreement 100% on
    the short ones and 99.6% over the long one's 784 positions; the bounds leave margin above that."""
    ids = gemma_served.tokenizer.encode(prompt)
    ours, theirs = dense_logits(gemma_served, ids, kv_dtype=torch.float32), hf_logits(gemma_hf_model, ids)
    lp_ours, lp_theirs = ours.log_softmax(-1), theirs.log_softmax(-1)
    chosen = theirs.argmax(-1, keepdim=True)  # the tokens that matter: the reference's likely ones
    lp_diff = (lp_ours.gather(1, chosen) - lp_theirs.gather(1, chosen)).abs().max().item()
    agree = (ours.argmax(-1) == theirs.argmax(-1)).float().mean().item()
    assert lp_diff <= 0.75 and agree >= 0.97, (lp_diff, agree)


def test_module_state_leaves_out_skipped_modules(gemma_path: Any) -> None:
    """Modules another path provides (kernels on the file's own blocks) are not read or yielded."""
    from ember.model.architectures import GEMMA3
    from ember.model.module_state import module_state

    ckpt = read_gguf(gemma_path)
    every = [n for n, _ in module_state(ckpt)]
    assert len(every) == len(set(every)) == 3 + GEMMA3.tensors_per_layer() * 18
    skip = frozenset({"embed_tokens", "lm_head", "layers.0.self_attn.qkv_proj", "layers.17.mlp.down_proj"})
    names = [n for n, _ in module_state(ckpt, skip)]
    assert sorted(set(every) - set(names)) == sorted(f"{m}.weight" for m in skip)
