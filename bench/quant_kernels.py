"""ember's GGUF block kernels vs torch's int4 path and fp32 matmul, on SmolLM2-135M's projection shapes.

    .venv/bin/python bench/quant_kernels.py [--threads 2] [--ms 1,4,32,512] [--isa auto]

Weights are layer 0's real tensors (Q4_1; the tied head is Q8_0). "ember" is GGUFLinear on the mapped file,
"int4" is the module `--quantization int4/int8` builds (Int4Linear; Int8Linear, two int4 calls, for the Q8_0
head), "fp32" is x @ W^T on the dequantized weights. Prints the fastest of repeated calls in milliseconds (on a shared host the minimum is the figure noise disturbs least), the three
kinds interleaved in the same process so a shared host's noise hits them alike.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import torch

from ember.model.architectures import EMBED, architecture
from ember.model.catalog import resolve_model
from ember.model.gguf import read_gguf
from ember.model.gguf_linear import block_modules
from ember.model.quant import Int4Linear, Int8Linear


def best_ms(fn: Callable[[], object], budget_s: float) -> float:
    fn()
    times = []
    end = time.perf_counter() + budget_s
    while len(times) < 3 or (time.perf_counter() < end and len(times) < 200):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ms", default="1,4,32,512")
    ap.add_argument("--isa", default="auto", help="portable | avx2 | avx512vnni | auto")
    ap.add_argument("--budget", type=float, default=1.0, help="seconds per measurement")
    a = ap.parse_args()
    os.environ["EMBER_QUANT_ISA"] = a.isa
    torch.set_num_threads(a.threads)
    ckpt = read_gguf(resolve_model(None).path)
    arch = architecture(ckpt.args.arch)
    names = {p: n for p, n in arch.linear_sources(ckpt.args).items() if p in (
        "layers.0.self_attn.qkv_proj", "layers.0.mlp.gate_up_proj", "layers.0.mlp.down_proj", "lm_head")}
    ours = block_modules(ckpt.tensors, names, EMBED, arch.q_scale(ckpt.args))
    print(f"threads={a.threads} isa={a.isa}; best ms per call (ember / int4 / fp32), speedup vs int4")
    print(f"{'shape':>22} {'M':>4} {'ember':>9} {'int4':>9} {'fp32':>9} {'vs int4':>8}")
    for path, parts in names.items():
        w = torch.cat([ckpt.tensors[n] for n in parts])
        torch_q = Int8Linear(w) if path == "lm_head" else Int4Linear(w)
        mine = ours[path]
        for M in (int(m) for m in a.ms.split(",")):
            x = torch.randn(M, w.shape[1])
            with torch.inference_mode():
                t_ours = best_ms(lambda: mine(x), a.budget)  # noqa: B023 - called at once
                t_int4 = best_ms(lambda: torch_q(x), a.budget)  # noqa: B023
                t_fp32 = best_ms(lambda: x @ w.t(), a.budget)  # noqa: B023
            shape = f"{path.split('.')[-1]} {w.shape[1]}->{w.shape[0]}"
            print(f"{shape:>22} {M:>4} {t_ours:>9.3f} {t_int4:>9.3f} {t_fp32:>9.3f} {t_int4 / t_ours:>7.2f}x")


if __name__ == "__main__":
    main()
