"""BlockPool under random interleavings: a hypothesis state machine against a plain model of who holds what.

The machine plays sequences the way the scheduler does (look up a cached prefix, allocate the rest, key
blocks as they fill, grow by decoding, free tail-first, give back a failed admission) with prompts drawn
from a tiny alphabet so that prefixes collide often. It checks after every step that ref counts match
the holders and never go negative, that no block is both free and in use, that the hash map and the
blocks agree, and, the property that matters to users, that a prefix hit only ever hands out blocks
whose K/V were written for exactly the same tokens under the same isolation key.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import hypothesis.strategies as st
from hypothesis import settings
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, rule

from ember.engine.kv_cache import BlockPool

BS = 4
NUM_BLOCKS = 12
tokens_st = st.lists(st.integers(0, 2), min_size=1, max_size=6 * BS)
salt_st = st.sampled_from([None, "a", "b"])


@dataclass
class Seq:
    tokens: list[int]
    salt: str | None
    block_ids: list[int] = field(default_factory=list)
    num_cached: int = 0
    last_key: bytes | None = None


class BlockPoolMachine(RuleBasedStateMachine):
    seqs = Bundle("seqs")

    def __init__(self) -> None:
        super().__init__()
        self.pool = BlockPool(NUM_BLOCKS, BS, enable_prefix_caching=True)
        self.live: list[Seq] = []
        self.content: dict[int, tuple[str | None, tuple[int, ...]]] = {}
        """What each block's K/V was written for: (salt, every token up to the end of that block)."""

    # -- helpers that play the scheduler's part ----------------------------------------------------
    def _write(self, seq: Seq, upto: int) -> None:
        """The model computed seq.tokens[:upto]: record what each touched block now holds, key full ones."""
        for i, bid in enumerate(seq.block_ids):
            end = min((i + 1) * BS, upto)
            if end > i * BS:
                self.content[bid] = (seq.salt, tuple(seq.tokens[:end]))
        full = upto // BS
        if full > seq.num_cached:
            seq.last_key = self.pool.cache_full_blocks(seq.block_ids, seq.tokens, seq.num_cached, full,
                                                       seq.last_key, seq.salt)
            seq.num_cached = full

    def _check_hit(self, tokens: list[int], salt: str | None, matched: list[int]) -> None:
        for i, bid in enumerate(matched):
            assert self.content.get(bid) == (salt, tuple(tokens[: (i + 1) * BS])), "served another prompt's KV"

    def _blocks_for(self, n: int) -> int:
        return -(-n // BS)

    # -- rules ---------------------------------------------------------------------------------------
    @rule(target=seqs, tokens=tokens_st, salt=salt_st)
    def admit(self, tokens: list[int], salt: str | None):
        seq = Seq(list(tokens), salt)
        matched = self.pool.match_prefix(tokens, salt, (len(tokens) - 1) // BS)
        self._check_hit(tokens, salt, matched)
        seq.block_ids = list(matched)
        seq.num_cached = len(matched)
        seq.last_key = self.pool.blocks[matched[-1]].key if matched else None
        free_before = self.pool.num_free
        got = self.pool.allocate(self._blocks_for(len(tokens)) - len(matched))
        if got is None:
            # A failed admission hands its prefix blocks back: a waiting sequence holds no KV memory.
            assert self._blocks_for(len(tokens)) - len(matched) > free_before
            assert self.pool.num_free == free_before
            self.pool.free_blocks(seq.block_ids)
            return None
        seq.block_ids += got
        self._write(seq, len(tokens))
        self.live.append(seq)
        return seq

    @rule(seq=seqs, new=st.lists(st.integers(0, 2), min_size=1, max_size=BS + 1))
    def decode(self, seq: Seq | None, new: list[int]) -> None:
        if seq is None or seq not in self.live:
            return
        need = self._blocks_for(len(seq.tokens) + len(new)) - len(seq.block_ids)
        if need > 0:
            got = self.pool.allocate(need)
            if got is None:
                return  # the scheduler would preempt someone; here the sequence simply waits
            seq.block_ids += got
        seq.tokens += new
        self._write(seq, len(seq.tokens))

    @rule(seq=consumes(seqs))
    def finish(self, seq: Seq | None) -> None:
        if seq is None or seq not in self.live:
            return
        self.pool.free_blocks(seq.block_ids)
        self.live.remove(seq)

    @rule(tokens=tokens_st, salt=salt_st)
    def lookup_and_give_back(self, tokens: list[int], salt: str | None) -> None:
        matched = self.pool.match_prefix(tokens, salt, len(tokens) // BS)
        self._check_hit(tokens, salt, matched)
        self.pool.free_blocks(matched)

    @rule(seq=seqs)
    def own_prefix_is_found(self, seq: Seq | None) -> None:
        """A live sequence's leading blocks that it keyed itself cannot have been evicted: a lookup finds them."""
        if seq is None or seq not in self.live:
            return
        own = 0
        for i in range(seq.num_cached):
            if self.pool.blocks[seq.block_ids[i]].key is None:
                break
            own += 1
        matched = self.pool.match_prefix(seq.tokens, seq.salt, len(seq.tokens) // BS)
        self._check_hit(seq.tokens, seq.salt, matched)
        assert matched[:own] == seq.block_ids[:own]
        self.pool.free_blocks(matched)

    # -- invariants ----------------------------------------------------------------------------------
    @invariant()
    def ref_counts_match_holders(self) -> None:
        held = [0] * NUM_BLOCKS
        for s in self.live:
            for bid in s.block_ids:
                held[bid] += 1
        for b in self.pool.blocks:
            assert b.ref_count >= 0
            assert b.ref_count == held[b.block_id], (b, held[b.block_id])
            # A block is in the free queue iff nothing holds it: never both free and in use.
            assert (b.block_id in self.pool.free) == (b.ref_count == 0)
        assert self.pool.num_used + self.pool.num_free == NUM_BLOCKS
        # Every block in use was handed out at some point: the resident-memory account never undercounts.
        assert self.pool.num_used <= self.pool.num_touched <= NUM_BLOCKS

    @invariant()
    def hash_map_and_blocks_agree(self) -> None:
        for key, bid in self.pool.cached.items():
            assert self.pool.blocks[bid].key == key
            assert len(self.pool.blocks[bid].token_ids) == BS
        keyed = {b.block_id for b in self.pool.blocks if b.key is not None}
        assert keyed == set(self.pool.cached.values())

    @invariant()
    def a_sequence_never_holds_a_block_twice(self) -> None:
        for s in self.live:
            assert len(set(s.block_ids)) == len(s.block_ids)


BlockPoolMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)
TestBlockPool = BlockPoolMachine.TestCase


def test_a_full_pool_answers_none_and_changes_nothing() -> None:
    pool = BlockPool(3, BS)
    held = pool.allocate(2)
    assert held is not None
    assert pool.allocate(2) is None
    assert pool.num_free == 1 and [b.ref_count for b in pool.blocks] == [1, 1, 0]
    pool.free_blocks(held)
    assert pool.num_free == 3
