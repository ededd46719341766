"""Soak ember in-process on the tiny random-weight model with a KV pool small enough to preempt all the time.

The model is the test suite's 2-layer Llama with SmolLM2's tokenizer: each step is cheap, so a minute
sends over a thousand mixed requests through the scheduler, prefix cache, preemption and abort paths;
what it says is gibberish, which the soak's checks do not mind (grammars still bind it).

    .venv/bin/python bench/soak_tiny.py --kv-cache-mb 1 --clients 48 --duration 60 --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ember.config import CacheConfig, Config, SchedulerConfig, SpeculativeConfig  # noqa: E402
from ember.loadgen.soak import Soak, SoakConfig, format_report  # noqa: E402
from ember.model.catalog import resolve_model  # noqa: E402
from ember.model.checkpoint import Checkpoint  # noqa: E402
from ember.model.formats import read_checkpoint  # noqa: E402
from ember.model.loader import LoadedModel, build_model  # noqa: E402
from tests.conftest import MODEL_ID, LiveServer, tiny_args, tiny_tensors  # noqa: E402


def tiny_model() -> LoadedModel:
    ref = resolve_model(None)
    tok = read_checkpoint(ref.path).tokenizer
    args = tiny_args(tok.vocab_size)
    model = build_model(Checkpoint(args=args, tensors=tiny_tensors(args), tokenizer=tok, source="tiny"),
                        torch.device("cpu"))
    return LoadedModel(model=model, tokenizer=tok, args=args, ref=ref, device=torch.device("cpu"))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kv-cache-mb", type=int, default=1, help="1 MiB = 128 blocks of 16 tokens on this model")
    p.add_argument("--clients", type=int, default=48)
    p.add_argument("--duration", type=float, default=60)
    p.add_argument("--max-num-seqs", type=int, default=32)
    p.add_argument("--speculative-ngram", action="store_true", help="prompt-lookup drafts for every request")
    p.add_argument("--no-prefix-caching", action="store_true")
    p.add_argument("--json", default=None)
    a = p.parse_args()
    torch.set_num_threads(2)
    cfg = Config(cache=CacheConfig(kv_cache_mb=a.kv_cache_mb, enable_prefix_caching=not a.no_prefix_caching),
                 scheduler=SchedulerConfig(max_num_seqs=a.max_num_seqs, max_num_batched_tokens=256),
                 speculative=SpeculativeConfig(ngram_lookup=a.speculative_ngram))
    with LiveServer(cfg, tiny_model()) as server:
        report = asyncio.run(Soak(SoakConfig(base_url=server.url, model=MODEL_ID, clients=a.clients,
                                             duration_s=a.duration, max_tokens=48, request_deadline_s=120,
                                             idle_timeout_s=30)).run())
        report["kv_blocks"] = server.engine.pool.num_blocks
        report["preemptions"] = server.engine.scheduler.num_preemptions
    print(format_report(report))
    print(f"KV pool {report['kv_blocks']} blocks; {report['preemptions']} preemptions")
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
