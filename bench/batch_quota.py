"""Does an operator's per-minute cap hold for batch work? One `ember serve` started here,
an account capped with `ember accounts set-quota ACCOUNT generated-tokens-per-minute --max-value CAP`, and
an OpenAI batch of rows that each generate exactly --row-tokens tokens (ignore_eos).

Prints the job's generated tokens every few seconds for --seconds, then the total in the first minute.
A bucket holds one minute's quota and refills continuously, so in any first minute at most 2 x CAP may be
generated (the full bucket, then its refill) and CAP per minute after; a batch that ignored the cap
would show it at once (320 tokens in 9 s under a 100 cap, measured on a build without the bound).

    .venv/bin/python bench/batch_quota.py [--cap 100] [--rows 40] [--row-tokens 20] [--seconds 60]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time

import httpx
from batch_jobs import MODEL, start_server  # bench/ is on the path when this runs as a script

from ember.config import StoreConfig
from ember.store.accounts import Accounts
from ember.store.db import open_store


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cap", type=int, default=100)
    ap.add_argument("--rows", type=int, default=40)
    ap.add_argument("--row-tokens", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=60.0)
    a = ap.parse_args()
    data_dir = tempfile.mkdtemp(prefix="ember-bench-quota-")
    store = open_store(StoreConfig(data_dir=data_dir))
    key = Accounts(store).create("capped", "ops@capped.test").key.key
    store.close()
    subprocess.run([sys.executable, "-m", "ember", "accounts", "set-quota", "capped", "generated-tokens-per-minute",
                    "--max-value", str(a.cap), "--data-dir", data_dir], check=True)
    proc, url = start_server(data_dir, [])
    try:
        h = httpx.Client(base_url=url, headers={"authorization": f"Bearer {key}"}, timeout=60)
        lines = "".join(json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/completions",
                                    "body": {"model": MODEL, "prompt": f"Count to {i}:", "max_tokens": a.row_tokens,
                                             "temperature": 0, "ignore_eos": True}}) + "\n" for i in range(a.rows))
        f = h.post("/v1/files", files={"file": ("in.jsonl", lines.encode())}, data={"purpose": "batch"}).json()
        t0 = time.monotonic()
        b = h.post("/v1/batches", json={"input_file_id": f["id"], "endpoint": "/v1/completions",
                                        "completion_window": "24h"}).json()
        print(f"cap {a.cap} generated tokens/minute; {a.rows} rows x {a.row_tokens} tokens")
        print("seconds  generated  status       failed rows")
        while (t := time.monotonic() - t0) < a.seconds:
            cur = h.get(f"/v1/batches/{b['id']}").json()
            print(f"{t:7.1f}  {cur['usage']['output_tokens']:9d}  {cur['status']:<11}  "
                  f"{cur['request_counts']['failed']}")
            time.sleep(min(5.0, max(0.0, a.seconds - t)))
        cur = h.get(f"/v1/batches/{b['id']}").json()
        print(f"first {a.seconds:.0f} s: {cur['usage']['output_tokens']} tokens generated "
              f"(bound {a.cap} + {a.cap} x {a.seconds:.0f}/60 = {a.cap + a.cap * a.seconds / 60:.0f}); "
              f"status {cur['status']}, {cur['request_counts']['failed']} rows failed")
        h.post(f"/v1/batches/{b['id']}/cancel")
    finally:
        proc.terminate()
        proc.wait(30)


if __name__ == "__main__":
    main()
