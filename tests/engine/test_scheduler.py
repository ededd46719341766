"""The scheduler on its own, with small pools: token budget, max_num_seqs, chunked prefill, preemption order.

No model and no tokenizer: sequences are token ids only, and `step()` plays the engine's part (record the computed tokens, append one sampled token
to every sequence that caught up), so each test pins exactly what one schedule() hands out.
"""

from __future__ import annotations

import random

from ember.config import SchedulerConfig
from ember.engine.kv_cache import BlockPool
from ember.engine.kv_manager import KVManager
from ember.engine.request import EngineRequest, SamplingParams
from ember.engine.scheduler import ScheduledBatch, Scheduler, is_long_prompt
from ember.engine.sequence import Sequence, SequenceStatus
from ember.engine.speculative import Speculation

BS = 4


def make(num_blocks: int, max_num_seqs: int = 8, budget: int = 64, prefix: bool = True,
         long_prefill: int = 256) -> Scheduler:
    return Scheduler(SchedulerConfig(max_num_seqs=max_num_seqs, max_num_batched_tokens=budget,
                                     long_prefill_tokens=long_prefill),
                     KVManager(BlockPool(num_blocks, BS, prefix)))


def seq(name: str, prompt_len: int, first: int = 1, max_tokens: int = 100) -> Sequence:
    ids = tuple(first + i for i in range(prompt_len))
    r = EngineRequest(name, ids, SamplingParams(max_tokens=max_tokens, temperature=0.0))
    return Sequence(request=r)


def step(s: Scheduler) -> ScheduledBatch:
    b = s.schedule()
    for q, n in zip(b.seqs, b.num_tokens, strict=True):
        s.kv.commit(q, n)
        if q.num_computed_tokens == q.num_tokens:
            q.token_ids.append(7)  # the sampled token: one behind again, i.e. decoding
    return b


def plan(b: ScheduledBatch) -> dict[str, int]:
    return {q.request_id: n for q, n in zip(b.seqs, b.num_tokens, strict=True)}


def check_blocks(s: Scheduler) -> None:
    """Every running sequence holds exactly the blocks its computed tokens need; waiting ones hold none."""
    for q in s.running:
        assert len(s.kv.block_ids(q)) >= -(-q.num_computed_tokens // BS)
    for q in s.waiting:
        assert s.kv.block_ids(q) == () and q.num_computed_tokens == 0
    held = sum(len(s.kv.block_ids(q)) for q in s.running)
    assert s.kv.pool.num_used <= held  # shared prefix blocks count once in the pool


def test_token_budget_is_filled_decodes_first_then_prompts_in_order() -> None:
    s = make(num_blocks=200, budget=32)
    a, b, c = seq("a", 20), seq("b", 20, first=100), seq("c", 20, first=200)
    for q in (a, b, c):
        s.add(q)
    assert plan(step(s)) == {"a": 20, "b": 12}  # b is chunked to what the budget leaves; c waits
    batch = step(s)
    assert plan(batch) == {"a": 1, "b": 8, "c": 20}  # 29 of 32: c's whole prompt fit the rest
    assert batch.seqs[0] is a and batch.num_tokens[0] == 1  # single-token rows lead the batch
    assert plan(step(s)) == {"a": 1, "b": 1, "c": 1}
    assert not s.waiting and [q.request_id for q in s.running] == ["a", "b", "c"]
    check_blocks(s)


def test_budget_never_exceeded_and_max_num_seqs_caps_the_batch() -> None:
    s = make(num_blocks=400, max_num_seqs=3, budget=16)
    qs = [seq(f"s{i}", 10, first=10 * i + 1, max_tokens=5) for i in range(6)]
    for q in qs:
        s.add(q)
    order: list[str] = []
    for _ in range(200):
        if not s.has_work:
            break
        b = step(s)
        assert 0 < b.total_tokens <= 16
        assert len(s.running) <= 3 and len(b.seqs) <= 3
        for q in list(s.running):
            if q.num_output_tokens >= q.params.max_tokens:
                order.append(q.request_id)
                s.finish(q)
        check_blocks(s)
    assert not s.has_work
    assert order == [f"s{i}" for i in range(6)]  # first come, first served
    assert s.kv.pool.num_free == s.kv.pool.num_blocks


def test_chunked_prefill_grows_blocks_with_each_chunk() -> None:
    s = make(num_blocks=100, budget=16)
    q = seq("long", 50)
    s.add(q)
    chunks = []
    while q.num_computed_tokens < 50:
        b = step(s)
        chunks.append(b.num_tokens[0])
        # Only the blocks the computed tokens need are taken, chunk by chunk.
        assert len(s.kv.block_ids(q)) == -(-q.num_computed_tokens // BS)
    assert chunks == [16, 16, 16, 2]
    assert q.num_tokens == 51  # the last chunk's logits gave the first token
    assert plan(step(s)) == {"long": 1}
    assert len(s.kv.block_ids(q)) == -(-51 // BS)


def test_a_decode_never_waits_behind_a_long_prompt() -> None:
    s = make(num_blocks=200, budget=8)
    short = seq("short", 3)
    s.add(short)
    step(s)
    s.add(seq("long", 60, first=50))
    for _ in range(5):
        assert plan(step(s)) == {"short": 1, "long": 7}


def test_preemption_takes_the_newest_first_and_requeues_it_at_the_head() -> None:
    # 9 blocks of 4: three 8-token prompts take 2 blocks each, a third each once they decode past 8.
    s = make(num_blocks=9, budget=64, prefix=False)
    a, b, c = (seq(n, 8, first=f, max_tokens=12) for n, f in (("a", 1), ("b", 20), ("c", 40)))
    late = seq("late", 4, first=60, max_tokens=12)
    for q in (a, b, c):
        s.add(q)
    assert plan(step(s)) == {"a": 8, "b": 8, "c": 8}
    s.add(late)
    assert plan(step(s)) == {"a": 1, "b": 1, "c": 1}  # the pool's last 3 blocks; none left for `late`
    assert s.kv.pool.num_free == 0 and list(s.waiting) == [late]
    for _ in range(3):
        assert plan(step(s)) == {"a": 1, "b": 1, "c": 1}  # up to 12 tokens: still 3 blocks each
    b6 = step(s)  # a needs a 4th block: c, the newest, is preempted for it, then b takes c's second
    assert [q.request_id for q in b6.preempted] == ["c"]
    assert c.status is SequenceStatus.WAITING and s.kv.block_ids(c) == () and c.num_computed_tokens == 0
    assert list(s.waiting) == [c, late]  # back at the head, ahead of a request that came later
    assert plan(b6) == {"a": 1, "b": 1}  # and no waiting sequence starts in a step that preempted
    assert s.num_preemptions == 1 and c.num_preemptions == 1
    check_blocks(s)
    # From here on, whatever is preempted is always younger than whatever keeps running.
    for _ in range(300):
        if not s.has_work:
            break
        age = {q: i for i, q in enumerate(s.running)}
        bb = step(s)
        survivors = [age[q] for q in s.running if q in age]
        for v in bb.preempted:
            assert all(age[v] > k for k in survivors), (v.request_id, [q.request_id for q in s.running])
        assert a not in bb.preempted
        for q in list(s.running):
            if q.num_output_tokens >= q.params.max_tokens:
                s.finish(q)
        check_blocks(s)
    assert not s.has_work
    assert all(q.num_output_tokens >= 12 for q in (a, b, c, late))
    assert s.kv.pool.num_free == s.kv.pool.num_blocks


def test_a_waiting_sequence_that_cannot_start_gives_back_its_prefix_blocks() -> None:
    s = make(num_blocks=6, budget=64)
    donor = seq("donor", 12)
    s.add(donor)
    step(s)  # 3 blocks, all full and keyed
    s.add(seq("hog", 4, first=90))
    step(s)  # donor grows to 4 blocks, hog takes 1
    twin = seq("twin", 20)  # shares donor's 12 prompt tokens: 3 cached blocks, then needs 2 more
    s.add(twin)
    b = step(s)  # hog's decode takes the last free block, so twin cannot start
    assert "twin" not in plan(b) and list(s.waiting) == [twin]
    assert s.kv.block_ids(twin) == () and twin.num_computed_tokens == 0  # it holds nothing while it waits
    assert [s.kv.pool.blocks[i].ref_count for i in s.kv.block_ids(donor)] == [1, 1, 1, 1]
    assert s.kv.pool.num_used == 6
    for q in list(s.running):  # donor's blocks go back to the free list still keyed
        s.finish(q)
    step(s)
    assert twin.status is SequenceStatus.RUNNING and twin.num_prefix_hit_tokens == 12
    for q in list(s.running):
        s.finish(q)
    assert s.kv.pool.num_free == s.kv.pool.num_blocks and not s.has_work


def test_a_long_prompt_alone_takes_the_whole_budget() -> None:
    s = make(num_blocks=200, budget=32, long_prefill=8)
    s.add(seq("long", 100))
    assert plan(step(s)) == {"long": 32}
    assert plan(step(s)) == {"long": 32}


def test_a_long_prompt_shares_each_step_with_newer_decodes_and_prompts() -> None:
    s = make(num_blocks=200, budget=32, long_prefill=8)
    s.add(seq("long", 100))
    step(s)
    s.add(seq("a", 5, first=200))
    # Oldest first would give the long prompt all 32 tokens and leave `a` waiting for its whole prefill.
    assert plan(step(s)) == {"long": 8, "a": 5}
    assert plan(step(s)) == {"long": 8, "a": 1}  # a decode newer than the long prompt is not starved
    s.add(seq("b", 40, first=300))  # longer than the budget: a long prompt too
    s.add(seq("c", 12, first=400))  # more than the cap but within the budget: not long
    assert plan(step(s)) == {"long": 8, "a": 1, "c": 12}  # long prompts share the cap, oldest first
    check_blocks(s)


def test_a_short_prompt_queued_behind_a_long_one_starts_first() -> None:
    s = make(num_blocks=200, budget=32, long_prefill=8)
    first, second = seq("first", 100), seq("second", 100, first=400)
    short = seq("short", 6, first=800)
    s.add(first)
    step(s)
    s.add(second)
    s.add(short)
    b = step(s)
    assert plan(b) == {"first": 8, "short": 6}  # second is held back, short is not stuck behind it
    assert list(s.waiting) == [second] and s.kv.block_ids(second) == ()  # a held-back prompt holds no blocks
    check_blocks(s)
    while first.num_uncomputed > 8:  # first keeps the cap to the end of its prompt, then second starts
        assert plan(step(s)) == {"first": 8, "short": 1}
    assert plan(step(s)) == {"first": 4, "short": 1, "second": 4}
    assert plan(step(s)) == {"first": 1, "short": 1, "second": 8}


def test_a_draft_being_verified_is_not_a_long_prompt() -> None:
    s = make(num_blocks=200, budget=32, long_prefill=8)
    a = seq("a", 4)
    s.add(a)
    while a.num_tokens <= 32:  # decode past one step's budget of context
        step(s)
    a.spec = Speculation(3, draft=[7, 7, 7])  # what the engine does after a step: a 3-token draft to verify
    assert not is_long_prompt(a, 32)
    s.add(seq("long", 100, first=500))
    # The verify row takes its 1 + 3 tokens; the long prompt still has the whole cap beside it.
    assert plan(s.schedule()) == {"a": 4, "long": 8}
    assert s.long_prefill_backlog() == 100


def test_two_long_prompts_alone_go_one_after_the_other() -> None:
    s = make(num_blocks=200, budget=32, long_prefill=8)
    s.add(seq("x", 40))
    s.add(seq("y", 40, first=500))
    assert plan(step(s)) == {"x": 32}  # nothing but long prompts: the first takes the whole step
    assert plan(step(s)) == {"x": 8, "y": 24}  # still nothing else in the step: y takes the rest
    assert plan(step(s)) == {"x": 1, "y": 8}  # x decodes now: y is held to the cap


def test_random_long_and_short_traffic_keeps_the_budget_and_the_cap() -> None:
    rng = random.Random(7)
    budget, cap = 48, 12
    s = make(num_blocks=120, max_num_seqs=6, budget=budget, long_prefill=cap)
    pending = [seq(f"r{i}", rng.choice([3, 5, 9, 30, 70, 120]), first=1 + 100 * i,
                   max_tokens=rng.randint(1, 6)) for i in range(40)]
    done = shared = alone = 0
    for _ in range(2000):
        if not pending and not s.has_work:
            break
        while pending and rng.random() < 0.3:
            s.add(pending.pop(0))
        long = {q: is_long_prompt(q, budget) for q in [*s.running, *s.waiting]}  # no prompt shares a prefix
        b = step(s)
        assert b.total_tokens <= budget and len(s.running) <= 6
        long_rows = [n for q, n in zip(b.seqs, b.num_tokens, strict=True) if long[q]]
        if long_rows and len(long_rows) < len(b.seqs):  # shared with others: long prompts keep to the cap
            assert sum(long_rows) <= cap, plan(b)
            shared += 1
        elif long_rows:
            alone += 1
        for q in list(s.running):
            if q.num_output_tokens >= q.params.max_tokens:
                s.finish(q)
                done += 1
        check_blocks(s)
    assert done == 40 and not s.has_work
    assert s.kv.pool.num_free == s.kv.pool.num_blocks
    assert shared > 10 and alone > 0, (shared, alone)  # both cases were exercised
