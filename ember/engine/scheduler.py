"""Continuous batching over a per-step token budget.

There are no prefill or decode phases, only counters: each sequence has token_ids and
num_computed_tokens, and a step hands out tokens from the budget until computed catches up. A decode is
a sequence one token behind; a prompt is many tokens behind and is chunked to what the budget has left;
a prefix-cache hit simply starts with num_computed_tokens > 0.

Order: running sequences first (oldest first), then waiting ones first-come first-served. When the KV
pool cannot supply a block, the newest running sequence is preempted: its blocks are freed and it goes
back to the head of the waiting queue, to be recomputed later (its prefix may still be cached).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from ember.config import SchedulerConfig
from ember.engine.kv_cache import BlockPool
from ember.engine.request import FinishReason
from ember.engine.sequence import Sequence, SequenceStatus


@dataclass
class ScheduledBatch:
    seqs: list[Sequence] = field(default_factory=list)
    num_tokens: list[int] = field(default_factory=list)
    """New tokens to compute for each of seqs; single-token ones come first."""
    preempted: list[Sequence] = field(default_factory=list)

    @property
    def total_tokens(self) -> int:
        return sum(self.num_tokens)


class Scheduler:
    def __init__(self, cfg: SchedulerConfig, pool: BlockPool) -> None:
        self.cfg = cfg
        self.pool = pool
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def _blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.pool.block_size)

    def _preempt(self, seq: Sequence) -> None:
        seq.draft = []
        self.pool.free_blocks(seq.block_ids)
        seq.block_ids = []
        seq.num_computed_tokens = 0
        seq.num_cached_blocks = 0
        seq.last_block_key = None
        seq.status = SequenceStatus.WAITING
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(seq)

    def _grow(self, seq: Sequence, n: int) -> bool:
        need = self._blocks_for(seq.num_computed_tokens + n) - len(seq.block_ids)
        if need <= 0:
            return True
        got = self.pool.allocate(need)
        if got is None:
            return False
        seq.block_ids.extend(got)
        return True

    def schedule(self) -> ScheduledBatch:
        out = ScheduledBatch()
        budget = self.cfg.max_num_batched_tokens
        chosen: list[tuple[Sequence, int]] = []
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            if seq.draft and 1 + len(seq.draft) > budget:
                del seq.draft[max(0, budget - 1):]  # a draft is verified whole or not at all
            n = min(seq.num_uncomputed, budget)
            while not self._grow(seq, n):
                victim = self.running.pop()
                self._preempt(victim)
                out.preempted.append(victim)
                if victim is seq:
                    break
            else:
                chosen.append((seq, n))
                budget -= n
                i += 1
                continue
            break  # seq itself was preempted: nothing after it is left to schedule

        if not out.preempted:
            while self.waiting and budget > 0 and len(self.running) < self.cfg.max_num_seqs:
                seq = self.waiting[0]
                if not seq.block_ids and not seq.wants_prompt_logprobs:
                    self._match_prefix(seq)
                n = min(seq.num_uncomputed, budget)
                if not self._grow(seq, n):
                    # Hand back any prefix blocks it took: a waiting sequence holds no KV memory.
                    self.pool.free_blocks(seq.block_ids)
                    seq.block_ids = []
                    seq.num_computed_tokens = seq.num_cached_blocks = 0
                    seq.last_block_key = None
                    break
                self.waiting.popleft()
                seq.status = SequenceStatus.RUNNING
                self.running.append(seq)
                chosen.append((seq, n))
                budget -= n

        chosen.sort(key=lambda c: c[1] != 1)  # stable: single-token rows first, for the batched decode path
        out.seqs = [s for s, _ in chosen]
        out.num_tokens = [n for _, n in chosen]
        return out

    def _match_prefix(self, seq: Sequence) -> None:
        # Leave at least the last token uncomputed: its logits are needed to sample the next one.
        max_blocks = (seq.num_tokens - 1) // self.pool.block_size
        matched = self.pool.match_prefix(seq.token_ids, seq.request.cache_salt, max_blocks)
        if not matched:
            return
        seq.block_ids = matched
        seq.num_computed_tokens = len(matched) * self.pool.block_size
        seq.num_cached_blocks = len(matched)
        seq.last_block_key = self.pool.blocks[matched[-1]].key
        if seq.num_output_tokens == 0:
            seq.num_prefix_hit_tokens = seq.num_computed_tokens

    def on_computed(self, seq: Sequence, n: int) -> None:
        """Record that n more tokens' K/V are in the cache; key the blocks that became full."""
        seq.num_computed_tokens += n
        full = seq.num_computed_tokens // self.pool.block_size
        if full > seq.num_cached_blocks:
            seq.last_block_key = self.pool.cache_full_blocks(
                seq.block_ids, seq.token_ids, seq.num_cached_blocks, full, seq.last_block_key,
                seq.request.cache_salt)
            seq.num_cached_blocks = full

    def finish(self, seq: Sequence, reason: FinishReason) -> None:
        """End a sequence wherever it is and give its blocks back at once."""
        if seq.status is SequenceStatus.FINISHED:
            return
        if seq.status is SequenceStatus.RUNNING:
            self.running.remove(seq)
        else:
            try:
                self.waiting.remove(seq)
            except ValueError:
                pass
        self.pool.free_blocks(seq.block_ids)
        seq.block_ids = []
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason
