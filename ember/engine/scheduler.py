"""Continuous batching over a per-step token budget.

There are no prefill or decode phases, only counters: each sequence has token_ids and
num_computed_tokens, and a step hands out tokens from the budget until computed catches up. A decode is
a sequence one token behind; a prompt is many tokens behind and is chunked to what the budget has left;
a prefix-cache hit simply starts with num_computed_tokens > 0.

Order: running sequences first (oldest first), then waiting ones first-come first-served. When the KV
pool cannot supply a block, the newest running sequence is preempted: its blocks are freed and it goes
back to the head of the waiting queue, to be recomputed later (its prefix may still be cached). The
scheduler decides who gets memory; the KVManager keeps what each sequence holds (the scheduler never
writes a block table or a count of computed tokens itself).

Long prompts are the exception to oldest first. A prompt is long when it is longer than one step's budget
(beyond any prefix-cache hit; `is_long_prompt`), and stays long until its prefill is done: while anything else is in
the step, long prompts together take at most `long_prefill_tokens` of it, oldest long prompt first, and a
waiting long prompt held back this way lets the shorter ones queued behind it start. Only a step that
would hold nothing but long prompts gives them the whole budget. A prompt near the context window is
tens of seconds of prefill on a CPU; without this, every decode newer than it and every prompt queued
behind it would wait that long.

Two priorities: interactive requests, and background ones (batch-job rows). Interactive sequences are
served first, running then waiting; background ones get only the budget, seats and memory left over, are
admitted only when no interactive sequence waits, and are the first preempted when an interactive one
needs room. While interactive work is present (running, waiting, or within `busy_linger_steps` steps of
it), background rows also take at most `background_tokens_when_busy` tokens and
`background_seqs_when_busy` rows per step, oldest first: an interactive step stays about as small as it
is on an idle server, and batch rows still advance every step. With no interactive work they take the
whole step.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from ember.config import SchedulerConfig
from ember.engine.kv_manager import KVManager
from ember.engine.sequence import Sequence, SequenceStatus


@dataclass
class ScheduledBatch:
    seqs: list[Sequence] = field(default_factory=list)
    num_tokens: list[int] = field(default_factory=list)
    """New tokens to compute for each of seqs; single-token ones come first."""
    num_draft: list[int] = field(default_factory=list)
    """Draft tokens each row verifies: k > 0 makes it a verify row of num_tokens == 1 + k (the last
    sampled token, then the draft), whose logits at all k + 1 positions go to the verifier and whose KV
    counts only as far as the draft is accepted; 0 is a plain row. Decided here and nowhere else."""
    preempted: list[Sequence] = field(default_factory=list)
    block_tables: list[tuple[int, ...]] = field(default_factory=list)
    """Each of seqs' KV block ids, covering its computed tokens plus num_tokens."""

    @property
    def total_tokens(self) -> int:
        return sum(self.num_tokens)


def is_long_prompt(seq: Sequence, threshold: int) -> bool:
    """Prefilling (more than its last token left: a draft being verified does not count), and its prompt
    beyond any prefix-cache hit is more than `threshold` tokens: classified by the whole prompt rather than
    what is left, so the last chunk of a long prompt is capped like the rest."""
    return seq.num_tokens - seq.num_computed_tokens > 1 and seq.num_tokens - seq.num_prefix_hit_tokens > threshold


@dataclass
class _Allowance:
    """What one priority may still take in the step being built."""

    tokens: int
    seats: int
    long_threshold: int | None = None
    """Prompts longer than this are long (is_long_prompt); None: no long-prompt cap."""
    long_tokens: int = 0
    """What long prompts together may still take this step (while the cap holds)."""
    held_back: bool = False
    """A long prompt got less than it could have because of the cap."""
    others: int = 0
    """Sequences in the step that are not long prompts."""

    @property
    def open(self) -> bool:
        return self.tokens > 0 and self.seats > 0

    def is_long(self, seq: Sequence) -> bool:
        return self.long_threshold is not None and is_long_prompt(seq, self.long_threshold)

    def grant(self, seq: Sequence) -> int:
        """How many of its uncomputed tokens `seq` may take; 0 for a long prompt held back."""
        n = min(seq.num_uncomputed, self.tokens)
        if self.is_long(seq):
            if n > self.long_tokens:
                self.held_back = True
            n = min(n, self.long_tokens)
        return n

    def take(self, seq: Sequence, n: int) -> None:
        if self.is_long(seq):
            self.long_tokens -= n
        else:
            self.others += 1
        self.tokens -= n
        self.seats -= 1

    def lift_long_cap(self) -> None:
        self.long_threshold = None


class Scheduler:
    def __init__(self, cfg: SchedulerConfig, kv: KVManager) -> None:
        self.cfg = cfg
        self.kv = kv
        self.waiting: deque[Sequence] = deque()
        """Interactive sequences waiting, first-come first-served."""
        self.waiting_background: deque[Sequence] = deque()
        """Batch-job rows waiting: admitted only when no interactive sequence waits."""
        self.running: list[Sequence] = []
        self.num_preemptions = 0
        self._steps_without_interactive = cfg.busy_linger_steps + 1
        """Schedules since one last found interactive work; within busy_linger_steps, background is capped."""

    def add(self, seq: Sequence) -> None:
        self._queue_of(seq).append(seq)

    def _queue_of(self, seq: Sequence) -> deque[Sequence]:
        return self.waiting_background if seq.request.background else self.waiting

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.waiting_background or self.running)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting) + len(self.waiting_background)

    def long_prefill_backlog(self) -> int:
        """Tokens interactive long prompts, running or waiting, have still to compute (before any prefix
        cache hit a waiting one may find)."""
        t = self.cfg.max_num_batched_tokens
        seqs = [s for s in self.running if not s.request.background] + list(self.waiting)
        return sum(s.num_uncomputed for s in seqs if is_long_prompt(s, t))

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        if seq.spec is not None:
            seq.spec.discard()
        self.kv.free(seq)
        seq.status = SequenceStatus.WAITING
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self._queue_of(seq).appendleft(seq)

    def _victim(self, for_seq: Sequence, chosen: set[Sequence]) -> Sequence:
        """Whom to preempt so `for_seq` can grow: the newest batch row not yet scheduled this step, else
        (for an interactive sequence only) the newest interactive one; `for_seq` itself when none is left."""
        kinds = (True,) if for_seq.request.background else (True, False)
        for background in kinds:
            for s in reversed(self.running):
                if s.request.background is background and s is not for_seq and s not in chosen:
                    return s
        return for_seq

    def schedule(self) -> ScheduledBatch:
        """Interactive work first (running, then waiting), then batch rows in whatever room is left:
        an interactive sequence never waits for a batch row, and evicts batch rows when it needs their
        memory or their seat in the batch."""
        out = ScheduledBatch()
        cfg = self.cfg
        busy = self._interactive_busy()
        interactive = _Allowance(cfg.max_num_batched_tokens, cfg.max_num_seqs, cfg.max_num_batched_tokens,
                                 cfg.long_prefill_tokens)
        chosen: dict[Sequence, int] = {}
        stalled = self._step_running(False, interactive, chosen, out)
        if not stalled:
            stalled = self._admit(self.waiting, interactive, chosen, out)
        if interactive.held_back and interactive.others == 0 and interactive.tokens > 0:
            # Nothing but long prompts in this step: the cap would only leave the budget unused.
            interactive.lift_long_cap()
            self._top_up(interactive, chosen)
            if not stalled:
                self._admit(self.waiting, interactive, chosen, out)
        background = _Allowance(min(interactive.tokens, cfg.background_step_tokens), cfg.max_num_seqs)
        if busy:
            background = _Allowance(min(interactive.tokens, cfg.background_tokens_when_busy),
                                    cfg.background_seqs_when_busy)
        if not stalled:
            stalled = self._step_running(True, background, chosen, out)
        if not stalled and not self.waiting:
            self._admit(self.waiting_background, background, chosen, out)
        pairs = sorted(chosen.items(), key=lambda c: c[1] != 1)  # single-token rows first (batched decode)
        out.seqs = [s for s, _ in pairs]
        out.num_tokens = [n for _, n in pairs]
        out.num_draft = [len(s.draft) for s, _ in pairs]
        out.block_tables = [self.kv.block_ids(s) for s, _ in pairs]
        return out

    def _interactive_busy(self) -> bool:
        """Whether background rows are capped in this step: interactive work is present now or was within
        the last busy_linger_steps schedules (called once per schedule)."""
        present = bool(self.waiting) or any(not s.request.background for s in self.running)
        self._steps_without_interactive = 0 if present else self._steps_without_interactive + 1
        return self._steps_without_interactive <= self.cfg.busy_linger_steps

    def _step_running(self, background: bool, budget: _Allowance, chosen: dict[Sequence, int],
                      out: ScheduledBatch) -> bool:
        """Give running sequences of one kind their next tokens, oldest first; True when memory ran out
        for this kind (a sequence of it was preempted), so nothing newer may be admitted this step."""
        pressure = False
        for seq in [s for s in self.running if s.request.background is background]:
            if not budget.open:
                break
            if seq.status is not SequenceStatus.RUNNING:
                continue  # preempted earlier in this loop to make room for an older one
            if seq.spec is not None:
                seq.spec.shorten(budget.tokens - 1)  # the row is its last token, then the draft
            n = budget.grant(seq)
            if n == 0:
                continue  # a long prompt held back: the decodes and short prompts after it go on
            # Drafts exist only one token behind (the engine drafts then; preemption drops them), so a
            # sequence with a draft is given exactly its last token plus the draft.
            assert not seq.draft or n == 1 + len(seq.draft)
            while not self.kv.allocate(seq, n):
                victim = self._victim(seq, chosen.keys())  # type: ignore[arg-type]
                self._preempt(victim)
                out.preempted.append(victim)
                pressure |= victim.request.background is background
                if victim is seq:
                    return True
            chosen[seq] = n
            budget.take(seq, n)
        return pressure

    def _top_up(self, budget: _Allowance, chosen: dict[Sequence, int]) -> None:
        """Give running interactive prompts, oldest first, what is left of the budget beyond what they
        were given so far; only free blocks are used (nothing is preempted to make a chunk longer)."""
        for seq in [s for s in self.running if not s.request.background]:
            if budget.tokens <= 0:
                return
            have = chosen.get(seq, 0)
            if seq.draft or (have == 0 and budget.seats <= 0):
                continue
            n = min(seq.num_uncomputed - have, budget.tokens)
            if n <= 0:
                continue
            if not self.kv.allocate(seq, have + n):
                return
            chosen[seq] = have + n
            budget.tokens -= n
            if have == 0:
                budget.seats -= 1

    def _admit(self, queue: deque[Sequence], budget: _Allowance, chosen: dict[Sequence, int],
               out: ScheduledBatch) -> bool:
        """Start waiting sequences first-come first-served while budget, seats and memory last; a long
        prompt held back by the budget's long-prompt cap is passed over, the ones behind it may start.
        An interactive one evicts batch rows not yet scheduled this step when seats or memory are short."""
        i = 0
        while i < len(queue) and budget.open:
            seq = queue[i]
            interactive = not seq.request.background
            if len(self.running) >= self.cfg.max_num_seqs:
                if interactive and self._evict_background(chosen, out):
                    continue
                return False
            if not seq.wants_prompt_logprobs:  # prompt logprobs need every prompt row computed
                self.kv.match_prefix(seq)
            n = budget.grant(seq)
            if n == 0:
                self._release_waiting(seq)
                i += 1
                continue
            if not self.kv.allocate(seq, n):
                self._release_waiting(seq)
                if interactive and self._evict_background(chosen, out):
                    continue
                return False
            del queue[i]
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            chosen[seq] = n
            budget.take(seq, n)
        return False

    def _release_waiting(self, seq: Sequence) -> None:
        """Hand back the prefix blocks a sequence that stays waiting took: a waiting one holds no KV memory."""
        self.kv.free(seq)

    def _evict_background(self, chosen: dict[Sequence, int], out: ScheduledBatch) -> bool:
        for s in reversed(self.running):
            if s.request.background and s not in chosen:
                self._preempt(s)
                out.preempted.append(s)
                return True
        return False

    def finish(self, seq: Sequence) -> None:
        """End a sequence wherever it is and give its blocks back at once."""
        if seq.status is SequenceStatus.FINISHED:
            return
        if seq.status is SequenceStatus.RUNNING:
            self.running.remove(seq)
        else:
            try:
                self._queue_of(seq).remove(seq)
            except ValueError:
                pass
        self.kv.free(seq)
        seq.status = SequenceStatus.FINISHED
