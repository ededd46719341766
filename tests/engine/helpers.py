"""Drive an Engine synchronously: add requests, step until done, collect each request's output."""

from __future__ import annotations

from dataclasses import dataclass, field

from ember.config import CacheConfig, Config, ModelConfig, SchedulerConfig, SpeculativeConfig
from ember.engine.engine import Engine
from ember.engine.request import EngineRequest, RequestOutput, SamplingParams
from ember.model.loader import LoadedModel


@dataclass
class Result:
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None
    cached_tokens: int = 0
    outputs: list[RequestOutput] = field(default_factory=list)


def make_engine(lm: LoadedModel, kv_cache_mb: int = 64, block_size: int = 16, max_num_seqs: int = 32,
                max_num_batched_tokens: int = 256, prefix: bool = True, native: bool = True,
                spec: SpeculativeConfig | None = None) -> Engine:
    return Engine(lm, Config(
        model=ModelConfig(native_kernels=native),
        cache=CacheConfig(block_size=block_size, kv_cache_mb=kv_cache_mb, enable_prefix_caching=prefix),
        scheduler=SchedulerConfig(max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens),
        speculative=spec or SpeculativeConfig()))


def run_all(engine: Engine, reqs: list[EngineRequest], max_steps: int = 10_000) -> dict[str, Result]:
    res = {r.request_id: Result() for r in reqs}
    for r in reqs:
        engine.add(r)
    for _ in range(max_steps):
        if not engine.has_work:
            break
        for o in engine.step():
            rr = res[o.request_id]
            rr.outputs.append(o)
            rr.token_ids.extend(o.new_token_ids)
            rr.text += o.new_text
            rr.cached_tokens = o.num_cached_tokens
            if o.finish_reason is not None:
                rr.finish_reason = str(o.finish_reason)
    assert not engine.has_work, "engine did not drain"
    return res


def greedy(max_tokens: int = 16, **kw: object) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True, **kw)  # type: ignore[arg-type]


def req(rid: str, ids: list[int], params: SamplingParams | None = None, salt: str | None = None) -> EngineRequest:
    return EngineRequest(rid, tuple(ids), params or greedy(), cache_salt=salt)
