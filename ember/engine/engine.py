"""Engine: add / abort / step. One step = schedule -> run -> sample -> detokenize -> outputs."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ember.config import Config
from ember.engine.backlog import refuse_long_prompt
from ember.engine.detokenizer import Detokenizer
from ember.engine.grammar import GrammarCompiler, apply_masks
from ember.engine.kv_cache import BlockPool
from ember.engine.kv_manager import KVManager
from ember.engine.request import EngineRequest, FinishReason, RequestOutput, TokenLogprob
from ember.engine.runner import ModelRunner, RunResult
from ember.engine.sampler import Sampler, prompt_logprobs, seeded_generator
from ember.engine.scheduler import ScheduledBatch, Scheduler
from ember.engine.sequence import Sequence, SequenceStatus
from ember.engine.speculative import Speculation
from ember.errors import ContextLengthExceeded, InvalidRequest

if TYPE_CHECKING:
    from ember.model.loader import LoadedModel

PREFILL_RATE_MIN_TOKENS = 64
"""Steps smaller than this say more about per-step overhead than about prefill speed."""
PREFILL_RATE_WEIGHT = 0.2
"""Weight of the newest step in the moving average (the rate falls as contexts grow; it must follow)."""


@dataclass
class EngineStats:
    num_running: int
    num_waiting: int
    kv_blocks_used: int
    kv_blocks_free: int
    prefix_queries: int
    prefix_hits: int
    num_preemptions: int
    kv_touched_bytes: int = 0
    """KV cache bytes ever written (resident on CPU, where the cache is a lazily-filled memory map)."""
    long_prefill_backlog: int = 0
    """Prompt tokens interactive long prompts (running or waiting) have still to compute."""
    prefill_tokens_per_s: float = 0.0
    """Tokens a step computes per second, a moving average over steps of PREFILL_RATE_MIN_TOKENS or more;
    0 until one has run."""


class Engine:
    """Built only from a loaded model and the whole Config (every caller: the server, `ember complete`,
    tests, benches), so no entry point can drop a setting such as the speculative ones."""

    def __init__(self, loaded: LoadedModel, config: Config) -> None:
        model, tokenizer, cache = loaded.model, loaded.tokenizer, config.cache
        self.tokenizer = tokenizer
        self.spec = config.speculative
        self.device = loaded.device
        self.max_model_len = config.model.max_model_len or model.args.max_seq_len
        kv_dtype = getattr(torch, cache.kv_cache_dtype)
        per_block = ModelRunner.bytes_per_block(model.args, cache.block_size, kv_dtype)
        self.kv_bytes_per_block = per_block
        num_blocks = max(1, cache.kv_cache_mb * 1024 * 1024 // per_block)
        self.pool = BlockPool(num_blocks, cache.block_size, cache.enable_prefix_caching)
        self.kv = KVManager(self.pool)
        self.scheduler = Scheduler(config.scheduler, self.kv)
        self.runner = ModelRunner(model, num_blocks, cache.block_size, self.device,
                                  native=config.model.native_kernels, kv_dtype=kv_dtype)
        self.sampler = Sampler()
        self.grammars = GrammarCompiler(tokenizer)
        self.detok = Detokenizer(tokenizer)
        self.seqs: dict[str, Sequence] = {}
        self.stop_ids = tokenizer.stop_ids
        self.prefill_tokens_per_s = 0.0

    @property
    def kv_capacity_tokens(self) -> int:
        return self.pool.num_blocks * self.pool.block_size

    def add(self, req: EngineRequest) -> None:
        n = len(req.prompt_token_ids)
        if n == 0:
            raise InvalidRequest("the prompt is empty", param="prompt")
        if n + req.params.max_tokens > self.max_model_len:
            raise ContextLengthExceeded(
                f"prompt ({n} tokens) plus max_tokens ({req.params.max_tokens}) exceeds the context "
                f"window of {self.max_model_len} tokens", param="max_tokens")
        if n + req.params.max_tokens > self.kv_capacity_tokens:
            raise InvalidRequest(
                f"the request needs {n + req.params.max_tokens} tokens of KV cache; this server has "
                f"{self.kv_capacity_tokens} (raise --kv-cache-mb)", param="max_tokens")
        if req.request_id in self.seqs:
            raise InvalidRequest(f"duplicate request id {req.request_id}")
        gen = None
        if req.params.seed is not None and not req.params.greedy:
            gen = seeded_generator(req.params.seed, self.device)
        seq = Sequence(request=req, generator=gen)
        if req.params.grammar is not None:
            seq.matcher = self.grammars.matcher(req.params.grammar)
        seq.spec = Speculation.for_request(req.params, self.spec.ngram_lookup, seq.matcher is not None,
                                           self.spec.num_draft_tokens)
        self.seqs[req.request_id] = seq
        seq.arrival_time = req.arrival_time or time.monotonic()
        self.scheduler.add(seq)

    def refuse_if_backlogged(self, reqs: list[EngineRequest]) -> None:
        """Raise Overloaded for a submission whose long prompt would wait behind too much long-prompt
        prefill (ember.engine.backlog). Prompts repeated in it (n > 1) count once: they share their prefix.
        Batch rows are never refused here: they yield to interactive work anyway."""
        prompts = {r.prompt_token_ids for r in reqs if not r.background}
        if not prompts:
            return
        cfg = self.scheduler.cfg
        err = refuse_long_prompt([len(p) for p in prompts], cfg.max_num_batched_tokens,
                                 self.scheduler.long_prefill_backlog(), self.prefill_tokens_per_s,
                                 cfg.max_prefill_backlog_s)
        if err is not None:
            raise err

    def abort(self, request_id: str) -> None:
        seq = self.seqs.pop(request_id, None)
        if seq is not None:
            self.scheduler.finish(seq)

    @property
    def has_work(self) -> bool:
        return self.scheduler.has_work

    def stats(self) -> EngineStats:
        return EngineStats(len(self.scheduler.running), self.scheduler.num_waiting, self.pool.num_used,
                           self.pool.num_free, self.pool.queries, self.pool.hits,
                           self.scheduler.num_preemptions, self.pool.num_touched * self.kv_bytes_per_block,
                           self.scheduler.long_prefill_backlog(),
                           self.prefill_tokens_per_s)

    def step(self) -> list[RequestOutput]:
        t0 = time.perf_counter()
        batch = self.scheduler.schedule()
        if not batch.seqs:
            return []
        outputs = self._run(batch)
        if batch.total_tokens >= PREFILL_RATE_MIN_TOKENS:
            rate = batch.total_tokens / max(time.perf_counter() - t0, 1e-6)
            w = PREFILL_RATE_WEIGHT if self.prefill_tokens_per_s else 1.0
            self.prefill_tokens_per_s += w * (rate - self.prefill_tokens_per_s)
        return outputs

    def _run(self, batch: ScheduledBatch) -> list[RequestOutput]:
        result = self.runner.run(batch)
        self._record_prompt_logprobs(batch, result)
        for seq, n, k in zip(batch.seqs, batch.num_tokens, batch.num_draft, strict=True):
            if not k:  # a verify row's KV counts only as far as its draft is accepted (_verify_and_emit)
                self.kv.commit(seq, n)
        outputs = self._sample_and_emit(batch, result)
        outputs += self._verify_and_emit(batch, result)
        for seq in batch.seqs:
            # Only a sequence about to decode drafts; one still prefilling its prompt does not.
            if (seq.spec is not None and seq.status is SequenceStatus.RUNNING
                    and seq.num_computed_tokens == seq.num_tokens - 1):
                # Accepted tokens plus the model's own must fit in max_tokens and the context window.
                room = min(seq.params.max_tokens - seq.num_output_tokens, self.max_model_len - seq.num_tokens) - 1
                seq.spec.propose(seq.token_ids, seq.num_prompt_tokens, room)
        return outputs

    def _verify_and_emit(self, batch: ScheduledBatch, result: RunResult) -> list[RequestOutput]:
        outputs: list[RequestOutput] = []
        now = time.monotonic()
        for i, logits in result.verify_logits.items():
            seq = batch.seqs[i]
            assert seq.spec is not None  # only a speculating sequence is given a verify row
            if seq.is_finished:
                seq.spec.discard()
                continue
            p = seq.params
            processed = self.sampler.processed(logits, p)
            scores = processed if p.greedy else torch.softmax(processed, dim=-1)
            tokens = seq.spec.accept(scores, p.greedy, seq.generator)
            self.kv.commit(seq, len(tokens))  # the last token and the accepted draft: 1 + accepted
            recs = self.sampler.records(logits, tokens, p, processed)
            outputs.append(self._emit(seq, tokens, recs, now))
        return outputs

    def _record_prompt_logprobs(self, batch: ScheduledBatch, result: RunResult) -> None:
        for i, (start, logits) in result.prompt_logits.items():
            seq = batch.seqs[i]
            n_top = seq.params.prompt_logprobs or 0
            # Row r predicts token start + r + 1; only prompt tokens are targets here.
            end = min(start + logits.shape[0], seq.num_prompt_tokens - 1)
            have = len(seq.prompt_logprobs) - 1  # entry 0 is the first token, which has no logprob
            if not seq.prompt_logprobs:
                seq.prompt_logprobs.append(TokenLogprob(seq.token_ids[0], None))
                have = 0
            lo = max(start, have)
            if lo >= end:
                continue
            targets = seq.token_ids[lo + 1 : end + 1]
            seq.prompt_logprobs.extend(prompt_logprobs(logits[lo - start : end - start], targets, n_top))

    def _sample_and_emit(self, batch: ScheduledBatch, result: RunResult) -> list[RequestOutput]:
        now = time.monotonic()
        seqs = [batch.seqs[i] for i in result.sample_index]
        outputs: list[RequestOutput] = []
        to_sample = [k for k, s in enumerate(seqs) if s.params.max_tokens > 0]
        sampled = None
        if to_sample:
            sub = [seqs[k] for k in to_sample]
            logits = result.sample_logits[to_sample]
            apply_masks(logits, [s.matcher for s in sub])
            sampled = self.sampler(logits, [s.params for s in sub],
                                   [s.generator for s in sub], [s.token_ids for s in sub],
                                   [s.num_prompt_tokens for s in sub], [s.mirostat_mu for s in sub])
        pos = {k: j for j, k in enumerate(to_sample)}
        for k, seq in enumerate(seqs):
            if seq.is_finished:
                continue
            if k not in pos:  # max_tokens == 0: the prompt (and its logprobs) was all that was asked
                outputs.append(self._finish(seq, FinishReason.LENGTH, (), (), now))
                continue
            assert sampled is not None
            if sampled.mirostat_mu is not None:
                seq.mirostat_mu = sampled.mirostat_mu[pos[k]]
            rec = sampled.logprobs[pos[k]]
            outputs.append(self._emit(seq, [sampled.token_ids[pos[k]]], [rec] if rec is not None else [], now))
        return outputs

    def _emit(self, seq: Sequence, tokens: list[int], recs: list[TokenLogprob], now: float) -> RequestOutput:
        """Append tokens one by one (stop strings, EOS, grammar, max_tokens checked after each), then
        report what was kept as one output."""
        kept: list[int] = []
        offsets: list[int] = []
        reason: FinishReason | None = None
        for tok in tokens:
            seq.token_ids.append(tok)
            kept.append(tok)
            if seq.first_token_time is None:
                seq.first_token_time = now
            # A grammar decides where the text ends, so ignore_eos does not apply to a constrained sequence.
            is_eos = tok in self.stop_ids and (not seq.params.ignore_eos or seq.matcher is not None)
            offsets.append(len(seq.detok.text))
            if not is_eos and self.detok.append(seq.detok, tok):
                reason = FinishReason.STOP
            if is_eos:
                reason = FinishReason.STOP
            if seq.matcher is not None:
                seq.matcher.consume_token(tok)
                # The grammar is complete (or its end-of-text was taken): nothing more may follow.
                if seq.matcher.is_stopped() or seq.matcher.is_error():
                    reason = reason or FinishReason.STOP
            if reason is None and (seq.num_output_tokens >= seq.params.max_tokens
                                   or seq.num_tokens >= self.max_model_len):
                reason = FinishReason.LENGTH
            if reason is not None:
                break
        if seq.spec is not None:
            seq.spec.advance(len(kept))
        kept_recs = tuple(recs[: len(kept)])
        if reason is not None:
            return self._finish(seq, reason, tuple(kept), kept_recs, now, tuple(offsets))
        return self._output(seq, tuple(kept), kept_recs, None, tuple(offsets))

    def _output(self, seq: Sequence, toks: tuple[int, ...], recs: tuple[TokenLogprob, ...],
                reason: FinishReason | None, offsets: tuple[int, ...] = ()) -> RequestOutput:
        text = self.detok.take(seq.detok, final=reason is not None)
        plp = None
        if seq.wants_prompt_logprobs and not seq.prompt_logprobs_sent:
            plp = tuple(seq.prompt_logprobs)
            seq.prompt_logprobs_sent = True
        return RequestOutput(
            request_id=seq.request_id, new_token_ids=toks, new_text=text, finish_reason=reason,
            new_logprobs=recs, new_text_offsets=offsets, prompt_logprobs=plp,
            num_prompt_tokens=seq.num_prompt_tokens, num_cached_tokens=seq.num_prefix_hit_tokens,
            num_output_tokens=seq.num_output_tokens, first_token_time=seq.first_token_time,
            arrival_time=seq.arrival_time, num_draft_tokens=seq.spec.num_drafted if seq.spec else 0,
            num_accepted_draft_tokens=seq.spec.num_accepted if seq.spec else 0)

    def _finish(self, seq: Sequence, reason: FinishReason, toks: tuple[int, ...],
                recs: tuple[TokenLogprob, ...], now: float, offsets: tuple[int, ...] = ()) -> RequestOutput:
        self.scheduler.finish(seq)
        self.seqs.pop(seq.request_id, None)
        seq.status = SequenceStatus.FINISHED
        return self._output(seq, toks, recs, reason, offsets)
