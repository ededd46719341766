"""In-process engine throughput (no HTTP): decode at several batch sizes and prefill, for profiling.

    .venv/bin/python bench/engine_speed.py [--quantization int8] [--batches 1 4 32]
"""

from __future__ import annotations

import argparse
import random
import time

import torch

from ember.config import CacheConfig, Config, ModelConfig, SchedulerConfig
from ember.engine.engine import Engine
from ember.engine.request import EngineRequest, SamplingParams
from ember.model.loader import load_model


def run(engine: Engine, prompts: list[list[int]], max_tokens: int) -> tuple[float, int]:
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    for i, p in enumerate(prompts):
        engine.add(EngineRequest(f"r{time.monotonic_ns()}-{i}", tuple(p), params))
    t0 = time.perf_counter()
    n = 0
    while engine.has_work:
        n += sum(len(o.new_token_ids) for o in engine.step())
    return time.perf_counter() - t0, n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quantization", default="none")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 4, 32])
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--profile", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(2)
    lm = load_model(ModelConfig(quantization=a.quantization))
    engine = Engine(lm, Config(model=ModelConfig(quantization=a.quantization),
                               cache=CacheConfig(kv_cache_mb=1024, enable_prefix_caching=False),
                               scheduler=SchedulerConfig(max_num_seqs=64, max_num_batched_tokens=512)))
    rng = random.Random(0)
    vocab = lm.args.vocab_size
    run(engine, [[rng.randrange(1000, vocab) for _ in range(16)]], 4)  # warm-up
    for b in a.batches:
        prompts = [[rng.randrange(1000, vocab) for _ in range(130)] for _ in range(b)]
        dt, n = run(engine, prompts, a.max_tokens)
        print(f"batch {b:3d}: {n} tokens in {dt:.2f}s = {n / dt:.1f} tok/s (incl. prefill of {130 * b} tokens)")
    prompt = [rng.randrange(1000, vocab) for _ in range(512)]
    params = SamplingParams(max_tokens=1, temperature=0.0)
    engine.add(EngineRequest("pf", tuple(prompt), params))
    t0 = time.perf_counter()
    while engine.has_work:
        engine.step()
    dt = time.perf_counter() - t0
    print(f"prefill 512: {dt:.3f}s = {512 / dt:.0f} tok/s")
    if a.profile:
        from torch.profiler import ProfilerActivity, profile

        prompts = [[rng.randrange(1000, vocab) for _ in range(130)] for _ in range(32)]
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            run(engine, prompts, 16)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


if __name__ == "__main__":
    main()
