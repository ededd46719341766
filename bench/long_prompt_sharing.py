"""What a long prompt costs the requests beside it, per `--long-prefill-tokens` cap (engine only, no HTTP).

    .venv/bin/python bench/long_prompt_sharing.py [--long 7000] [--streams 8] [--caps 64 128 256 512]

For each cap: `--streams` short requests are decoding when one cold prompt of `--long` tokens arrives;
halfway through its prefill a new short prompt arrives. Reported: the long prompt's prefill time, the
step time the decoding streams see meanwhile (their inter-token latency), and the new short prompt's time
to first token. A cap equal to the step budget (512) is the old oldest-first order: the long prompt,
older than the new short one, takes every step whole.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a plain script from a checkout

from ember.config import CacheConfig, Config, ModelConfig, SchedulerConfig  # noqa: E402
from ember.engine.engine import Engine  # noqa: E402
from ember.engine.request import EngineRequest, SamplingParams  # noqa: E402
from ember.model.loader import LoadedModel, load_model  # noqa: E402


def one_cap(lm: LoadedModel, cap: int, long_len: int, streams: int, rng: random.Random) -> dict[str, float]:
    engine = Engine(lm, Config(cache=CacheConfig(kv_cache_mb=512, enable_prefix_caching=False),
                               scheduler=SchedulerConfig(max_num_seqs=64, max_num_batched_tokens=512,
                                                         long_prefill_tokens=cap)))
    vocab = lm.args.vocab_size
    decode = SamplingParams(max_tokens=4000, temperature=0.0, ignore_eos=True)
    for i in range(streams):
        engine.add(EngineRequest(f"s{i}", tuple(rng.randrange(1000, vocab) for _ in range(64)), decode))
    while any(engine.seqs[f"s{i}"].num_output_tokens == 0 for i in range(streams)):
        engine.step()
    engine.add(EngineRequest("long", tuple(rng.randrange(1000, vocab) for _ in range(long_len)),
                             SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True)))
    t0 = time.perf_counter()
    steps: list[float] = []
    late_t0 = late_ttft = None
    long_done = None
    while long_done is None or late_ttft is None:
        if late_t0 is None and engine.seqs["long"].num_computed_tokens >= long_len // 2:
            engine.add(EngineRequest("late", tuple(rng.randrange(1000, vocab) for _ in range(48)),
                                     SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True)))
            late_t0 = time.perf_counter()
        s0 = time.perf_counter()
        outs = engine.step()
        steps.append(time.perf_counter() - s0)
        for o in outs:
            if o.request_id == "long" and o.finished:
                long_done = time.perf_counter() - t0
            if o.request_id == "late" and o.finished:
                assert late_t0 is not None
                late_ttft = time.perf_counter() - late_t0
    for i in range(streams):
        engine.abort(f"s{i}")
    return {"prefill_s": long_done, "itl_p50": statistics.median(steps), "itl_max": max(steps),
            "late_ttft_s": late_ttft}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--long", type=int, default=7000, help="the long prompt's tokens")
    ap.add_argument("--streams", type=int, default=8, help="short requests decoding beside it")
    ap.add_argument("--caps", type=int, nargs="+", default=[64, 128, 256, 512])
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    lm = load_model(ModelConfig())  # the default model as `ember serve` runs it
    rng = random.Random(0)
    print(f"{a.long}-token prompt beside {a.streams} decoding streams, {a.threads} threads, budget 512")
    print("| cap | long prefill | decode ITL p50 / max | short prompt arriving mid-prefill: TTFT |")
    print("| --- | --- | --- | --- |")
    for cap in a.caps:
        r = one_cap(lm, cap, a.long, a.streams, rng)
        print(f"| {cap} | {r['prefill_s']:.1f} s | {r['itl_p50']:.2f} / {r['itl_max']:.2f} s "
              f"| {r['late_ttft_s']:.2f} s |", flush=True)


if __name__ == "__main__":
    main()
