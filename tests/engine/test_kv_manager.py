"""The KVManager driven directly: sequences of token ids, a small pool, no scheduler, model or tokenizer.

Each test plays one life of a sequence (allocate, commit, match a prefix, free) and checks both the
sequence's view (its block table, its computed tokens) and the pool's (ref counts, free blocks), so a
block that leaks or is shared across cache scopes shows up in the pool.
"""

from __future__ import annotations

import pytest

from ember.engine.kv_cache import BlockPool
from ember.engine.kv_manager import KVManager
from ember.engine.request import EngineRequest, SamplingParams
from ember.engine.sequence import Sequence

BS = 4


def kv(num_blocks: int = 8, prefix: bool = True) -> KVManager:
    return KVManager(BlockPool(num_blocks, BS, prefix))


def seq(name: str, ids: list[int], salt: str | None = None, tenant: str | None = None) -> Sequence:
    return Sequence(request=EngineRequest(name, tuple(ids), SamplingParams(max_tokens=8, temperature=0.0),
                                          cache_salt=salt, cache_tenant=tenant))


def run_prompt(m: KVManager, s: Sequence) -> None:
    """What the scheduler and engine do for a whole prompt in one step: look up, allocate, compute."""
    m.match_prefix(s)
    n = s.num_tokens - s.num_computed_tokens
    assert m.allocate(s, n)
    m.commit(s, n)


def assert_drained(m: KVManager) -> None:
    assert m.num_holders == 0
    assert m.pool.num_free == m.pool.num_blocks
    assert all(b.ref_count == 0 for b in m.pool.blocks)


def test_allocate_covers_the_computed_tokens_plus_the_new_ones_and_only_grows() -> None:
    m = kv()
    s = seq("a", list(range(1, 11)))  # 10 tokens: 3 blocks of 4
    assert m.block_ids(s) == () and m.num_holders == 0
    assert m.allocate(s, 6)
    assert len(m.block_ids(s)) == 2 and m.pool.num_used == 2
    m.commit(s, 6)
    assert m.allocate(s, 2)  # 8 tokens: still 2 blocks
    assert len(m.block_ids(s)) == 2
    assert m.allocate(s, 4)  # 10 tokens: a third
    assert len(m.block_ids(s)) == 3 and m.pool.num_used == 3


def test_allocate_is_all_or_nothing() -> None:
    m = kv(num_blocks=3)
    s = seq("a", list(range(1, 17)))
    assert not m.allocate(s, 16)  # 4 blocks from a pool of 3
    assert m.block_ids(s) == () and m.num_holders == 0 and m.pool.num_free == 3
    assert m.allocate(s, 12)
    other = seq("b", [50, 51])
    assert not m.allocate(other, 2)
    assert m.block_ids(other) == () and m.num_holders == 1


def test_a_copy_of_the_block_table_is_handed_out() -> None:
    m = kv()
    s = seq("a", [1, 2, 3, 4, 5])
    assert m.allocate(s, 5)
    table = m.block_ids(s)
    assert isinstance(table, tuple) and len(table) == 2
    m.commit(s, 5)
    assert m.allocate(s, 4)  # a reader's copy does not change under it
    assert len(table) == 2 and len(m.block_ids(s)) == 3


def test_commit_counts_computed_tokens_and_keys_only_full_blocks() -> None:
    m = kv()
    s = seq("a", list(range(1, 11)))
    assert m.allocate(s, 10)
    m.commit(s, 3)
    assert s.num_computed_tokens == 3 and not m.pool.cached  # no block is full yet
    m.commit(s, 6)
    assert s.num_computed_tokens == 9
    table = m.block_ids(s)
    keyed = [m.pool.blocks[b].key is not None for b in table]
    assert keyed == [True, True, False]
    assert m.pool.blocks[table[1]].token_ids == (5, 6, 7, 8)


def test_free_gives_every_block_back_and_forgets_progress() -> None:
    m = kv()
    s = seq("a", list(range(1, 11)))
    run_prompt(m, s)
    assert s.num_computed_tokens == 10 and m.pool.num_used == 3
    m.free(s)
    assert s.num_computed_tokens == 0 and m.block_ids(s) == ()
    assert_drained(m)
    m.free(s)  # freeing what holds nothing is a no-op, not a second release
    assert_drained(m)


def test_a_later_sequence_starts_on_the_cached_prefix_and_shares_its_blocks() -> None:
    m = kv()
    donor = seq("donor", list(range(1, 11)))
    run_prompt(m, donor)
    twin = seq("twin", list(range(1, 9)) + [99, 98, 97])
    m.match_prefix(twin)
    assert twin.num_computed_tokens == 8 and twin.num_prefix_hit_tokens == 8
    assert m.block_ids(twin) == m.block_ids(donor)[:2]
    assert [m.pool.blocks[b].ref_count for b in m.block_ids(donor)] == [2, 2, 1]
    m.free(donor)
    m.free(twin)
    assert_drained(m)
    # The keyed blocks stay in the free list: a third sequence still finds them.
    third = seq("third", list(range(1, 11)))
    m.match_prefix(third)
    assert third.num_computed_tokens == 8
    m.free(third)
    assert_drained(m)


def test_a_match_leaves_the_last_token_to_compute() -> None:
    m = kv()
    run_prompt(m, seq("donor", list(range(1, 13))))  # 3 full keyed blocks
    same = seq("same", list(range(1, 9)))  # exactly 2 blocks: only the first may be a hit
    m.match_prefix(same)
    assert same.num_computed_tokens == 4 and len(m.block_ids(same)) == 1


def test_a_match_on_a_sequence_with_output_is_not_a_prompt_hit() -> None:
    m = kv()
    run_prompt(m, seq("donor", list(range(1, 13))))
    resumed = seq("resumed", list(range(1, 9)))
    resumed.token_ids += [9, 10]  # preempted after two output tokens: recomputed from its whole text
    m.match_prefix(resumed)
    assert resumed.num_computed_tokens == 8 and resumed.num_prefix_hit_tokens == 0


def test_no_prefix_sharing_when_prefix_caching_is_off() -> None:
    m = kv(prefix=False)
    run_prompt(m, seq("donor", list(range(1, 13))))
    twin = seq("twin", list(range(1, 13)))
    m.match_prefix(twin)
    assert twin.num_computed_tokens == 0 and m.block_ids(twin) == ()


@pytest.mark.parametrize(("donor", "other", "shared"), [
    ((None, None), (None, None), True),
    (("k", None), ("k", None), True),
    (("k", None), ("j", None), False),  # isolation keys differ
    (("k", None), (None, None), False),
    ((None, "acme"), (None, "acme"), True),
    ((None, "acme"), (None, "globex"), False),  # tenants differ, even with no isolation key
    (("k", "acme"), ("k", "globex"), False),  # the same isolation key in two tenants
    (("k", "acme"), ("k", None), False),  # a tenant-less request never reads a tenant's blocks
])
def test_prefix_blocks_are_shared_only_within_one_cache_scope(donor: tuple, other: tuple,
                                                               shared: bool) -> None:
    m = kv()
    ids = list(range(1, 13))
    run_prompt(m, seq("donor", ids, salt=donor[0], tenant=donor[1]))
    s = seq("other", ids, salt=other[0], tenant=other[1])
    m.match_prefix(s)
    assert (s.num_computed_tokens == 8) is shared
    assert (s.num_computed_tokens == 0) is not shared


def test_preempted_and_aborted_sequences_leave_no_block_behind() -> None:
    """Preemption and abort both end in free(): whatever mix of shared prefixes, partial chunks and
    failed allocations came before, the pool ends with every block free and no holder left."""
    m = kv(num_blocks=6)
    a = seq("a", list(range(1, 11)))
    run_prompt(m, a)
    b = seq("b", list(range(1, 9)) + [40, 41, 42])
    m.match_prefix(b)  # shares a's two full blocks
    assert m.allocate(b, 2)  # a chunk of its rest
    m.commit(b, 2)
    c = seq("c", list(range(60, 80)))
    assert not m.allocate(c, 20)  # 5 blocks: more than is left
    assert m.allocate(c, 4)
    m.free(a)  # a preempted: b's shared blocks stay held by b
    assert [m.pool.blocks[x].ref_count for x in m.block_ids(b)] == [1, 1, 1]
    assert a.num_computed_tokens == 0
    m.match_prefix(a)  # it comes back on its own cached prefix
    assert a.num_computed_tokens == 8
    m.free(b)  # aborted mid-prefill
    m.free(c)  # aborted before computing anything
    m.free(a)
    assert_drained(m)
