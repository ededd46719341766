"""Prefill time of long prompts through the engine (no HTTP), this tree's native kernels vs a baseline
revision's, in one process: the same model, prompts and engine settings, the two kernel builds alternated.

    .venv/bin/python bench/long_prefill.py [--baseline d9ea934] [--lengths 2000 4000 7000] [--rounds 2]

The baseline's ember/kernels/*.cpp are read from git and built like `ember.kernels.load` builds (same
flags, its own directory keyed by the sources' hash). Each measurement is a cold prompt (prefix caching
off), prefilled in chunks of --chunk tokens, one token generated; the best of --rounds is reported.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a plain script from a checkout

from ember import kernels  # noqa: E402
from ember.config import CacheConfig, Config, ModelConfig, SchedulerConfig  # noqa: E402
from ember.engine.engine import Engine  # noqa: E402
from ember.engine.request import EngineRequest, SamplingParams  # noqa: E402
from ember.model.loader import LoadedModel, load_model  # noqa: E402


def build_revision(rev: str) -> ModuleType:
    """The native kernels as they were at git revision `rev`."""
    from torch.utils.cpp_extension import load as build

    names = subprocess.check_output(["git", "-C", str(ROOT), "ls-tree", "--name-only", rev, "ember/kernels/"],
                                    text=True).split()
    cpp = sorted(n for n in names if n.endswith(".cpp"))
    texts = [subprocess.check_output(["git", "-C", str(ROOT), "show", f"{rev}:{n}"], text=True) for n in cpp]
    digest = hashlib.sha256(("".join(texts) + " ".join(kernels.CFLAGS)).encode()).hexdigest()[:12]
    where = Path(sys.prefix, "ember-kernels", digest)
    where.mkdir(parents=True, exist_ok=True)
    src = Path(tempfile.mkdtemp(prefix="ember-kernels-"))
    paths = []
    for n, t in zip(cpp, texts, strict=True):
        p = src / Path(n).name
        p.write_text(t)
        paths.append(str(p))
    return build(name=f"ember_kernels_{digest}", sources=paths, extra_cflags=kernels.CFLAGS,
                 build_directory=str(where), verbose=False)


def prefill_seconds(lm: LoadedModel, prompt: list[int], chunk: int) -> float:
    engine = Engine(lm, Config(model=ModelConfig(max_model_len=len(prompt) + 16),
                               cache=CacheConfig(kv_cache_mb=1024, enable_prefix_caching=False),
                               scheduler=SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=chunk)))
    assert engine.runner.native, "the native kernels must load for this comparison"
    engine.add(EngineRequest(f"long-{time.monotonic_ns()}", tuple(prompt),
                             SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True)))
    t0 = time.perf_counter()
    while engine.has_work:
        engine.step()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", default="d9ea934", help="git revision whose kernels are the 'before'")
    ap.add_argument("--lengths", type=int, nargs="+", default=[2000, 4000, 7000])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--chunk", type=int, default=512, help="max_num_batched_tokens (ember serve's default)")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    builds = {"before": build_revision(a.baseline), "after": kernels.load()}
    assert builds["after"] is not None, "this tree's kernels did not build"
    lm = load_model(ModelConfig())  # the default model as `ember serve` runs it
    rng = random.Random(0)
    vocab = lm.args.vocab_size
    original = kernels.load
    best: dict[tuple[str, int], float] = {}
    try:
        for _ in range(a.rounds):
            for n in a.lengths:
                prompt = [rng.randrange(1000, vocab) for _ in range(n)]
                for name, module in builds.items():
                    kernels.load = lambda m=module: m  # every native call site asks kernels.load()
                    dt = prefill_seconds(lm, prompt, a.chunk)
                    best[name, n] = min(best.get((name, n), float("inf")), dt)
                    print(f"  {name:6s} {n:5d} tokens: {dt:7.2f} s", flush=True)
    finally:
        kernels.load = original
    print(f"\nbaseline {a.baseline} vs this tree, best of {a.rounds}, {a.threads} threads, chunks of {a.chunk}")
    print("| prompt tokens | before | after | speed-up |\n| --- | --- | --- | --- |")
    for n in a.lengths:
        b, f = best["before", n], best["after", n]
        print(f"| {n:,} | {b:.2f} s ({n / b:.0f} tok/s) | {f:.2f} s ({n / f:.0f} tok/s) | {b / f:.2f}x |")


if __name__ == "__main__":
    main()
