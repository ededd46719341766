"""Engine mechanics on a tiny random-weight Llama: batching, prefix cache, abort, preemption."""

from __future__ import annotations

import random
from dataclasses import replace

import torch

from ember.engine.request import SamplingParams
from ember.model.attention import ForwardBatch, PrefillSlice
from ember.model.loader import LoadedModel
from tests.engine.helpers import greedy, make_engine, req, run_all


def prompts(n: int, lo: int, hi: int, vocab: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(100, vocab) for _ in range(rng.randint(lo, hi))] for _ in range(n)]


def dense_logits(lm: LoadedModel, ids: list[int], kv_dtype: torch.dtype = torch.float16) -> torch.Tensor:
    """Reference: the same network, one sequence, plain causal attention over a fresh cache that stores
    K and V as the engine's does (float16 by default)."""
    model = lm.model
    a = model.args
    bs = 16
    nb = -(-len(ids) // bs)
    width = a.n_kv_heads * a.head_dim
    kv = [(torch.zeros(nb * bs, width, dtype=kv_dtype), torch.zeros(nb * bs, width, dtype=kv_dtype))
          for _ in range(a.n_layers)]
    n = len(ids)
    fb = ForwardBatch(input_ids=torch.tensor(ids), positions=torch.arange(n), slot_mapping=torch.arange(n),
                      prefills=[PrefillSlice(0, n, torch.arange(n))])
    with torch.inference_mode():
        return model.logits(model(fb, kv))


def test_paged_decode_matches_full_prefill(tiny: LoadedModel) -> None:
    """Logits of token-by-token decoding through the paged cache equal one full causal pass."""
    ids = prompts(1, 40, 40, tiny.args.vocab_size)[0]
    engine = make_engine(tiny, block_size=4)
    out = run_all(engine, [req("a", ids[:5], greedy(max_tokens=20))])["a"]
    full = dense_logits(tiny, ids[:5] + out.token_ids)
    expect = full[4:-1].argmax(-1).tolist()
    assert out.token_ids == expect


def test_batch_equals_alone(tiny: LoadedModel) -> None:
    ps = prompts(6, 3, 70, tiny.args.vocab_size)
    alone = {}
    for i, p in enumerate(ps):
        alone[i] = run_all(make_engine(tiny, prefix=False), [req(str(i), p, greedy(max_tokens=12))])[str(i)]
    together = run_all(make_engine(tiny, prefix=False, max_num_batched_tokens=64),
                       [req(str(i), p, greedy(max_tokens=12)) for i, p in enumerate(ps)])
    for i in range(len(ps)):
        assert together[str(i)].token_ids == alone[i].token_ids, i
        assert together[str(i)].finish_reason == "length"


def test_requests_join_a_running_batch(tiny: LoadedModel) -> None:
    """Continuous batching: a request added mid-flight runs alongside, and both match their solo runs."""
    ps = prompts(2, 20, 30, tiny.args.vocab_size, seed=3)
    solo = [run_all(make_engine(tiny), [req(str(i), p, greedy(max_tokens=10))])[str(i)].token_ids
            for i, p in enumerate(ps)]
    engine = make_engine(tiny)
    engine.add(req("0", ps[0], greedy(max_tokens=10)))
    got: dict[str, list[int]] = {"0": [], "1": []}
    for _ in range(3):
        for o in engine.step():
            got[o.request_id].extend(o.new_token_ids)
    engine.add(req("1", ps[1], greedy(max_tokens=10)))
    both_running = False
    while engine.has_work:
        both_running |= len(engine.scheduler.running) == 2
        for o in engine.step():
            got[o.request_id].extend(o.new_token_ids)
    assert both_running
    assert got["0"] == solo[0] and got["1"] == solo[1]


def test_chunked_prefill_matches_whole(tiny: LoadedModel) -> None:
    p = prompts(1, 200, 200, tiny.args.vocab_size, seed=5)[0]
    whole = run_all(make_engine(tiny, max_num_batched_tokens=512), [req("a", p)])["a"]
    chunked = run_all(make_engine(tiny, max_num_batched_tokens=32), [req("a", p)])["a"]
    assert whole.token_ids == chunked.token_ids


def test_prefix_cache_hit_same_output(tiny: LoadedModel) -> None:
    engine = make_engine(tiny)
    base = prompts(1, 100, 100, tiny.args.vocab_size, seed=7)[0]
    cold = run_all(engine, [req("a", base)])["a"]
    assert cold.cached_tokens == 0
    warm = run_all(engine, [req("b", base)])["b"]
    assert warm.cached_tokens == (len(base) - 1) // 16 * 16 == 96
    assert warm.token_ids == cold.token_ids
    fresh = run_all(make_engine(tiny, prefix=False), [req("c", base)])["c"]
    assert fresh.token_ids == cold.token_ids
    assert engine.pool.hits >= 6


def test_prefix_cache_shared_prefix_new_suffix(tiny: LoadedModel) -> None:
    engine = make_engine(tiny)
    base = prompts(1, 64, 64, tiny.args.vocab_size, seed=8)[0]
    run_all(engine, [req("a", base + [500, 501, 502])])
    other = base + [900, 901]
    hit = run_all(engine, [req("b", other)])["b"]
    assert hit.cached_tokens == 64
    cold = run_all(make_engine(tiny, prefix=False), [req("c", other)])["c"]
    assert hit.token_ids == cold.token_ids


def test_isolation_keys_never_share(tiny: LoadedModel) -> None:
    engine = make_engine(tiny)
    base = prompts(1, 80, 80, tiny.args.vocab_size, seed=9)[0]
    run_all(engine, [req("a", base, salt="tenant-a")])
    other = run_all(engine, [req("b", base, salt="tenant-b")])["b"]
    none = run_all(engine, [req("c", base)])["c"]
    same = run_all(engine, [req("d", base, salt="tenant-a")])["d"]
    assert other.cached_tokens == 0 and none.cached_tokens == 0
    assert same.cached_tokens == 64


def test_tenants_never_share_cache_and_isolation_keys_scope_within_a_tenant(tiny: LoadedModel) -> None:
    """Cached prefixes are keyed by account first: another account's request for the same tokens, or
    with the same isolation key, starts cold; the same account (and key) still hits; no account (an
    open server) shares as before."""
    engine = make_engine(tiny)
    base = prompts(1, 80, 80, tiny.args.vocab_size, seed=19)[0]

    def run(rid: str, tenant: str | None, salt: str | None = None) -> int:
        r = replace(req(rid, base, salt=salt), cache_tenant=tenant)
        return run_all(engine, [r])[rid].cached_tokens

    assert run("a1", "acme") == 0
    assert run("b1", "globex") == 0, "another account hit acme's cached prompt"
    assert run("a2", "acme") == 64
    assert run("a3", "acme", salt="k") == 0
    assert run("b2", "globex", salt="k") == 0, "an isolation key reached across accounts"
    assert run("a4", "acme", salt="k") == 64
    assert run("o1", None) == 0, "an open request hit an account's cache"
    assert run("o2", None) == 64
    # A tenant-less salt spelled like an account's scope cannot reach that account's blocks.
    assert run("o3", None, salt=replace(req("x", base), cache_tenant="acme").cache_scope) == 0


def test_abort_frees_every_block(tiny: LoadedModel) -> None:
    engine = make_engine(tiny)
    total = engine.pool.num_blocks
    ps = prompts(4, 30, 60, tiny.args.vocab_size, seed=11)
    for i, p in enumerate(ps):
        engine.add(req(str(i), p, greedy(max_tokens=100)))
    for _ in range(4):
        engine.step()
    assert engine.pool.num_free < total
    for i in range(len(ps)):
        engine.abort(str(i))
    assert engine.pool.num_free == total
    assert all(b.ref_count == 0 for b in engine.pool.blocks)
    assert engine.kv.num_holders == 0
    assert not engine.has_work


def test_kv_exhaustion_preempts_and_completes(tiny: LoadedModel) -> None:
    ps = prompts(6, 20, 40, tiny.args.vocab_size, seed=13)
    expect = {}
    for i, p in enumerate(ps):
        expect[str(i)] = run_all(make_engine(tiny), [req(str(i), p, greedy(max_tokens=40))])[str(i)].token_ids
    # A pool of ~20 blocks of 8 tokens: far too small for 6 sequences of up to 80 tokens at once.
    a = tiny.args
    per_block = 2 * a.n_layers * 8 * a.n_kv_heads * a.head_dim * 4
    engine = make_engine(tiny, block_size=8, kv_cache_mb=1)
    engine.pool.__init__(20, 8, True)  # shrink the pool below what 1 MiB gives
    assert per_block * 20 < 1024 * 1024
    got = run_all(engine, [req(str(i), p, greedy(max_tokens=40)) for i, p in enumerate(ps)])
    assert engine.scheduler.num_preemptions > 0
    for k, v in expect.items():
        assert got[k].token_ids == v, k
    assert engine.pool.num_free == 20
    assert engine.kv.num_holders == 0


def test_seeded_sampling_is_batch_invariant(tiny: LoadedModel) -> None:
    ps = prompts(4, 10, 20, tiny.args.vocab_size, seed=17)
    params = SamplingParams(max_tokens=12, temperature=1.0, top_p=0.9, seed=1234, ignore_eos=True)
    alone = run_all(make_engine(tiny), [req("s", ps[0], params)])["s"].token_ids
    mixed = run_all(make_engine(tiny), [req("s", ps[0], params)] +
                    [req(f"o{i}", p, SamplingParams(max_tokens=12, temperature=1.0, ignore_eos=True))
                     for i, p in enumerate(ps[1:])])
    assert mixed["s"].token_ids == alone


def test_max_tokens_zero_with_prompt_logprobs(tiny: LoadedModel) -> None:
    p = prompts(1, 12, 12, tiny.args.vocab_size, seed=19)[0]
    params = SamplingParams(max_tokens=0, temperature=0.0, logprobs=1, prompt_logprobs=1)
    res = run_all(make_engine(tiny), [req("e", p, params)])["e"]
    assert res.finish_reason == "length" and res.token_ids == []
    plp = res.outputs[0].prompt_logprobs
    assert plp is not None and len(plp) == len(p)
    assert plp[0].logprob is None
    ref = torch.log_softmax(dense_logits(tiny, p), dim=-1)
    for i in range(1, len(p)):
        assert abs(plp[i].logprob - ref[i - 1, p[i]].item()) < 1e-4
