"""Speculative decoding without a draft model: drafts come from text the request already has.

A draft is a guess of the next k tokens, taken by n-gram lookup in a source: the request's predicted
output (`speculation` / `prediction`), or, with the server's prompt-lookup flag, its own prompt and
output. The engine verifies a draft in one forward pass over [last token, d1..dk] and keeps the longest
prefix the model agrees with plus one token of its own (`verify`), so the output distribution is the
one plain decoding has: identical text when greedy, the standard accept/reject rule when sampling.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence as Seq
from dataclasses import dataclass, field

import torch

from ember.engine.request import SamplingParams

NGRAM_WINDOW = 1024
"""Tokens of its own text a sequence searches for prompt-lookup drafts."""


def propose(history: Seq[int], source: Seq[int], k: int, max_ngram: int = 3) -> list[int]:
    """Up to k tokens that followed the latest match of history's last n tokens in source (n from
    max_ngram down to 1); with no history yet, source's first k tokens. For prompt lookup, where the
    source grows with the output and the latest context is the best guide."""
    if k <= 0 or not source:
        return []
    if not history:
        return list(source[:k])
    for n in range(min(max_ngram, len(history)), 0, -1):
        tail = list(history[-n:])
        for start in range(len(source) - n, -1, -1):
            if start + n < len(source) and list(source[start : start + n]) == tail:
                return list(source[start + n : start + n + k])
    return []


NEAR_WINDOW = {1: 8, 2: 16}
"""How far from where the prediction was expected to continue a 1- or 2-token match may be and still
count: a common token or pair ("the", "for the") a sentence away is no evidence of where the text is."""


class PredictionIndex:
    """Every 1..max_ngram-gram of a fixed prediction, by where it ends, for drafting near a position.

    A prediction is consumed roughly in order, so of several places where the output's last tokens occur
    the one nearest the expected position is the likeliest; the latest one, which prompt lookup uses, can
    sit a paragraph away.
    """

    def __init__(self, source: Seq[int], max_ngram: int = 3) -> None:
        self.source = list(source)
        self.max_ngram = max_ngram
        self._ends: dict[tuple[int, ...], list[int]] = {}
        for n in range(1, max_ngram + 1):
            for start in range(len(self.source) - n):  # something must follow a match to be drafted
                self._ends.setdefault(tuple(self.source[start : start + n]), []).append(start + n)

    def propose(self, history: Seq[int], k: int, near: int) -> tuple[list[int], int | None]:
        """Up to k tokens after the longest (n <= max_ngram) match of history's tail nearest to `near`
        (short matches only within NEAR_WINDOW of it), and where they start; ([], None) for no match."""
        if k <= 0 or not self.source:
            return [], None
        if not history:
            return self.source[:k], 0
        for n in range(min(self.max_ngram, len(history)), 0, -1):
            ends = self._ends.get(tuple(history[-n:]))
            if not ends:
                continue
            i = bisect_left(ends, near)
            end = min(ends[max(0, i - 1) : i + 1], key=lambda e: (abs(e - near), -e))
            if abs(end - near) > NEAR_WINDOW.get(n, len(self.source)):
                continue  # too far to trust; a shorter match near the expected place may still do
            return self.source[end : end + k], end
        return [], None


@dataclass
class Speculation:
    """The speculative state of one sequence, and every decision about its drafts.

    Life of a draft: `propose` after a step leaves the sequence one token behind; the scheduler may
    `shorten` it to the step's budget or `discard` it on preemption; the engine `accept`s the verified
    prefix (which consumes the draft whatever the outcome) and `advance`s past the tokens it kept.
    """

    num_draft_tokens: int
    """k: the draft length while the source is unproven (SpeculativeConfig.num_draft_tokens)."""
    source: PredictionIndex | None = None
    """Where drafts come from: the predicted output, or None to look up the sequence's own tokens."""
    draft: list[int] = field(default_factory=list)
    """Tokens guessed to follow the sequence's tokens, verified in the next step (never part of them)."""
    pos: int = 0
    """Index in source expected to match the next output token (advances with every token)."""
    streak: bool = False
    """The last draft was accepted whole: the next one may be longer."""
    num_drafted: int = 0
    num_accepted: int = 0

    @classmethod
    def for_request(cls, params: SamplingParams, ngram_lookup: bool, constrained: bool,
                    num_draft_tokens: int) -> Speculation | None:
        """The state of a request that speculates (from its prediction, or by prompt lookup when the
        server enables it), or None for one that decodes one token at a time."""
        if not (params.speculation or ngram_lookup) or not can_speculate(params, constrained):
            return None
        source = PredictionIndex(params.speculation) if params.speculation else None
        return cls(num_draft_tokens, source)

    def propose(self, token_ids: Seq[int], num_prompt_tokens: int, room: int) -> None:
        """Draft what follows token_ids: at most `room` tokens (what max_tokens and the context window
        leave after the model's own token). After a draft held whole the next may be 2k+1 long (see
        SpeculativeConfig.num_draft_tokens); after a miss, k again."""
        k = self.num_draft_tokens
        k = min(2 * k + 1 if self.streak else k, room)
        if self.source is None:  # prompt lookup over a recent window: the search is Python, once per step
            self.draft = propose(token_ids, token_ids[-NGRAM_WINDOW:], k)
            return
        draft, at = self.source.propose(token_ids[num_prompt_tokens:], k, near=self.pos)
        if at is not None:
            self.pos = at
        elif k > 0:
            # No n-gram match right after the model replaced a predicted token: assume a same-length
            # edit and read on from where the prediction should be (the verifier corrects any guess).
            draft = self.source.source[self.pos : self.pos + k]
        self.draft = list(draft)

    def shorten(self, max_len: int) -> None:
        """Keep at most max_len draft tokens: a draft is verified whole or not at all, so one that does
        not fit the step's budget is cut to what does."""
        del self.draft[max(0, max_len):]

    def discard(self) -> None:
        """Drop the draft unverified (preemption: its KV would have to be recomputed anyway)."""
        self.draft = []

    def accept(self, scores: torch.Tensor, greedy: bool, generator: torch.Generator | None) -> list[int]:
        """Verify the draft against the target scores of its rows (see `verify`) and consume it; the
        tokens to emit: the accepted draft prefix, then the model's own token."""
        draft, self.draft = self.draft, []
        tokens, accepted = verify(scores, draft, greedy, generator)
        self.num_drafted += len(draft)
        self.num_accepted += accepted
        self.streak = bool(draft) and accepted == len(draft)
        return tokens

    def advance(self, num_tokens: int) -> None:
        """The sequence kept num_tokens more output tokens: the prediction is expected further on."""
        self.pos += num_tokens


def can_speculate(params: SamplingParams, constrained: bool) -> bool:
    """Drafts are verified against the same distribution plain decoding would use; processors that
    depend on the tokens before each position (penalties, Mirostat, a grammar) would need one pass per
    position, so such requests decode one token at a time."""
    return not (constrained or params.frequency_penalty or params.presence_penalty
                or params.repetition_penalty != 1.0 or params.mirostat_target is not None)


def verify(probs_or_logits: torch.Tensor, draft: Seq[int], greedy: bool,
           generator: torch.Generator | None) -> tuple[list[int], int]:
    """Rows 0..k of target scores for [after last token, after d1, ..., after dk] -> (tokens, accepted).

    Greedy: `probs_or_logits` are processed logits; accept while the argmax equals the draft, then the
    argmax. Sampling: they are the processed probabilities; accept draft token d with probability p(d),
    else sample from p with d removed (the residual of a point-mass draft), which leaves the output
    distributed exactly as p.
    """
    k = len(draft)
    if greedy:
        best = probs_or_logits.argmax(dim=-1).tolist()
        out: list[int] = []
        for j in range(k):
            if best[j] != draft[j]:
                return out + [best[j]], j
            out.append(draft[j])
        return out + [best[k]], k
    p = probs_or_logits
    dev = p.device
    u = torch.rand(k + 1, generator=generator, device=dev) if generator is not None else torch.rand(k + 1)
    draft_p = p[torch.arange(k, device=dev), torch.tensor(list(draft), device=dev)].tolist() if k else []
    out = []
    for j in range(k):
        if float(u[j]) < draft_p[j]:
            out.append(draft[j])
            continue
        residual = p[j].clone()
        residual[draft[j]] = 0.0
        return out + [_sample(residual, generator)], j
    return out + [_sample(p[k], generator)], k


def _sample(p: torch.Tensor, generator: torch.Generator | None) -> int:
    total = float(p.sum())
    if total <= 0.0:
        return int(p.argmax())
    cdf = p.cumsum(dim=0)
    u = torch.rand(1, generator=generator, device=p.device) if generator is not None else torch.rand(1)
    idx = int(torch.searchsorted(cdf, u * cdf[-1:], right=True))
    return min(idx, p.shape[0] - 1)
