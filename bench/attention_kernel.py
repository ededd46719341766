"""The paged attention kernel alone: one layer of SmolLM2's shape (9 heads, 3 KV heads, 64 dims), a
512-row prefill chunk and one decode row at the end of a 4,096-token context, float32 and float16 caches.

    .venv/bin/python bench/attention_kernel.py [--context 4096] [--threads 2]

Prints the mean milliseconds per call. Not a test: figures depend on the CPU (RESULTS.md names it).
"""

from __future__ import annotations

import argparse
import time

import torch

from ember import kernels

HEADS, KV_HEADS, HEAD_DIM, BLOCK = 9, 3, 64, 16


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--context", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    native = kernels.load()
    if native is None:
        raise SystemExit("the native kernels did not build: nothing to measure")
    torch.set_num_threads(a.threads)
    nb = a.context // BLOCK
    table = torch.arange(nb).view(1, nb)
    for dtype in (torch.float32, torch.float16):
        kc = torch.randn(nb * BLOCK, KV_HEADS * HEAD_DIM).to(dtype)
        vc = torch.randn(nb * BLOCK, KV_HEADS * HEAD_DIM).to(dtype)
        for rows, calls in ((512, 3), (1, 50)):
            q = torch.randn(rows, HEADS, HEAD_DIM) / HEAD_DIM**0.5
            tables = table.expand(rows, nb).contiguous()
            lens = torch.arange(a.context - rows + 1, a.context + 1)
            native.paged_decode_attention(q, kc, vc, tables, lens, BLOCK, KV_HEADS)  # warm-up
            t0 = time.perf_counter()
            for _ in range(calls):
                native.paged_decode_attention(q, kc, vc, tables, lens, BLOCK, KV_HEADS)
            ms = (time.perf_counter() - t0) / calls * 1000
            print(f"{str(dtype).removeprefix('torch.'):8s} cache, {rows:3d} rows at context {a.context}: {ms:8.2f} ms")


if __name__ == "__main__":
    main()
