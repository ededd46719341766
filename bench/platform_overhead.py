"""What the platform costs a request.

1. The auth + rate-limit check alone (`Authenticator.authenticate` + `RateLimiter.reserve` + settle) with
   10,000 keys in a SQLite store: p50/p99 per request, cold (first use of a key: one indexed lookup) and
   warm (cached).
2. The same server twice, side by side in one run: `--auth none` against keys + quotas + metering on,
   32 streams of generated tok/s and cached-prefix TTFT p50 (interleaved rounds, so drift on a shared host
   hits both alike).

    .venv/bin/python bench/platform_overhead.py [--rounds 3] [--skip-serve]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time

from ember.config import PlatformConfig, StoreConfig
from ember.platform.auth import Authenticator
from ember.platform.limits import RateLimiter
from ember.store.accounts import Accounts
from ember.store.api_keys import ApiKeys
from ember.store.db import open_store
from ember.store.quotas import Quotas

MODEL = "accounts/fireworks/models/smollm2-135m-instruct"


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def auth_check(n_keys: int, n_requests: int) -> dict:
    store = open_store(StoreConfig(data_dir=tempfile.mkdtemp(prefix="ember-bench-")))
    Accounts(store).create("acme", "ops@acme.test")
    keys = ApiKeys(store)
    plain: list[str] = []
    with store.session() as s:
        for _ in range(n_keys):
            plain.append(keys.create_in(s, "acme", "admin", "bench", None, {}).key)
    quotas = Quotas(store)
    for q, v in (("requests-per-minute", 10**9), ("prompt-tokens-per-minute", 10**12),
                 ("generated-tokens-per-minute", 10**12)):
        quotas.set_cap("acme", q, v)
    auth = Authenticator(keys, Accounts(store), PlatformConfig(auth="keys"))
    limiter = RateLimiter(quotas)
    limiter.limits("acme")
    rng = random.Random(0)

    def one(key: str) -> float:
        t = time.perf_counter()
        p = auth.authenticate("Bearer " + key, inference=True)
        r = limiter.reserve(p.account_id, MODEL, 100, 64)
        r.settle(100, 0, 30)
        return (time.perf_counter() - t) * 1e6

    cold = [one(k) for k in rng.sample(plain, min(2000, n_keys))]
    hot = rng.sample(plain, 500)
    for k in hot:  # first use of each: the cold path, measured above
        one(k)
    warm = [one(rng.choice(hot)) for _ in range(n_requests)]
    store.close()
    return {"keys": n_keys, "cold_p50_us": statistics.median(cold), "cold_p99_us": percentile(cold, 0.99),
            "warm_p50_us": statistics.median(warm), "warm_p99_us": percentile(warm, 0.99)}


def serve(port: int, data_dir: str, *args: str) -> subprocess.Popen:
    import httpx

    p = subprocess.Popen([sys.executable, "-m", "ember", "serve", "--port", str(port), "--data-dir", data_dir,
                          "--log-level", "warning", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(900):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return p
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError("server did not start")


def bench(port: int, key: str | None, *args: str) -> dict:
    out = tempfile.mktemp(suffix=".json")
    cmd = [sys.executable, "-m", "ember", "bench", "--url", f"http://127.0.0.1:{port}", "--model", MODEL,
           "--no-progress", "--json", out, *args]
    if key:
        cmd += ["--api-key", key]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    with open(out) as f:
        return json.load(f)


def side_by_side(rounds: int) -> dict:
    keyed_dir, open_dir = tempfile.mkdtemp(), tempfile.mkdtemp()
    store = open_store(StoreConfig(data_dir=keyed_dir))
    key = Accounts(store).create("acme", "ops@acme.test").key.key
    for q in ("requests-per-minute", "prompt-tokens-per-minute", "generated-tokens-per-minute",
              "cache-adjusted-prompt-tokens-per-minute"):
        Quotas(store).set_cap("acme", q, 10**9)
    store.close()
    results: dict[str, dict[str, list[float]]] = {"none": {"tps": [], "ttft": []}, "keys": {"tps": [], "ttft": []}}
    for _ in range(rounds):
        for mode in ("none", "keys"):
            port = 18000 + random.randrange(1000)
            proc = serve(port, open_dir if mode == "none" else keyed_dir, "--auth", mode)
            k = key if mode == "keys" else None
            try:
                streams = bench(port, k, "-c", "32", "-n", "64", "--prompt-tokens", "100", "--max-tokens", "128")
                cached = bench(port, k, "-c", "1", "-n", "20", "--prompt-tokens", "912", "--max-tokens", "1",
                               "--shared-prefix-tokens", "900")
            finally:
                proc.terminate()
                proc.wait(60)
            results[mode]["tps"].append(streams["gen_tok_s"])
            results[mode]["ttft"].append(cached["ttft_s"]["p50"] * 1000)
            print(f"# {mode}: {streams['gen_tok_s']:.1f} tok/s at 32 streams, cached-prefix TTFT p50 "
                  f"{cached['ttft_s']['p50'] * 1000:.1f} ms", file=sys.stderr, flush=True)
    med = {m: {k: statistics.median(v) for k, v in r.items()} for m, r in results.items()}
    return {"rounds": results, "median": med,
            "tps_ratio_keys_over_none": med["keys"]["tps"] / med["none"]["tps"],
            "ttft_p50_delta_ms": med["keys"]["ttft"] - med["none"]["ttft"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--skip-serve", action="store_true", help="only the auth + limit check")
    a = ap.parse_args()
    print(json.dumps({"auth_check": auth_check(10_000, 20_000)}, indent=2))
    if not a.skip_serve:
        print(json.dumps({"side_by_side": side_by_side(a.rounds)}, indent=2))


if __name__ == "__main__":
    main()
