"""Batched sampling: logits [B, V] -> one token per row, with logprobs, as tensor ops over the batch.

Rows differ in temperature, top-k, top-p, min-p; all are applied together with per-row parameter
tensors. A seeded request draws its noise from its own torch.Generator, so what else shares the batch
never changes its output. Sampling uses the exponential race (argmax of p / Exp(1) noise), which needs
no cumulative sum and no host sync.
"""

from __future__ import annotations

from collections.abc import Sequence as Seq
from dataclasses import dataclass

import torch

from ember.engine.request import SamplingParams, TokenLogprob


@dataclass
class SampleResult:
    token_ids: list[int]
    logprobs: list[TokenLogprob | None]


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


def _filter(logits: torch.Tensor, params: Seq[SamplingParams]) -> torch.Tensor:
    """Mask (to -inf) what top-k, top-p, min-p and typical-p exclude; the argmax always survives."""
    dev = logits.device
    top_k = [p.top_k for p in params]
    top_p = [p.top_p for p in params]
    min_p = [p.min_p for p in params]
    typ = [p.typical_p for p in params]
    V = logits.shape[1]
    if any(k > 0 for k in top_k) or any(x < 1.0 for x in top_p) or any(x < 1.0 for x in typ):
        srt, idx = logits.sort(dim=-1, descending=True, stable=True)
        keep = torch.ones_like(srt, dtype=torch.bool)
        if any(k > 0 for k in top_k):
            k = torch.tensor([k if k > 0 else V for k in top_k], device=dev).unsqueeze(1)
            keep &= torch.arange(V, device=dev).unsqueeze(0) < k
        probs = torch.softmax(srt, dim=-1)
        if any(x < 1.0 for x in top_p):
            p = torch.tensor(top_p, device=dev, dtype=probs.dtype).unsqueeze(1)
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
        logits = logits.masked_fill(~mask, float("-inf"))
    if any(x > 0.0 for x in min_p):
        probs = torch.softmax(logits, dim=-1)
        mp = torch.tensor(min_p, device=dev, dtype=probs.dtype).unsqueeze(1)
        logits = logits.masked_fill(probs < mp * probs.max(dim=-1, keepdim=True).values, float("-inf"))
    return logits


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
        out[r] = TokenLogprob(ch[r], chosen_lp[r], top, s_lp[r] if s_lp is not None else None)
    return out


class Sampler:
    def __call__(self, logits: torch.Tensor, params: Seq[SamplingParams],
                 generators: Seq[torch.Generator | None], histories: Seq[Seq[int]],
                 num_prompt: Seq[int]) -> SampleResult:
        logits = _apply_penalties(logits.float(), params, histories, num_prompt)
        B = logits.shape[0]
        greedy = torch.tensor([p.greedy for p in params], device=logits.device)
        temps = torch.tensor([p.temperature if not p.greedy else 1.0 for p in params],
                             device=logits.device).unsqueeze(1)
        scaled = _filter(logits / temps, params)
        probs = torch.softmax(scaled, dim=-1)
        noise = torch.empty_like(probs)
        unseeded = [i for i, g in enumerate(generators) if g is None]
        if unseeded:
            noise[unseeded] = torch.empty(len(unseeded), probs.shape[1], device=probs.device).exponential_()
        for i, g in enumerate(generators):
            if g is not None:
                noise[i] = torch.empty(probs.shape[1], device=probs.device).exponential_(generator=g)
        sampled = (probs / noise).argmax(dim=-1)
        chosen = torch.where(greedy, logits.argmax(dim=-1), sampled)
        ns = [p.logprobs for p in params]
        records: list[TokenLogprob | None] = [None] * B
        if any(n is not None for n in ns):
            lp = torch.log_softmax(logits, dim=-1)
            slp = torch.log_softmax(scaled, dim=-1).gather(1, chosen.unsqueeze(1)).squeeze(1)
            records = _top_records(lp, chosen, range(B), ns, slp)
        return SampleResult(chosen.tolist(), records)


def prompt_logprobs(logits: torch.Tensor, targets: Seq[int], n: int) -> list[TokenLogprob]:
    """Logprob of each next prompt token under the model, with the top n alternatives."""
    lp = torch.log_softmax(logits.float(), dim=-1)
    chosen = torch.tensor(list(targets), device=lp.device)
    recs = _top_records(lp, chosen, range(len(targets)), [n] * len(targets))
    return [r for r in recs if r is not None]
