"""Batched sampling: logits [B, V] -> one token per row, with logprobs, as tensor ops over the batch.

Rows differ in temperature, top-k, top-p, min-p; all are applied together with per-row parameter
tensors. Greedy rows take the argmax and skip the rest. Sampled rows draw one uniform number each and
invert the cumulative distribution: measured on 2 CPU cores over a 49152-token vocabulary, that is 15x
cheaper than the exponential race or torch.multinomial (1.8 ms vs 31 ms for 32 rows). A seeded request
draws its number from its own torch.Generator, so what else shares the batch never changes its output.

Top-k and top-p look only at the 256 best candidates (a topk, not a full sort: a 32-row sort over the
vocabulary costs 55 ms here); a top-p row whose nucleus is wider than that falls back to the full sort,
so the result is exact either way.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence as Seq
from dataclasses import dataclass

import torch

from ember.engine.request import SamplingParams, TokenLogprob


@dataclass
class SampleResult:
    token_ids: list[int]
    logprobs: list[TokenLogprob | None]
    mirostat_mu: list[float | None] | None = None
    """Each row's updated Mirostat bound (None where Mirostat is off)."""


LN2 = 0.6931471805599453


def _mirostat_truncate(scaled: torch.Tensor, mus: Seq[float]) -> torch.Tensor:
    """Mirostat 2.0: drop tokens whose surprise (-log2 p) exceeds the row's bound mu; the top one stays."""
    surprise = -torch.log_softmax(scaled, dim=-1) / LN2
    keep = surprise <= torch.tensor(mus, device=scaled.device, dtype=scaled.dtype).unsqueeze(1)
    keep.scatter_(1, scaled.argmax(dim=-1, keepdim=True), True)
    return scaled.masked_fill(~keep, float("-inf"))


def _apply_penalties(logits: torch.Tensor, params: Seq[SamplingParams], histories: Seq[Seq[int]],
                     num_prompt: Seq[int]) -> torch.Tensor:
    B, V = logits.shape
    dev = logits.device
    for i, p in enumerate(params):
        if p.logit_bias:
            ids = torch.tensor([t for t, _ in p.logit_bias], device=dev)
            vals = torch.tensor([b for _, b in p.logit_bias], device=dev, dtype=logits.dtype)
            logits[i].index_add_(0, ids, vals)
    need = [i for i, p in enumerate(params)
            if p.frequency_penalty or p.presence_penalty or p.repetition_penalty != 1.0]
    if not need:
        return logits
    for i in need:
        p = params[i]
        hist = torch.tensor(histories[i], device=dev, dtype=torch.long)
        if p.repetition_penalty != 1.0 and hist.numel():
            # As the spec says: prompt tokens count too. Positive logits shrink, negative ones grow.
            seen = torch.zeros(V, dtype=torch.bool, device=dev)
            seen[hist] = True
            row = logits[i]
            pen = torch.where(row > 0, row / p.repetition_penalty, row * p.repetition_penalty)
            logits[i] = torch.where(seen, pen, row)
        out = hist[num_prompt[i]:]
        if (p.frequency_penalty or p.presence_penalty) and out.numel():
            counts = torch.zeros(V, device=dev, dtype=logits.dtype)
            counts.index_add_(0, out, torch.ones_like(out, dtype=logits.dtype))
            logits[i] -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0).to(logits.dtype)
    return logits


CANDIDATES = 256


def _filter(logits: torch.Tensor, params: Seq[SamplingParams]) -> torch.Tensor:
    """Mask (to -inf) what top-k, top-p, min-p and typical-p exclude; the argmax always survives."""
    dev = logits.device
    B, V = logits.shape
    top_k = [p.top_k for p in params]
    top_p = [p.top_p for p in params]
    if any(p.typical_p < 1.0 for p in params):
        logits = _filter_sorted(logits, params)
    elif any(k > 0 for k in top_k) or any(x < 1.0 for x in top_p):
        K = min(V, max(CANDIDATES, *top_k))
        vals, idx = logits.topk(K, dim=-1)
        keep = torch.ones_like(vals, dtype=torch.bool)
        if any(k > 0 for k in top_k):
            k = torch.tensor([k if k > 0 else K for k in top_k], device=dev).unsqueeze(1)
            keep &= torch.arange(K, device=dev).unsqueeze(0) < k
        if any(x < 1.0 for x in top_p):
            probs = torch.exp(vals - torch.logsumexp(logits, dim=-1, keepdim=True))
            before = probs.cumsum(dim=-1) - probs  # mass strictly above each candidate
            p = _top_p_bounds(top_p, dev, probs.dtype)
            covered = (before[:, -1] + probs[:, -1]).tolist()
            if any(top_p[i] < 1.0 and top_k[i] == 0 and covered[i] < top_p[i] and K < V for i in range(B)):
                return _filter_min_p(_filter_sorted(logits, params), params)
            keep &= before < p
        keep[:, 0] = True
        restricted = torch.tensor([k > 0 or x < 1.0 for k, x in zip(top_k, top_p, strict=True)], device=dev)
        mask = torch.zeros_like(logits, dtype=torch.bool)
        mask.scatter_(1, idx, keep)
        mask |= ~restricted.unsqueeze(1)
        mask.scatter_(1, logits.argmax(dim=-1, keepdim=True), True)
        logits = logits.masked_fill(~mask, float("-inf"))
    return _filter_min_p(logits, params)


def _top_p_bounds(top_p: Seq[float], dev: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """[B, 1] mass bounds; top_p 1.0 is no bound at all (a cumulative sum can round past 1.0 before the
    tail, which dropped the last tokens of an unrestricted row batched with a restricted one)."""
    return torch.tensor([x if x < 1.0 else float("inf") for x in top_p], device=dev, dtype=dtype).unsqueeze(1)


def _filter_min_p(logits: torch.Tensor, params: Seq[SamplingParams]) -> torch.Tensor:
    min_p = [p.min_p for p in params]
    if any(x > 0.0 for x in min_p):
        probs = torch.softmax(logits, dim=-1)
        mp = torch.tensor(min_p, device=logits.device, dtype=probs.dtype).unsqueeze(1)
        logits = logits.masked_fill(probs < mp * probs.max(dim=-1, keepdim=True).values, float("-inf"))
    return logits


def _filter_sorted(logits: torch.Tensor, params: Seq[SamplingParams]) -> torch.Tensor:
    """Top-k, top-p and typical-p over a full sort of each row: exact for any distribution, but slow."""
    dev = logits.device
    top_k = [p.top_k for p in params]
    top_p = [p.top_p for p in params]
    typ = [p.typical_p for p in params]
    V = logits.shape[1]
    srt, idx = logits.sort(dim=-1, descending=True, stable=True)
    keep = torch.ones_like(srt, dtype=torch.bool)
    if any(k > 0 for k in top_k):
        k = torch.tensor([k if k > 0 else V for k in top_k], device=dev).unsqueeze(1)
        keep &= torch.arange(V, device=dev).unsqueeze(0) < k
    probs = torch.softmax(srt, dim=-1)
    if any(x < 1.0 for x in top_p):
        p = _top_p_bounds(top_p, dev, probs.dtype)
        before = probs.cumsum(dim=-1) - probs  # mass strictly above each token
        keep &= before < p
    if any(x < 1.0 for x in typ):
        # Locally typical sampling: keep the tokens whose surprisal is closest to the entropy,
        # smallest such set holding typical_p of the mass.
        logp = torch.log_softmax(srt, dim=-1)
        ent = -(probs * logp).nansum(dim=-1, keepdim=True)
        dev_ = (ent + logp).abs()
        order = dev_.argsort(dim=-1)
        cum = probs.gather(1, order).cumsum(dim=-1) - probs.gather(1, order)
        t = torch.tensor(typ, device=dev, dtype=probs.dtype).unsqueeze(1)
        keep_t = torch.empty_like(keep)
        keep_t.scatter_(1, order, cum < t)
        keep &= keep_t
    keep[:, 0] = True
    mask = torch.empty_like(keep)
    mask.scatter_(1, idx, keep)
    return logits.masked_fill(~mask, float("-inf"))


NO_LOGPROB = -9999.0
"""Reported in place of -inf (a token a grammar or a -inf bias forbids), as OpenAI's API does."""


def _top_records(logprobs: torch.Tensor, chosen: torch.Tensor, rows: Seq[int], ns: Seq[int],
                 sampling_lp: torch.Tensor | None = None) -> list[TokenLogprob | None]:
    out: list[TokenLogprob | None] = [None] * len(ns)
    want = [r for r in rows if ns[r] is not None]
    if not want:
        return out
    kmax = max(ns[r] for r in want)
    chosen_lp = logprobs.gather(1, chosen.unsqueeze(1)).squeeze(1).tolist()
    s_lp = sampling_lp.tolist() if sampling_lp is not None else None
    top_v, top_i = (logprobs.topk(kmax, dim=-1) if kmax > 0 else (None, None))
    tv = top_v.tolist() if top_v is not None else None
    ti = top_i.tolist() if top_i is not None else None
    ch = chosen.tolist()
    for r in want:
        n = ns[r]
        top = tuple(zip(ti[r][:n], tv[r][:n], strict=True)) if n and ti is not None and tv is not None else ()
        # A grammar can leave fewer allowed tokens than alternatives asked for: the rest are -inf, which
        # JSON cannot carry, and are no alternatives at all.
        top = tuple((t, v) for t, v in top if v > NO_LOGPROB)
        out[r] = TokenLogprob(ch[r], max(chosen_lp[r], NO_LOGPROB), top,
                              max(s_lp[r], NO_LOGPROB) if s_lp is not None else None)
    return out


def seeded_generator(seed: int, device: torch.device | str) -> torch.Generator:
    """A request's own generator. The CPU generator (mt19937) keeps only a seed's low 32 bits, so seeds 1
    and 1 + 2**32 drew the same text; wider (and negative) seeds are hashed down to 32 bits first. Seeds
    that already fit are used as they are."""
    if not 0 <= seed < 2**32:
        digest = hashlib.blake2b(seed.to_bytes(16, "little", signed=True), digest_size=4).digest()
        seed = int.from_bytes(digest, "little")
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return gen


def _draw(probs: torch.Tensor, generators: Seq[torch.Generator | None]) -> torch.Tensor:
    """One token per row by inverting the CDF at a uniform draw (the row's own generator when seeded)."""
    u = torch.empty(probs.shape[0], 1, device=probs.device)
    unseeded = [i for i, g in enumerate(generators) if g is None]
    if unseeded:
        u[unseeded] = torch.rand(len(unseeded), 1, device=probs.device)
    for i, g in enumerate(generators):
        if g is not None:
            u[i] = torch.rand(1, generator=g, device=probs.device)
    cdf = probs.cumsum(dim=-1)
    # Scaling by the row total keeps rounding in the sum from pointing past the last token.
    idx = torch.searchsorted(cdf, u * cdf[:, -1:], right=True).squeeze(1)
    bad = idx >= probs.shape[1]
    if bool(bad.any()):
        idx = torch.where(bad, probs.argmax(dim=-1), idx)
    return idx


class Sampler:
    def __call__(self, logits: torch.Tensor, params: Seq[SamplingParams],
                 generators: Seq[torch.Generator | None], histories: Seq[Seq[int]],
                 num_prompt: Seq[int], mirostat_mu: Seq[float | None] | None = None) -> SampleResult:
        logits = _apply_penalties(logits.float(), params, histories, num_prompt)
        B = logits.shape[0]
        chosen = logits.argmax(dim=-1)
        rows = [i for i, p in enumerate(params) if not p.greedy]
        ns = [p.logprobs for p in params]
        want_lp = any(n is not None for n in ns)
        scaled: torch.Tensor | None = None
        if rows:
            sub_params = [params[i] for i in rows]
            temps = torch.tensor([p.temperature for p in sub_params], device=logits.device).unsqueeze(1)
            scaled = _filter(logits[rows] / temps, sub_params)
            mrows = [j for j, i in enumerate(rows) if mirostat_mu is not None and mirostat_mu[i] is not None]
            if mrows:
                assert mirostat_mu is not None
                scaled[mrows] = _mirostat_truncate(scaled[mrows], [mirostat_mu[rows[j]] for j in mrows])
            probs = torch.softmax(scaled, dim=-1)
            picked = _draw(probs, [generators[i] for i in rows])
            chosen[rows] = picked
            if mrows:
                assert mirostat_mu is not None
                new_mu: list[float | None] = list(mirostat_mu)
                p_chosen = probs[mrows].gather(1, picked[mrows].unsqueeze(1)).squeeze(1)
                observed = (-torch.log2(p_chosen.clamp(min=1e-30))).tolist()
                for j, obs in zip(mrows, observed, strict=True):
                    i = rows[j]
                    p = params[i]
                    assert p.mirostat_target is not None and new_mu[i] is not None
                    new_mu[i] = new_mu[i] - p.mirostat_lr * (obs - p.mirostat_target)
                mirostat_mu = new_mu
        records: list[TokenLogprob | None] = [None] * B
        if want_lp:
            lp = torch.log_softmax(logits, dim=-1)
            # A greedy row's sampling distribution is a point mass on its choice: log 1 = 0.
            slp = torch.zeros(B, device=logits.device)
            if rows and scaled is not None:
                slp[rows] = torch.log_softmax(scaled, dim=-1).gather(1, chosen[rows].unsqueeze(1)).squeeze(1)
            records = _top_records(lp, chosen, range(B), ns, slp)
        return SampleResult(chosen.tolist(), records,
                            list(mirostat_mu) if mirostat_mu is not None else None)


    def processed(self, logits: torch.Tensor, p: SamplingParams) -> torch.Tensor:
        """Rows of one request's logits as plain decoding would draw from them: logit_bias, then (when
        sampling) temperature and the filters. For verifying a draft, where no history-dependent
        processor is active (see speculative.can_speculate)."""
        R = logits.shape[0]
        out = _apply_penalties(logits.float().clone(), [p] * R, [[]] * R, [0] * R)
        if p.greedy:
            return out
        return _filter(out / p.temperature, [p] * R)

    def records(self, logits: torch.Tensor, tokens: Seq[int], p: SamplingParams,
                processed: torch.Tensor) -> list[TokenLogprob]:
        """Logprob records for tokens chosen at consecutive rows (speculative decoding)."""
        if p.logprobs is None or not tokens:
            return []
        R = len(tokens)
        chosen = torch.tensor(list(tokens), device=logits.device)
        lp = torch.log_softmax(logits[:R].float(), dim=-1)
        if p.greedy:
            slp = torch.zeros(R, device=logits.device)
        else:
            slp = torch.log_softmax(processed[:R], dim=-1).gather(1, chosen.unsqueeze(1)).squeeze(1)
        return [r for r in _top_records(lp, chosen, range(R), [p.logprobs] * R, slp) if r is not None]


def prompt_logprobs(logits: torch.Tensor, targets: Seq[int], n: int) -> list[TokenLogprob]:
    """Logprob of each next prompt token under the model, with the top n alternatives."""
    lp = torch.log_softmax(logits.float(), dim=-1)
    chosen = torch.tensor(list(targets), device=lp.device)
    recs = _top_records(lp, chosen, range(len(targets)), [n] * len(targets))
    return [r for r in recs if r is not None]
