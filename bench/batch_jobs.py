"""Batch jobs against interactive traffic, on one `ember serve` started here: throughput and interference.

1. Throughput: the generated tok/s of a batch job on an idle server against the 32-stream interactive
   bench (`ember bench`, same prompts and lengths) in the same run. Target: batch >= 90% of interactive.
2. Interference: 4 interactive streams on the idle server, then the same 4 streams while a batch job
   runs. Targets: TTFT p50 within 1.5x and per-stream decode tok/s within 0.8x of idle.

    .venv/bin/python bench/batch_jobs.py [--rows 2000] [--prompt-tokens 130] [--max-tokens 128]
                                         [--serve-args "--max-num-seqs 64"] [--json out.json] [--quick]

--quick (a few minutes instead of ~16): 300 rows of 64 new tokens, 32 requests in the 32-stream run; the
same two figures, noisier. Flags given explicitly still win.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shlex
import socket
import subprocess
import sys
import tempfile
import time

import httpx

from ember.config import StoreConfig
from ember.loadgen.bench import BenchConfig, make_words, run_bench
from ember.store.accounts import Accounts
from ember.store.db import open_store

MODEL = "accounts/fireworks/models/smollm2-135m-instruct"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(data_dir: str, serve_args: list[str]) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "ember", "serve", "--port", str(port), "--data-dir", data_dir,
                             "--log-level", "warning", *serve_args])
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit("ember serve exited")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise SystemExit("ember serve did not start")


def batch_rows(n: int, prompt_tokens: int, max_tokens: int, seed: int) -> bytes:
    rng = random.Random(seed)
    return "".join(json.dumps({"custom_id": f"r{i}", "body": {
        "prompt": make_words(rng, prompt_tokens), "max_tokens": max_tokens, "temperature": 0.0,
        "ignore_eos": True}}) + "\n" for i in range(n)).encode()


class Jobs:
    def __init__(self, url: str, key: str) -> None:
        self.h = httpx.Client(base_url=url + "/v1/accounts/bench", timeout=600,
                              headers={"authorization": f"Bearer {key}"})

    def start(self, name: str, data: bytes) -> None:
        self.h.post("/datasets", json={"datasetId": f"{name}-in", "dataset": {"exampleCount": "0"}}
                    ).raise_for_status()
        self.h.post(f"/datasets/{name}-in:upload", files={"file": ("in.jsonl", data)}).raise_for_status()
        self.h.post("/batchInferenceJobs", params={"batchInferenceJobId": name},
                    json={"model": MODEL, "inputDatasetId": f"{name}-in"}).raise_for_status()

    def get(self, name: str) -> dict:
        r = self.h.get(f"/batchInferenceJobs/{name}")
        r.raise_for_status()
        return r.json()

    def wait(self, name: str, states: set[str], poll: float = 0.2) -> dict:
        while (j := self.get(name))["state"] not in states:
            time.sleep(poll)
        return j


FINAL = {"JOB_STATE_COMPLETED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED", "JOB_STATE_EXPIRED"}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=None, help="rows of each batch job (default 2000)")
    p.add_argument("--prompt-tokens", type=int, default=130)
    p.add_argument("--max-tokens", type=int, default=None, help="new tokens per request (default 128)")
    p.add_argument("--interactive-requests", type=int, default=None,
                   help="requests of the 32-stream run (default 64)")
    p.add_argument("--small-requests", type=int, default=8, help="requests of each 4-stream run")
    p.add_argument("--serve-args", default="", help="extra `ember serve` flags")
    p.add_argument("--json", default=None)
    p.add_argument("--quick", action="store_true", help="smaller defaults: a few minutes")
    a = p.parse_args()
    for name, full, quick in (("rows", 2000, 300), ("max_tokens", 128, 64), ("interactive_requests", 64, 32)):
        if getattr(a, name) is None:
            setattr(a, name, quick if a.quick else full)

    data_dir = tempfile.mkdtemp(prefix="ember-bench-batch-")
    store = open_store(StoreConfig(data_dir=data_dir))
    key = Accounts(store).create("bench", "bench@example.com").key.key
    store.close()
    proc, url = start_server(data_dir, shlex.split(a.serve_args))
    try:
        def bench(streams: int, requests: int, seed: int) -> dict:
            cfg = BenchConfig(base_url=url, model=MODEL, concurrency=streams, num_requests=requests,
                              prompt_tokens=a.prompt_tokens, max_tokens=a.max_tokens, api_key=key, seed=seed,
                              progress=False)
            return asyncio.run(run_bench(cfg))

        jobs = Jobs(url, key)
        bench(4, 4, 99)  # warm-up
        inter32 = bench(32, a.interactive_requests, 1)
        idle4 = bench(4, a.small_requests, 2)

        jobs.start("throughput", batch_rows(a.rows, a.prompt_tokens, a.max_tokens, 3))
        jobs.wait("throughput", {"JOB_STATE_RUNNING"} | FINAL, poll=0.05)
        t0 = time.monotonic()
        done = jobs.wait("throughput", FINAL)
        wall = time.monotonic() - t0
        batch_tok_s = done["jobProgress"]["outputTokens"] / wall

        jobs.start("interference", batch_rows(a.rows, a.prompt_tokens, a.max_tokens, 4))
        jobs.wait("interference", {"JOB_STATE_RUNNING"} | FINAL, poll=0.05)
        time.sleep(2.0)  # let the job fill the engine
        busy4 = bench(4, a.small_requests, 2)
        during = jobs.get("interference")["state"]
        jobs.h.delete("/batchInferenceJobs/interference")
    finally:
        proc.terminate()
        proc.wait(timeout=60)

    def p50(r: dict, k: str) -> float:
        return r[k]["p50"]

    result = {
        "quick": a.quick, "rows": a.rows, "prompt_tokens": a.prompt_tokens, "max_tokens": a.max_tokens,
        "interactive_32_gen_tok_s": inter32["gen_tok_s"], "batch_gen_tok_s": batch_tok_s,
        "batch_over_interactive": batch_tok_s / inter32["gen_tok_s"],
        "idle_4_ttft_p50_s": p50(idle4, "ttft_s"), "busy_4_ttft_p50_s": p50(busy4, "ttft_s"),
        "ttft_ratio": p50(busy4, "ttft_s") / p50(idle4, "ttft_s"),
        "idle_4_decode_tok_s_p50": p50(idle4, "decode_tok_s_per_request"),
        "busy_4_decode_tok_s_p50": p50(busy4, "decode_tok_s_per_request"),
        "decode_ratio": p50(busy4, "decode_tok_s_per_request") / p50(idle4, "decode_tok_s_per_request"),
        "job_state_while_measured": during,
    }
    print(json.dumps(result, indent=2))
    print(f"batch / 32-stream tok/s: {result['batch_over_interactive']:.2f} (target >= 0.90); "
          f"TTFT p50 busy/idle: {result['ttft_ratio']:.2f} (<= 1.5); "
          f"decode tok/s busy/idle: {result['decode_ratio']:.2f} (>= 0.8)")
    if during != "JOB_STATE_RUNNING":
        print("warning: the batch job was not running throughout the interference run; use more --rows")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
