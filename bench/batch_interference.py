"""Batch-vs-interactive interference figures at the engine, in one process: minutes where bench/batch_jobs.py (a real
server and job) takes a quarter of an hour, and A-vs-B in the same process on a noisy host.

Rounds of 4 interactive requests (like the bench's 4 streams: the next 4 start when the last ended) on
  idle     no batch rows;
  uncapped batch rows take whatever interactive work leaves in a step (the scheduler before the caps);
  capped   the SchedulerConfig defaults (background_tokens_when_busy, background_seqs_when_busy).
Batch rows keep arriving, so the engine always holds some mid-prompt and some decoding. Reported: TTFT p50
and per-request decode tok/s p50 of each, and their ratios to idle (targets: TTFT <= 1.5x, decode >= 0.8x).

    .venv/bin/python bench/batch_interference.py [--rows 48] [--rounds 2] [--max-tokens 16]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from dataclasses import replace

import torch

from ember.config import Config, ModelConfig, SchedulerConfig
from ember.engine.engine import Engine
from ember.engine.request import EngineRequest, SamplingParams
from ember.model.loader import LoadedModel, load_model


def measure(lm: LoadedModel, sched: SchedulerConfig, rows: int, rounds: int, max_tokens: int,
            prompt_tokens: int, seed: int) -> dict[str, float]:
    rng = random.Random(seed)
    vocab = lm.args.vocab_size

    def prompt() -> tuple[int, ...]:
        return tuple(rng.randrange(1000, vocab) for _ in range(prompt_tokens))

    engine = Engine(lm, Config(scheduler=sched))
    row_params = SamplingParams(max_tokens=2 * max_tokens, temperature=0.0, ignore_eos=True)
    for i in range(rows):
        engine.add(EngineRequest(f"row{i}", prompt(), row_params, background=True))
    next_row = rows
    if rows:
        for _ in range(3):  # the rows fill the engine first, as a running job has
            engine.step()
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    ttft: list[float] = []
    decode: list[float] = []
    for r in range(rounds):
        t0 = time.perf_counter()
        first: dict[str, float] = {}
        live = {f"i{r}.{k}" for k in range(4)}
        for rid in sorted(live):
            engine.add(EngineRequest(rid, prompt(), params))
        while live:
            outs = engine.step()
            now = time.perf_counter()
            for o in outs:
                if o.request_id not in live:
                    if o.finished and rows:  # a finished row is replaced: the job goes on
                        engine.add(EngineRequest(f"row{next_row}", prompt(), row_params, background=True))
                        next_row += 1
                    continue
                if o.new_token_ids and o.request_id not in first:
                    first[o.request_id] = now
                    ttft.append(now - t0)
                if o.finished:
                    live.discard(o.request_id)
                    decode.append((max_tokens - 1) / max(now - first[o.request_id], 1e-9))
    return {"ttft_p50_s": statistics.median(ttft), "decode_tok_s_p50": statistics.median(decode)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=48, help="batch rows in the engine at once")
    p.add_argument("--rounds", type=int, default=2, help="rounds of 4 interactive requests per scenario")
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    lm = load_model(ModelConfig())
    capped = SchedulerConfig()
    uncapped = replace(capped, background_tokens_when_busy=capped.max_num_batched_tokens,
                       background_seqs_when_busy=capped.max_num_seqs, busy_linger_steps=0)
    measure(lm, capped, 0, 1, 4, a.prompt_tokens, 0)  # warm-up
    res = {}
    for name, sched, rows in (("idle", capped, 0), ("uncapped", uncapped, a.rows), ("capped", capped, a.rows)):
        res[name] = measure(lm, sched, rows, a.rounds, a.max_tokens, a.prompt_tokens, seed=1)
        print(name, json.dumps(res[name]), flush=True)
    idle = res["idle"]
    for name in ("uncapped", "capped"):
        r = res[name]
        r["ttft_ratio"] = r["ttft_p50_s"] / idle["ttft_p50_s"]
        r["decode_ratio"] = r["decode_tok_s_p50"] / idle["decode_tok_s_p50"]
        print(f"{name}: TTFT p50 {r['ttft_ratio']:.2f}x idle (<= 1.5), decode tok/s {r['decode_ratio']:.2f}x "
              f"idle (>= 0.8)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
