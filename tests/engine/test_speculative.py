"""Speculative decoding: drafts never change greedy output, sampling keeps its distribution, KV is clean."""

from __future__ import annotations

import dataclasses
from collections import Counter

import torch

from ember.config import SpeculativeConfig
from ember.engine.request import EngineRequest, SamplingParams
from ember.engine.speculative import NEAR_WINDOW, PredictionIndex, Speculation, propose, verify
from ember.model.loader import LoadedModel
from tests.engine.helpers import greedy, make_engine, run_all


def test_propose_follows_the_latest_match() -> None:
    src = [1, 2, 3, 4, 5, 2, 3, 9, 9]
    assert propose([], src, 3) == [1, 2, 3]
    assert propose([7, 2, 3], src, 2) == [9, 9]  # the latest "2 3" is followed by 9 9
    assert propose([4], src, 2) == [5, 2]
    assert propose([8], src, 2) == []
    assert propose([9, 9], src, 4) == [9]  # "9 9" only ends src; the shorter "9" at index 7 is followed by 9
    assert propose([1], src, 0) == []


def test_prediction_drafts_from_the_match_nearest_the_expected_place() -> None:
    the, a, b, c, d = 1, 2, 3, 4, 5
    src = [the, a, b, c, d, 6, 7, 8, the, c, a, 9]
    idx = PredictionIndex(src)
    assert idx.propose([], 3, near=0) == ([the, a, b], 0)
    # "the" occurs at 0 and 8: at the start of the output the first one is meant, not the latest.
    assert idx.propose([the], 3, near=1) == ([a, b, c], 1)
    assert idx.propose([the], 2, near=9) == ([c, a], 9)
    # A longer match wins over a nearer shorter one, wherever it is.
    assert idx.propose([c, a], 1, near=2) == ([9], 11)
    # A lone token far from the expected place is no evidence: no draft (the engine reads on instead).
    assert idx.propose([7], 2, near=7 + NEAR_WINDOW[1] + 1) == ([], None)
    far = 2 * NEAR_WINDOW[2] + 10
    long_src = [the, a, b] + [50 + i for i in range(far)] + [c, the, a, d, 60]
    idx = PredictionIndex(long_src)
    # "the a" occurs at the start and near the end; expected near the end: the nearer one.
    assert idx.propose([the, a], 1, near=len(long_src) - 2) == ([d], len(long_src) - 2)
    # Expected far from both: a 2-token match out of the window is skipped, and so is "a" alone.
    assert idx.propose([the, a], 1, near=3 + far // 2) == ([], None)
    assert idx.propose([42], 2, near=3) == ([], None)
    assert idx.propose([a], 0, near=2) == ([], None)


def test_verify_greedy() -> None:
    logits = torch.full((4, 10), -5.0)
    for row, best in enumerate([3, 4, 6, 1]):
        logits[row, best] = 5.0
    assert verify(logits, [3, 4, 5], True, None) == ([3, 4, 6], 2)
    assert verify(logits, [3, 4, 6], True, None) == ([3, 4, 6, 1], 3)
    assert verify(logits, [0, 4, 6], True, None) == ([3], 0)


def test_verify_sampling_keeps_the_distribution() -> None:
    """Accept d with p(d), else draw from p without d: the first token is distributed as p exactly."""
    p = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.25, 0.25, 0.25, 0.25]])
    g = torch.Generator().manual_seed(0)
    n = 20000
    counts = Counter(verify(p, [2], False, g)[0][0] for _ in range(n))
    for t in range(4):
        assert abs(counts[t] / n - p[0, t].item()) < 0.015, counts


def test_speculation_state_only_for_requests_that_may_speculate() -> None:
    plain = SamplingParams(max_tokens=8, temperature=0.0)
    predicted = dataclasses.replace(plain, speculation=(1, 2, 3))
    assert Speculation.for_request(plain, ngram_lookup=False, constrained=False, num_draft_tokens=3) is None
    lookup = Speculation.for_request(plain, ngram_lookup=True, constrained=False, num_draft_tokens=3)
    assert lookup is not None and lookup.source is None
    spec = Speculation.for_request(predicted, ngram_lookup=False, constrained=False, num_draft_tokens=3)
    assert spec is not None and spec.source is not None and spec.source.source == [1, 2, 3]
    # Penalties or a grammar rule drafts out, whatever the request predicted.
    assert Speculation.for_request(predicted, ngram_lookup=True, constrained=True, num_draft_tokens=3) is None
    penalized = dataclasses.replace(predicted, presence_penalty=0.5)
    assert Speculation.for_request(penalized, ngram_lookup=True, constrained=False, num_draft_tokens=3) is None


def test_speculation_drafts_k_then_2k_plus_1_after_a_whole_accept_and_k_after_a_miss() -> None:
    prompt = [90, 91]
    pred = list(range(1, 30))
    spec = Speculation(2, PredictionIndex(pred))
    spec.propose(prompt, len(prompt), room=100)
    assert spec.draft == [1, 2]  # no output yet: the prediction's start
    logits = torch.full((3, 40), -5.0)
    for row, best in enumerate([1, 2, 3]):
        logits[row, best] = 5.0
    assert spec.accept(logits, True, None) == [1, 2, 3]  # the draft held whole, plus the model's token
    assert spec.draft == [] and (spec.num_drafted, spec.num_accepted, spec.streak) == (2, 2, True)
    spec.advance(3)
    out = prompt + [1, 2, 3]
    spec.propose(out, len(prompt), room=100)
    assert spec.draft == [4, 5, 6, 7, 8]  # 2k + 1 after a streak
    spec.propose(out, len(prompt), room=3)
    assert spec.draft == [4, 5, 6]  # the room caps it
    logits = torch.full((4, 40), -5.0)
    for row, best in enumerate([4, 9, 9, 9]):
        logits[row, best] = 5.0
    assert spec.accept(logits, True, None) == [4, 9]  # a miss at the second draft token
    assert (spec.num_drafted, spec.num_accepted, spec.streak) == (5, 3, False)
    spec.propose(out + [4, 9], len(prompt), room=100)
    assert len(spec.draft) == 2  # k again


def test_speculation_draft_is_shortened_to_the_budget_and_discarded_on_preemption() -> None:
    spec = Speculation(3, draft=[5, 6, 7])
    spec.shorten(5)
    assert spec.draft == [5, 6, 7]
    spec.shorten(2)
    assert spec.draft == [5, 6]
    spec.shorten(-1)
    assert spec.draft == []
    spec.draft = [5, 6, 7]
    spec.discard()
    assert spec.draft == [] and spec.num_drafted == 0  # nothing verified, nothing counted


def test_prompt_lookup_drafts_from_the_sequence_itself() -> None:
    spec = Speculation(2)
    spec.propose([1, 2, 3, 9, 1, 2], 3, room=10)
    assert spec.draft == [3, 9]


def _engine(lm: LoadedModel, ngram: bool = False):
    return make_engine(lm, spec=SpeculativeConfig(ngram_lookup=ngram, num_draft_tokens=6))


def test_greedy_output_is_identical_with_any_prediction(tiny: LoadedModel) -> None:
    prompt = list(range(100, 140))
    plain = run_all(make_engine(tiny), [EngineRequest("p", tuple(prompt), greedy(40))])["p"]
    right = list(plain.token_ids)
    mostly = list(right)
    for i in range(3, len(mostly), 10):  # 90% of the prediction matches
        mostly[i] = (mostly[i] + 7) % tiny.tokenizer.vocab_size
    wrong = [5, 6, 7, 8] * 10
    for name, spec in (("right", right), ("mostly", mostly), ("wrong", wrong)):
        e = _engine(tiny)
        r = run_all(e, [EngineRequest(name, tuple(prompt), greedy(40, speculation=tuple(spec)))])[name]
        assert r.token_ids == plain.token_ids, name
        assert e.pool.num_free == e.pool.num_blocks  # rejected drafts leave no blocks behind
        last = r.outputs[-1]
        if name == "right":
            assert last.num_accepted_draft_tokens >= 30 and len(r.outputs) <= 12  # many tokens per step
        assert last.num_accepted_draft_tokens <= last.num_draft_tokens


def test_speculating_and_plain_sequences_share_a_batch(tiny: LoadedModel) -> None:
    prompts = [list(range(200 + i, 230 + i)) for i in range(4)]
    alone = [run_all(make_engine(tiny), [EngineRequest("a", tuple(p), greedy(24))])["a"].token_ids
             for p in prompts]
    e = _engine(tiny, ngram=True)
    reqs = [EngineRequest(f"r{i}", tuple(p), greedy(24, speculation=tuple(alone[i]) if i % 2 else None))
            for i, p in enumerate(prompts)]
    res = run_all(e, reqs)
    assert [res[f"r{i}"].token_ids for i in range(4)] == alone
    assert e.pool.num_free == e.pool.num_blocks


def test_seeded_sampling_with_prediction_is_reproducible(tiny: LoadedModel) -> None:
    prompt = tuple(range(300, 330))
    params = SamplingParams(max_tokens=30, temperature=0.9, seed=11, ignore_eos=True)
    plain = run_all(make_engine(tiny), [EngineRequest("p", prompt, params)])["p"].token_ids
    spec = dataclasses.replace(params, speculation=tuple(plain))
    a = run_all(_engine(tiny), [EngineRequest("a", prompt, spec)])["a"]
    b = run_all(_engine(tiny), [EngineRequest("b", prompt, spec)])["b"]
    assert a.token_ids == b.token_ids and len(a.token_ids) == 30
    assert a.outputs[-1].num_draft_tokens > 0


def test_stop_string_inside_accepted_draft(tiny: LoadedModel) -> None:
    prompt = tuple(range(400, 430))
    plain = run_all(make_engine(tiny), [EngineRequest("p", prompt, greedy(30))])["p"]
    # Three characters from the middle of the text, none of them blank, so the stop is unambiguous.
    mid = len(plain.text) // 2
    at = next(i for i in range(mid, len(plain.text) - 3) if plain.text[i : i + 3].strip() == plain.text[i : i + 3])
    stop = plain.text[at : at + 3]
    want = run_all(make_engine(tiny), [EngineRequest("s", prompt, greedy(30, stop=(stop,)))])["s"]
    e = _engine(tiny)
    got = run_all(e, [EngineRequest("g", prompt, greedy(30, stop=(stop,), speculation=tuple(plain.token_ids)))])["g"]
    assert got.text == want.text and got.finish_reason == want.finish_reason == "stop"
    assert e.pool.num_free == e.pool.num_blocks


def test_draft_grows_after_a_fully_accepted_one(tiny: LoadedModel) -> None:
    """k drafts (one int4 row block) while the prediction is unproven, 2k+1 (two blocks) after a draft
    was accepted whole, back to k after a miss."""
    prompt = tuple(range(100, 140))
    n = 60
    plain = run_all(make_engine(tiny), [EngineRequest("p", prompt, greedy(n))])["p"]
    k = SpeculativeConfig().num_draft_tokens
    wrong = list(plain.token_ids)
    for i in range(20, n, 15):
        wrong[i] = (wrong[i] + 1) % tiny.tokenizer.vocab_size
    for name, pred in (("right", plain.token_ids), ("wrong", wrong)):
        r = run_all(make_engine(tiny), [EngineRequest(name, prompt, greedy(n, speculation=tuple(pred)))])[name]
        assert r.token_ids == plain.token_ids
        drafted = [b.num_draft_tokens - a.num_draft_tokens for a, b in zip(r.outputs, r.outputs[1:], strict=False)]
        kept = [len(o.new_token_ids) for o in r.outputs[1:]]
        produced = 1
        for i in range(1, len(drafted)):
            produced += kept[i - 1]
            if n - produced <= 2 * k + 2:
                break  # near max_tokens the room, not the rule, sets the length
            whole = drafted[i - 1] > 0 and kept[i - 1] == drafted[i - 1] + 1
            assert drafted[i] == (2 * k + 1 if whole else k), (name, i, drafted, kept)
        assert 2 * k + 1 in drafted


def test_the_batch_names_verify_rows_and_the_runner_returns_row_offsets(tiny: LoadedModel) -> None:
    """The scheduled batch says which rows verify a draft and how long it is; the runner lays decode and
    verify rows first (batch order), then prompt chunks, each sequence's rows contiguous, and says where."""
    prompt = tuple(range(100, 140))
    plain = run_all(make_engine(tiny), [EngineRequest("p", prompt, greedy(20))])["p"].token_ids
    e = make_engine(tiny)
    e.add(EngineRequest("v", prompt, greedy(20, speculation=tuple(plain))))
    e.add(EngineRequest("d", tuple(range(200, 230)), greedy(20)))
    e.step()  # both prompts; v then drafts from its prediction
    e.add(EngineRequest("f", tuple(range(300, 350)), greedy(4)))
    batch = e.scheduler.schedule()
    k = e.spec.num_draft_tokens
    rows = {s.request_id: (n, d) for s, n, d in zip(batch.seqs, batch.num_tokens, batch.num_draft, strict=True)}
    assert rows == {"d": (1, 0), "v": (1 + k, k), "f": (50, 0)}
    result = e.runner.run(batch)
    at = {s.request_id: i for i, s in enumerate(batch.seqs)}
    assert [result.row_offsets[at[r]] for r in ("d", "v", "f")] == [0, 1, 2 + k]
    assert list(result.verify_logits) == [at["v"]] and result.verify_logits[at["v"]].shape[0] == k + 1
    assert sorted(result.sample_index) == sorted([at["d"], at["f"]])
