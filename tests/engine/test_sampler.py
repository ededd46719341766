"""Property tests for the batched sampling filters and the sampler's per-request determinism."""

from __future__ import annotations

import math

import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ember.engine.request import SamplingParams
from ember.engine.sampler import Sampler, _filter, _filter_sorted

V = 50

logit_rows = st.lists(st.floats(-20, 20, allow_nan=False, width=32), min_size=V, max_size=V)
params = st.builds(
    SamplingParams,
    temperature=st.floats(0.05, 2.0),
    top_k=st.integers(0, 100),
    top_p=st.floats(0.0, 1.0),
    min_p=st.floats(0.0, 1.0),
    typical_p=st.floats(0.0, 1.0),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(logit_rows, params), min_size=1, max_size=4))
def test_filters_never_empty_and_keep_argmax(rows) -> None:
    logits = torch.tensor([r for r, _ in rows])
    ps = [p for _, p in rows]
    out = _filter(logits.clone(), ps)
    for i, p in enumerate(ps):
        kept = torch.isfinite(out[i])
        assert kept.any()
        assert kept[logits[i].argmax()]
        if p.top_k > 0:
            assert kept.sum() <= max(p.top_k, 1) or (logits[i] == logits[i].max()).sum() > 1


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(logit_rows, params), min_size=1, max_size=4), st.integers(0, 2**31))
def test_sample_is_in_kept_set(rows, seed) -> None:
    logits = torch.tensor([r for r, _ in rows])
    ps = [p for _, p in rows]
    res = Sampler()(logits.clone(), ps, [torch.Generator().manual_seed(seed) for _ in ps],
                    [[] for _ in ps], [0 for _ in ps])
    kept = torch.isfinite(_filter(logits / torch.tensor([[p.temperature] for p in ps]), ps))
    for i, t in enumerate(res.token_ids):
        assert kept[i, t]


def test_greedy_is_argmax() -> None:
    logits = torch.randn(3, V)
    res = Sampler()(logits.clone(), [SamplingParams(temperature=0.0)] * 3, [None] * 3, [[]] * 3, [0] * 3)
    assert res.token_ids == logits.argmax(-1).tolist()


def test_seeded_rows_ignore_neighbours() -> None:
    torch.manual_seed(0)
    logits = torch.randn(4, V)
    p = SamplingParams(temperature=1.0)
    a = Sampler()(logits[:1].clone(), [p], [torch.Generator().manual_seed(7)], [[]], [0]).token_ids[0]
    b = Sampler()(logits.clone(), [p] * 4, [torch.Generator().manual_seed(7), None, None, None],
                  [[]] * 4, [0] * 4).token_ids[0]
    assert a == b


def test_penalties_and_bias() -> None:
    logits = torch.zeros(1, V)
    p = SamplingParams(temperature=0.0, logit_bias=((5, 10.0),))
    assert Sampler()(logits.clone(), [p], [None], [[]], [0]).token_ids == [5]
    logits[0, 3] = 1.0
    p = SamplingParams(temperature=0.0, presence_penalty=2.0)
    assert Sampler()(logits.clone(), [p], [None], [[3]], [0]).token_ids != [3]
    p = SamplingParams(temperature=0.0, repetition_penalty=2.0)
    logits[0, 4] = 0.8
    # 3 is in the history (prompt counts), so 1.0 -> 0.5 < 0.8
    assert Sampler()(logits.clone(), [p], [None], [[3]], [1]).token_ids == [4]


def test_logprobs_records() -> None:
    logits = torch.randn(2, V)
    ps = [SamplingParams(temperature=0.0, logprobs=3), SamplingParams(temperature=0.0)]
    res = Sampler()(logits.clone(), ps, [None, None], [[], []], [0, 0])
    rec = res.logprobs[0]
    assert rec is not None and res.logprobs[1] is None
    lp = torch.log_softmax(logits[0], -1)
    assert abs(rec.logprob - lp.max().item()) < 1e-5
    assert [t for t, _ in rec.top] == lp.topk(3).indices.tolist()


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**31), st.lists(st.tuples(st.integers(0, 100), st.floats(0.0, 1.0), st.floats(0.1, 8.0)),
                                       min_size=1, max_size=4))
@example(0, [(0, 0.0, 1.0), (0, 1.0, 3.0)])  # an unrestricted row beside a restricted one
def test_candidate_filter_equals_full_sort(seed, cfgs) -> None:
    """On a real-sized vocabulary the topk shortcut (and its fallback for wide nuclei) is exact."""
    g = torch.Generator().manual_seed(seed)
    # Low `spread` makes flat rows whose nucleus is wider than the candidate set: the fallback path.
    logits = torch.cat([torch.randn(1, 5000, generator=g) * spread for _, _, spread in cfgs])
    ps = [SamplingParams(top_k=k, top_p=p) for k, p, _ in cfgs]
    fast = torch.isfinite(_filter(logits.clone(), ps))
    ref = torch.isfinite(_filter_sorted(logits.clone(), ps))
    assert torch.equal(fast, ref)


def test_mirostat_truncates_by_surprise_and_adapts() -> None:
    # Probabilities 1/2, 1/4, 1/8, ...: token i has surprise i + 1 bits.
    V_ = 12
    logits = torch.log(torch.tensor([2.0 ** -(i + 1) for i in range(V_)])).unsqueeze(0)
    p = SamplingParams(temperature=1.0, mirostat_target=2.0, mirostat_lr=0.5)
    g = torch.Generator().manual_seed(0)
    mu = 2.5  # only tokens 0 and 1 (1 and 2 bits) are under the bound
    seen = set()
    for _ in range(200):
        res = Sampler()(logits.clone(), [p], [g], [[]], [0], [mu])
        seen.add(res.token_ids[0])
        assert res.mirostat_mu is not None and res.mirostat_mu[0] != mu
    assert seen == {0, 1}
    # Renormalized over {0, 1}: p = 2/3 or 1/3, and mu moves by -lr * (observed surprise - target).
    res = Sampler()(logits.clone(), [p], [g], [[]], [0], [mu])
    observed = -math.log2(2 / 3 if res.token_ids[0] == 0 else 1 / 3)
    assert res.mirostat_mu is not None
    assert abs(res.mirostat_mu[0] - (mu - 0.5 * (observed - 2.0))) < 1e-5
    off = Sampler()(logits.clone(), [SamplingParams(temperature=1.0)], [g], [[]], [0], [None])
    assert off.mirostat_mu == [None]
