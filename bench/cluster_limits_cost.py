"""What counting rate limits cluster-wide costs a request: Buckets.take in the process (one replica, or
the plain server) vs through the Ray actor every replica shares (ember.cluster.limits).

    .venv/bin/python bench/cluster_limits_cost.py [--calls 2000]

Starts a local one-CPU Ray of its own and stops it; prints per-call microseconds, p50 and p99.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from ember.platform.limits import Buckets

LIMITS = {"requests-per-minute": 10**9, "generated-tokens-per-minute": 10**12}
AMOUNTS = {"requests-per-minute": 1, "generated-tokens-per-minute": 64}


def timed(buckets: Buckets, calls: int) -> list[float]:
    out = []
    for _ in range(calls):
        t0 = time.perf_counter()
        assert buckets.take("acme", "m", LIMITS, AMOUNTS) == 0.0
        buckets.refund("acme", "m", {"generated-tokens-per-minute": 10})
        out.append((time.perf_counter() - t0) * 1e6)
    return out


def report(name: str, us: list[float]) -> None:
    us = sorted(us)
    print(f"{name:>22}: p50 {statistics.median(us):8.1f} us   p99 {us[int(len(us) * 0.99)]:8.1f} us   "
          f"mean {statistics.fmean(us):8.1f} us")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--calls", type=int, default=2000)
    a = p.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    from ember.cluster.limits import kill_shared_buckets, shared_buckets

    report("in-process Buckets", timed(Buckets(), a.calls))
    ray.init(num_cpus=1, include_dashboard=False, namespace="bench")
    try:
        shared = shared_buckets("bench")
        timed(shared, 50)  # warm: the actor's process starts on the first call
        report("Ray actor (take+refund)", timed(shared, a.calls))
        kill_shared_buckets("bench")
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
