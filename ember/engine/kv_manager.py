"""KVManager: the one owner of which KV blocks each sequence holds.

The scheduler decides *who* gets memory; this class does the bookkeeping of *what* they hold. Every
change to a sequence's block table, to its count of computed tokens and to its prefix-cache chain goes
through the four operations here:

    match_prefix(seq)    a waiting sequence takes a reference on the cached blocks its tokens start with
    allocate(seq, n)     blocks for n more tokens beyond the computed ones (all or nothing)
    commit(seq, n)       n more tokens' K/V are written; blocks that became full get prefix-cache keys
    free(seq)            every block goes back (tail first) and the sequence has nothing computed

Invariants: a sequence has a table iff it holds at least one block; the blocks of its table cover its
computed tokens; a freed sequence has num_computed_tokens == 0. The prefix-cache chain of a sequence is
seeded with its request's cache scope (tenant and isolation key), so sequences of different scopes never
share a block.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ember.engine.kv_cache import BlockPool
from ember.engine.sequence import Sequence


@dataclass
class BlockTable:
    """The KV blocks of one sequence, in token order."""

    block_ids: list[int] = field(default_factory=list)
    num_cached_blocks: int = 0
    """Leading blocks already keyed in the prefix cache (full and hashed)."""
    last_key: bytes | None = None
    """Key of block num_cached_blocks - 1: the parent of the next block to be keyed."""


class KVManager:
    def __init__(self, pool: BlockPool) -> None:
        self.pool = pool
        self._tables: dict[Sequence, BlockTable] = {}

    @property
    def block_size(self) -> int:
        return self.pool.block_size

    @property
    def num_holders(self) -> int:
        """Sequences holding blocks now (a leak check: 0 once nothing runs)."""
        return len(self._tables)

    def block_ids(self, seq: Sequence) -> tuple[int, ...]:
        """A copy of seq's block table: readers (the runner, tests) never get the list this class writes."""
        table = self._tables.get(seq)
        return tuple(table.block_ids) if table is not None else ()

    def _blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.pool.block_size)

    def match_prefix(self, seq: Sequence) -> None:
        """Start a sequence that holds nothing on the longest cached prefix of its tokens in its scope."""
        assert seq not in self._tables, "only a sequence that holds no blocks looks up a prefix"
        bs = self.pool.block_size
        # Leave at least the last token uncomputed: its logits are needed to sample the next one.
        max_blocks = (seq.num_tokens - 1) // bs
        matched = self.pool.match_prefix(seq.token_ids, seq.request.cache_scope, max_blocks)
        if not matched:
            return
        self._tables[seq] = BlockTable(matched, len(matched), self.pool.blocks[matched[-1]].key)
        seq.num_computed_tokens = len(matched) * bs
        if seq.num_output_tokens == 0:
            seq.num_prefix_hit_tokens = seq.num_computed_tokens

    def allocate(self, seq: Sequence, num_new_tokens: int) -> bool:
        """Make seq's blocks cover num_computed_tokens + num_new_tokens; False (nothing changes) when the
        pool is short."""
        table = self._tables.get(seq)
        have = len(table.block_ids) if table is not None else 0
        need = self._blocks_for(seq.num_computed_tokens + num_new_tokens) - have
        if need <= 0:
            return True
        got = self.pool.allocate(need)
        if got is None:
            return False
        if table is None:
            self._tables[seq] = BlockTable(got)
        else:
            table.block_ids.extend(got)
        return True

    def commit(self, seq: Sequence, num_tokens: int) -> None:
        """Record that num_tokens more of seq's tokens have their K/V in its blocks; key the blocks that
        became full, so later requests of the same scope can reuse them."""
        seq.num_computed_tokens += num_tokens
        table = self._tables[seq]
        full = seq.num_computed_tokens // self.pool.block_size
        if full > table.num_cached_blocks:
            table.last_key = self.pool.cache_full_blocks(
                table.block_ids, seq.token_ids, table.num_cached_blocks, full, table.last_key,
                seq.request.cache_scope)
            table.num_cached_blocks = full

    def free(self, seq: Sequence) -> None:
        """Give back every block of seq (its cached ones stay keyed in the free list) and forget its
        progress: whatever runs it next recomputes from a prefix match."""
        table = self._tables.pop(seq, None)
        if table is not None:
            self.pool.free_blocks(table.block_ids)
        seq.num_computed_tokens = 0
